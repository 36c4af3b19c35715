"""CIFAR-style ResNet-18.

A 3x3 stride-1 stem (no max-pool), four stages of two BasicBlocks with widths
``(w, 2w, 4w, 8w)`` and strides ``(1, 2, 2, 2)``, global average pooling and a ``Dense`` head.
Convolutions have no bias (each is followed by BatchNorm).

Parameter paths:

* stem: ``params/Conv_0/kernel``, ``params/BatchNorm_0/{scale,bias}``;
* blocks ``layer{s}_{b}`` for stage ``s = 1..4`` and block ``b = 0, 1``, each with
  ``Conv_0``, ``BatchNorm_0``, ``Conv_1``, ``BatchNorm_1`` and, where the shape changes, the
  projection shortcut ``Conv_proj`` (1x1) and ``BatchNorm_proj``;
* head: ``params/Dense_0/{kernel,bias}``.

BatchNorm statistics live at the same paths under ``batch_stats`` with leaves ``mean``/``var``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unlearnx.models._bridge import Model, from_module

_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

STAGES = ((1, 1, 2), (2, 2, 2), (4, 2, 2), (8, 2, 2))
"""Per stage: (width multiplier, stride, number of BasicBlocks)."""


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding="SAME",
        use_bias=False,
        kernel_init=_conv_init,
        rngs=rngs,
    )


class ResidualBlock(nnx.Module):
    """The shortcut shared by residual blocks: identity, or a 1x1 conv/BN projection (``Conv_proj``,
    ``BatchNorm_proj``) when the stride or the channel count changes; the block outputs relu(shortcut + y)."""

    def _init_shortcut(
        self, in_ch: int, out_ch: int, stride: int, bn_momentum: float, rngs: nnx.Rngs
    ) -> None:
        self.project = stride != 1 or in_ch != out_ch
        if self.project:
            self.Conv_proj = _conv(in_ch, out_ch, 1, stride, rngs)
            self.BatchNorm_proj = nnx.BatchNorm(out_ch, momentum=bn_momentum, rngs=rngs)

    def _add_shortcut(self, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
        if self.project:
            x = self.BatchNorm_proj(self.Conv_proj(x), use_running_average=not train)
        return nnx.relu(x + y)


class BasicBlock(ResidualBlock):
    """Two 3x3 conv/BN layers with an identity or 1x1 conv/BN projection shortcut.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        stride: Stride of the first conv (and of the projection).
        bn_momentum: BatchNorm running-average momentum.
        rngs: Random streams for parameter initialisation.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, bn_momentum: float, rngs: nnx.Rngs) -> None:
        self.Conv_0 = _conv(in_ch, out_ch, 3, stride, rngs)
        self.BatchNorm_0 = nnx.BatchNorm(out_ch, momentum=bn_momentum, rngs=rngs)
        self.Conv_1 = _conv(out_ch, out_ch, 3, 1, rngs)
        self.BatchNorm_1 = nnx.BatchNorm(out_ch, momentum=bn_momentum, rngs=rngs)
        self._init_shortcut(in_ch, out_ch, stride, bn_momentum, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies the block to NHWC ``x``."""
        y = nnx.relu(self.BatchNorm_0(self.Conv_0(x), use_running_average=not train))
        y = self.BatchNorm_1(self.Conv_1(y), use_running_average=not train)
        return self._add_shortcut(x, y, train)


class ResNet(nnx.Module):
    """CIFAR-style ResNet: stem, residual stages, global average pool, ``Dense`` head.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        block: The residual block class, called as ``block(in_ch, width * mult, stride, ...)``; its output
            has ``expansion * width * mult`` channels.
        stages: Per stage ``(width multiplier, stride, number of blocks)``.
        expansion: Output channels of a block over its ``width * mult``.
        width: Width of the first stage.
        bn_momentum: BatchNorm running-average momentum.
        rngs: Random streams for parameter initialisation.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        block: type[nnx.Module],
        stages: tuple[tuple[int, int, int], ...],
        expansion: int,
        width: int,
        bn_momentum: float,
        rngs: nnx.Rngs,
    ) -> None:
        self.Conv_0 = _conv(in_channels, width, 3, 1, rngs)
        self.BatchNorm_0 = nnx.BatchNorm(width, momentum=bn_momentum, rngs=rngs)
        names = []
        in_ch = width
        for s, (mult, stride, num_blocks) in enumerate(stages, start=1):
            for b in range(num_blocks):
                unit = block(in_ch, width * mult, stride if b == 0 else 1, bn_momentum=bn_momentum, rngs=rngs)
                setattr(self, f"layer{s}_{b}", unit)
                names.append(f"layer{s}_{b}")
                in_ch = expansion * width * mult
        self.block_names = tuple(names)
        self.Dense_0 = nnx.Linear(in_ch, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns logits of shape ``(batch, num_classes)`` for NHWC input ``x``."""
        del rngs  # deterministic model
        x = nnx.relu(self.BatchNorm_0(self.Conv_0(x), use_running_average=not train))
        for name in self.block_names:
            x = getattr(self, name)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return self.Dense_0(x)


def resnet18(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    bn_momentum: float = 0.99,
) -> Model:
    """Builds a CIFAR-style ResNet-18.

    Args:
        input_shape: Per-example ``(height, width, channels)``, e.g. ``(32, 32, 3)``.
        num_classes: Number of output logits.
        width: Channels of the first stage; stages use ``(w, 2w, 4w, 8w)``. With ``width=64`` and
            100 classes the model has 11,220,132 parameters.
        bn_momentum: BatchNorm running-average momentum (Flax convention: weight of the old value).

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Examples:
        >>> import jax
        >>> from unlearnx import models
        >>> shapes = jax.eval_shape(models.resnet18((32, 32, 3), 100).init, jax.random.key(0))
        >>> models.num_params(shapes)
        11220132

    References:
        He, Zhang, Ren and Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016.
    """
    return cifar_resnet(
        "resnet18",
        input_shape,
        num_classes,
        block=BasicBlock,
        stages=STAGES,
        expansion=1,
        width=width,
        bn_momentum=bn_momentum,
    )


def cifar_resnet(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    block: type[nnx.Module],
    stages: tuple[tuple[int, int, int], ...],
    expansion: int,
    width: int,
    bn_momentum: float,
) -> Model:
    """A :class:`ResNet` of the given blocks behind the pure bridge (shared by ResNet-18 and ResNet-50)."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} expects input_shape (height, width, channels), got {input_shape}")
    in_channels = int(input_shape[-1])
    return from_module(
        lambda rngs: ResNet(
            in_channels,
            num_classes,
            block=block,
            stages=stages,
            expansion=expansion,
            width=width,
            bn_momentum=bn_momentum,
            rngs=rngs,
        ),
        name=name,
    )

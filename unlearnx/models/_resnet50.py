"""CIFAR-style ResNet-50.

A 3x3 stride-1 stem (no max-pool), four stages of ``(3, 4, 6, 3)`` Bottleneck blocks with base
widths ``(w, 2w, 4w, 8w)`` and strides ``(1, 2, 2, 2)``, global average pooling and a ``Dense``
head. A Bottleneck is ``1x1 (base) -> 3x3 (base, strided) -> 1x1 (4 * base)``, each conv followed by
BatchNorm, ReLU after the first two and after the residual sum. Convolutions have no bias.

Parameter paths:

* stem: ``params/Conv_0/kernel``, ``params/BatchNorm_0/{scale,bias}``;
* blocks ``layer{s}_{b}`` for stage ``s = 1..4`` and block ``b = 0 .. n_s - 1``, each with
  ``Conv_0..2`` and ``BatchNorm_0..2`` and, where the shape changes (the first block of every
  stage), the projection shortcut ``Conv_proj`` (1x1) and ``BatchNorm_proj``;
* head: ``params/Dense_0/{kernel,bias}``.

BatchNorm statistics live at the same paths under ``batch_stats`` with leaves ``mean``/``var``.
"""

from __future__ import annotations

import jax
from flax import nnx

from unlearnx.models._bridge import Model
from unlearnx.models._resnet import ResidualBlock, _conv, cifar_resnet

STAGES = ((1, 1, 3), (2, 2, 4), (4, 2, 6), (8, 2, 3))
"""Per stage: (base width multiplier, stride, number of blocks)."""

EXPANSION = 4


class Bottleneck(ResidualBlock):
    """1x1 / 3x3 / 1x1 conv-BN layers with an identity or 1x1 conv/BN projection shortcut.

    Args:
        in_ch: Input channels.
        base_ch: Channels of the inner 1x1 and 3x3 convs; the block outputs ``4 * base_ch``.
        stride: Stride of the 3x3 conv (and of the projection).
        bn_momentum: BatchNorm running-average momentum.
        rngs: Random streams for parameter initialisation.
    """

    def __init__(self, in_ch: int, base_ch: int, stride: int, *, bn_momentum: float, rngs: nnx.Rngs) -> None:
        out_ch = EXPANSION * base_ch
        self.Conv_0 = _conv(in_ch, base_ch, 1, 1, rngs)
        self.BatchNorm_0 = nnx.BatchNorm(base_ch, momentum=bn_momentum, rngs=rngs)
        self.Conv_1 = _conv(base_ch, base_ch, 3, stride, rngs)
        self.BatchNorm_1 = nnx.BatchNorm(base_ch, momentum=bn_momentum, rngs=rngs)
        self.Conv_2 = _conv(base_ch, out_ch, 1, 1, rngs)
        self.BatchNorm_2 = nnx.BatchNorm(out_ch, momentum=bn_momentum, rngs=rngs)
        self._init_shortcut(in_ch, out_ch, stride, bn_momentum, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies the block to NHWC ``x``."""
        y = nnx.relu(self.BatchNorm_0(self.Conv_0(x), use_running_average=not train))
        y = nnx.relu(self.BatchNorm_1(self.Conv_1(y), use_running_average=not train))
        y = self.BatchNorm_2(self.Conv_2(y), use_running_average=not train)
        return self._add_shortcut(x, y, train)


def resnet50(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    bn_momentum: float = 0.99,
) -> Model:
    """Builds a CIFAR-style ResNet-50.

    Args:
        input_shape: Per-example ``(height, width, channels)``, e.g. ``(32, 32, 3)``.
        num_classes: Number of output logits.
        width: Base width of the first stage; stages use base widths ``(w, 2w, 4w, 8w)`` and
            output ``4x`` that. With ``width=64`` and 10 classes the model has 23,520,842
            parameters (23,705,252 for 100).
        bn_momentum: BatchNorm running-average momentum (Flax convention: weight of the old value).

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Examples:
        >>> import jax
        >>> from unlearnx import models
        >>> model = models.resnet50((32, 32, 3), 10)
        >>> models.num_params(jax.eval_shape(model.init, jax.random.key(0)))  # bottleneck blocks, 4× out
        23520842

    References:
        He, Zhang, Ren and Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016.
    """
    return cifar_resnet(
        "resnet50",
        input_shape,
        num_classes,
        block=Bottleneck,
        stages=STAGES,
        expansion=EXPANSION,
        width=width,
        bn_momentum=bn_momentum,
    )

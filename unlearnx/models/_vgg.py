"""CIFAR VGG-19 (the variant used by the GraNet / network-slimming CIFAR code).

Sixteen 3x3 stride-1 ``SAME`` convolutions in five stages of widths
``(w, w) M (2w, 2w) M (4w x 4) M (8w x 4) M (8w x 4)``, where ``M`` is a 2x2 stride-2 max-pool and
``w`` is ``width`` (64 in the original). Every conv is followed by BatchNorm (when
``batch_norm=True``; the conv then has no bias) and ReLU. There is no pool after the last stage:
the feature map (2x2 for 32x32 inputs) is globally average-pooled and fed to a single ``Dense``
head.

Parameter paths: ``params/Conv_{i}/kernel`` for ``i = 0..15`` (plus ``bias`` when
``batch_norm=False``), ``params/BatchNorm_{i}/{scale,bias}``, ``batch_stats/BatchNorm_{i}/{mean,var}``
and ``params/Dense_0/{kernel,bias}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unlearnx.models._bridge import Model, from_module

_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

CONFIG_19: tuple[int | str, ...] = (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8)
"""VGG-19 layout: width multipliers of the convs, ``"M"`` for a 2x2 max-pool."""


class VGG(nnx.Module):
    """VGG feature extractor, global average pooling and a ``Dense`` head.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        config: Conv width multipliers and ``"M"`` max-pool markers (see :data:`CONFIG_19`).
        width: Base width multiplied by the entries of ``config``.
        batch_norm: Whether to use BatchNorm after each conv (the conv then has no bias).
        bn_momentum: BatchNorm running-average momentum.
        rngs: Random streams for parameter initialisation.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        config: tuple[int | str, ...],
        width: int,
        batch_norm: bool,
        bn_momentum: float,
        rngs: nnx.Rngs,
    ) -> None:
        self.config = config
        self.batch_norm = batch_norm
        i = 0
        for item in config:
            if item == "M":
                continue
            out_channels = width * int(item)
            conv = nnx.Conv(
                in_channels,
                out_channels,
                (3, 3),
                padding="SAME",
                use_bias=not batch_norm,
                kernel_init=_conv_init,
                rngs=rngs,
            )
            setattr(self, f"Conv_{i}", conv)
            if batch_norm:
                setattr(self, f"BatchNorm_{i}", nnx.BatchNorm(out_channels, momentum=bn_momentum, rngs=rngs))
            in_channels = out_channels
            i += 1
        self.Dense_0 = nnx.Linear(in_channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns logits of shape ``(batch, num_classes)`` for NHWC input ``x``."""
        del rngs  # deterministic model
        i = 0
        for item in self.config:
            if item == "M":
                x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
                continue
            x = getattr(self, f"Conv_{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"BatchNorm_{i}")(x, use_running_average=not train)
            x = nnx.relu(x)
            i += 1
        x = jnp.mean(x, axis=(1, 2))
        return self.Dense_0(x)


def vgg19(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    batch_norm: bool = True,
    bn_momentum: float = 0.99,
) -> Model:
    """Builds the CIFAR VGG-19.

    Args:
        input_shape: Per-example ``(height, width, channels)``, e.g. ``(32, 32, 3)``; height and
            width must be at least 16 (four 2x2 max-pools).
        num_classes: Number of output logits.
        width: Channels of the first stage; stages use ``(w, 2w, 4w, 8w, 8w)``. With ``width=64``,
            BatchNorm and 10 classes the model has 20,035,018 parameters (20,081,188 for 100).
        batch_norm: Whether to use BatchNorm after each conv (without it the convs have biases).
        bn_momentum: BatchNorm running-average momentum (Flax convention: weight of the old value).

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Raises:
        ValueError: ``input_shape`` not ``(height, width, channels)``, or smaller than 16 × 16.

    Examples:
        >>> import jax
        >>> from unlearnx import models
        >>> vgg = models.vgg19((32, 32, 3), num_classes=10)  # BatchNorm, width 64
        >>> models.num_params(jax.eval_shape(vgg.init, jax.random.key(0)))
        20035018

    References:
        Simonyan and Zisserman, *Very Deep Convolutional Networks for Large-Scale Image Recognition*,
        ICLR 2015.
    """
    if len(input_shape) != 3:
        raise ValueError(f"vgg19 expects input_shape (height, width, channels), got {input_shape}")
    num_pools = CONFIG_19.count("M")
    if min(int(input_shape[0]), int(input_shape[1])) < 2**num_pools:
        raise ValueError(f"input {tuple(input_shape)} too small for {num_pools} pooling stages")
    in_channels = int(input_shape[-1])
    return from_module(
        lambda rngs: VGG(
            in_channels,
            num_classes,
            config=CONFIG_19,
            width=width,
            batch_norm=batch_norm,
            bn_momentum=bn_momentum,
            rngs=rngs,
        ),
        name="vgg19",
    )

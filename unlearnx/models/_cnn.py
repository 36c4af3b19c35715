"""Small convolutional classifier.

Each stage is ``Conv 3x3 (SAME) -> BatchNorm (optional) -> ReLU -> 2x2 max-pool``, followed by
flatten, a ReLU ``Dense`` hidden layer and a ``Dense`` head.

Parameter paths: ``params/Conv_{i}/kernel`` (plus ``bias`` when ``batch_norm=False``),
``params/BatchNorm_{i}/{scale,bias}``, ``batch_stats/BatchNorm_{i}/{mean,var}``, then
``params/Dense_0`` (hidden) and ``params/Dense_1`` (head).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from unlearnx.models._bridge import Model, from_module


class CNN(nnx.Module):
    """Conv/BN/ReLU/max-pool stages followed by a two-layer dense classifier.

    Args:
        input_shape: Per-example ``(height, width, channels)``.
        num_classes: Number of output logits.
        channels: Output channels of each conv stage.
        hidden: Width of the dense hidden layer.
        batch_norm: Whether to use BatchNorm after each conv (the conv then has no bias).
        bn_momentum: BatchNorm running-average momentum.
        rngs: Random streams for parameter initialisation.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: Sequence[int],
        hidden: int,
        batch_norm: bool,
        bn_momentum: float,
        rngs: nnx.Rngs,
    ) -> None:
        height, width, in_channels = input_shape
        self.num_stages = len(channels)
        self.batch_norm = batch_norm
        for i, out_channels in enumerate(channels):
            conv = nnx.Conv(
                in_channels,
                out_channels,
                (3, 3),
                padding="SAME",
                use_bias=not batch_norm,
                rngs=rngs,
            )
            setattr(self, f"Conv_{i}", conv)
            if batch_norm:
                bn = nnx.BatchNorm(out_channels, momentum=bn_momentum, rngs=rngs)
                setattr(self, f"BatchNorm_{i}", bn)
            in_channels = out_channels
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"input {input_shape} too small for {len(channels)} pooling stages")
        self.Dense_0 = nnx.Linear(height * width * in_channels, hidden, rngs=rngs)
        self.Dense_1 = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns logits of shape ``(batch, num_classes)`` for NHWC input ``x``."""
        del rngs  # deterministic model
        for i in range(self.num_stages):
            x = getattr(self, f"Conv_{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"BatchNorm_{i}")(x, use_running_average=not train)
            x = nnx.relu(x)
            x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.Dense_0(x))
        return self.Dense_1(x)


def cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    batch_norm: bool = True,
    bn_momentum: float = 0.99,
) -> Model:
    """Builds a small CNN classifier.

    Args:
        input_shape: Per-example ``(height, width, channels)``, e.g. ``(28, 28, 1)``.
        num_classes: Number of output logits.
        channels: Output channels of each conv stage (each stage halves the spatial size).
        hidden: Width of the dense hidden layer.
        batch_norm: Whether to use BatchNorm after each conv.
        bn_momentum: BatchNorm running-average momentum (Flax convention: weight of the old value).

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Raises:
        ValueError: ``input_shape`` not ``(height, width, channels)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from unlearnx import models
        >>> model = models.cnn((8, 8, 1), 10, channels=(4, 8), hidden=16)
        >>> variables = jax.eval_shape(model.init, jax.random.key(0))  # shapes only, nothing allocated
        >>> sorted(variables), jax.eval_shape(model.apply, variables, jnp.ones((2, 8, 8, 1))).shape
        (['batch_stats', 'params'], (2, 10))
    """
    if len(input_shape) != 3:
        raise ValueError(f"cnn expects input_shape (height, width, channels), got {input_shape}")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    channels = tuple(int(c) for c in channels)
    return from_module(
        lambda rngs: CNN(
            shape,
            num_classes,
            channels=channels,
            hidden=hidden,
            batch_norm=batch_norm,
            bn_momentum=bn_momentum,
            rngs=rngs,
        ),
        name="cnn",
    )

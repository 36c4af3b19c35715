"""Multi-layer perceptron: flatten, ``Dense`` (+ BatchNorm) + ReLU (+ dropout) hidden layers, ``Dense`` head.

Parameter paths: ``params/Dense_{i}/{kernel,bias}`` for ``i = 0 .. len(hidden)``, the last one
being the classification head; with ``batch_norm=True`` also ``params/BatchNorm_{i}/{scale,bias}`` and
``batch_stats/BatchNorm_{i}/{mean,var}`` for each hidden layer ``i`` (the head has none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from unlearnx.models._bridge import Model, from_module


class MLP(nnx.Module):
    """Fully connected classifier on flattened inputs.

    Args:
        in_features: Number of input features after flattening.
        num_classes: Number of output logits.
        hidden: Widths of the hidden layers.
        dropout: Dropout rate applied after every hidden activation (train mode only).
        batch_norm: Whether each hidden ``Dense`` is followed by BatchNorm (before the ReLU).
        bn_momentum: BatchNorm running-average momentum (Flax convention: weight of the old value).
        rngs: Random streams for parameter initialisation.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int],
        dropout: float,
        batch_norm: bool = False,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ) -> None:
        widths = (in_features, *hidden, num_classes)
        self.num_layers = len(widths) - 1
        self.batch_norm = batch_norm
        for i in range(self.num_layers):
            setattr(self, f"Dense_{i}", nnx.Linear(widths[i], widths[i + 1], rngs=rngs))
            if batch_norm and i < self.num_layers - 1:
                setattr(self, f"BatchNorm_{i}", nnx.BatchNorm(widths[i + 1], momentum=bn_momentum, rngs=rngs))
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns logits of shape ``(batch, num_classes)``."""
        x = x.reshape(x.shape[0], -1)
        for i in range(self.num_layers):
            x = getattr(self, f"Dense_{i}")(x)
            if i < self.num_layers - 1:
                if self.batch_norm:
                    x = getattr(self, f"BatchNorm_{i}")(x, use_running_average=not train)
                x = nnx.relu(x)
                x = self.dropout(x, deterministic=not train, rngs=rngs)
        return x


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int] = (256, 256),
    dropout: float = 0.0,
    batch_norm: bool = False,
    bn_momentum: float = 0.9,
) -> Model:
    """Builds an MLP classifier.

    Args:
        input_shape: Per-example input shape (without batch dimension), e.g. ``(28, 28, 1)``.
        num_classes: Number of output logits.
        hidden: Widths of the hidden layers.
        dropout: Dropout rate after each hidden ReLU; ``apply(train=True)`` then needs ``rng``.
        batch_norm: BatchNorm after each hidden ``Dense``, before its ReLU: train mode normalises with the
            batch's statistics (biased variance, ε = 1e-5) and returns the updated running averages, eval
            mode uses the running averages (the 4 × 1000 BN/dropout MLP of the public power-law
            environment is ``hidden=(1000,) * 4, dropout=0.5, batch_norm=True``).
        bn_momentum: BatchNorm running-average momentum, in [0, 1) (0.9 is PyTorch's momentum 0.1).

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Raises:
        ValueError: ``dropout`` or ``bn_momentum`` outside [0, 1).

    Examples:
        >>> import jax
        >>> from unlearnx import models
        >>> model = models.mlp((2, 2), 3, hidden=(8,))
        >>> models.num_params(jax.eval_shape(model.init, jax.random.key(0)))  # (4·8 + 8) + (8·3 + 3)
        67
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum}")
    in_features = math.prod(input_shape)
    hidden = tuple(int(h) for h in hidden)
    return from_module(
        lambda rngs: MLP(
            in_features,
            num_classes,
            hidden=hidden,
            dropout=dropout,
            batch_norm=bool(batch_norm),
            bn_momentum=float(bn_momentum),
            rngs=rngs,
        ),  # fmt: skip
        name="mlp",
    )

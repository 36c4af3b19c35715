"""Multi-layer perceptron: flatten, ``Dense`` + ReLU (+ dropout) hidden layers, ``Dense`` head.

Parameter paths: ``params/Dense_{i}/{kernel,bias}`` for ``i = 0 .. len(hidden)``, the last one
being the classification head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from unlearnx.models.bridge import Model, from_module


class MLP(nnx.Module):
    """Fully connected classifier on flattened inputs.

    Args:
        in_features: Number of input features after flattening.
        num_classes: Number of output logits.
        hidden: Widths of the hidden layers.
        dropout: Dropout rate applied after every hidden activation (train mode only).
        rngs: Random streams for parameter initialisation.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int],
        dropout: float,
        rngs: nnx.Rngs,
    ) -> None:
        widths = (in_features, *hidden, num_classes)
        self.num_layers = len(widths) - 1
        for i in range(self.num_layers):
            setattr(self, f"Dense_{i}", nnx.Linear(widths[i], widths[i + 1], rngs=rngs))
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns logits of shape ``(batch, num_classes)``."""
        x = x.reshape(x.shape[0], -1)
        for i in range(self.num_layers):
            x = getattr(self, f"Dense_{i}")(x)
            if i < self.num_layers - 1:
                x = nnx.relu(x)
                x = self.dropout(x, deterministic=not train, rngs=rngs)
        return x


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int] = (256, 256),
    dropout: float = 0.0,
) -> Model:
    """Builds an MLP classifier.

    Args:
        input_shape: Per-example input shape (without batch dimension), e.g. ``(28, 28, 1)``.
        num_classes: Number of output logits.
        hidden: Widths of the hidden layers.
        dropout: Dropout rate after each hidden ReLU; ``apply(train=True)`` then needs ``rng``.

    Returns:
        The :class:`~unlearnx.models.bridge.Model`.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    in_features = math.prod(input_shape)
    hidden = tuple(int(h) for h in hidden)
    return from_module(
        lambda rngs: MLP(in_features, num_classes, hidden=hidden, dropout=dropout, rngs=rngs),
        name="mlp",
    )

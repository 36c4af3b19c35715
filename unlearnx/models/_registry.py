"""Model construction by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unlearnx.models._bridge import Model
from unlearnx.models._cnn import cnn
from unlearnx.models._mlp import mlp
from unlearnx.models._resnet import resnet18
from unlearnx.models._resnet50 import resnet50
from unlearnx.models._vgg import vgg19

_REGISTRY: dict[str, Callable[..., Model]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg19": vgg19,
}


def available() -> tuple[str, ...]:
    """Returns the names accepted by :func:`get`.

    Returns:
        The registered model names, sorted.

    Examples:
        >>> from unlearnx import models
        >>> models.available()
        ('cnn', 'mlp', 'resnet18', 'resnet50', 'vgg19')
    """
    return tuple(sorted(_REGISTRY))


def get(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> Model:
    """Builds a model by name.

    Args:
        name: One of ``"mlp"``, ``"cnn"``, ``"resnet18"``, ``"resnet50"``, ``"vgg19"``.
        input_shape: Per-example input shape (no batch dimension).
        num_classes: Number of output logits.
        **kwargs: Forwarded to the constructor.

    Returns:
        The :class:`~unlearnx.models._bridge.Model`.

    Raises:
        ValueError: If ``name`` is unknown.

    Examples:
        >>> import jax
        >>> from unlearnx import models
        >>> model = models.get("mlp", (4,), num_classes=3, hidden=(8,))  # same as models.mlp(...)
        >>> model.name, models.num_params(jax.eval_shape(model.init, jax.random.key(0)))
        ('mlp', 67)
    """
    try:
        constructor = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(available())}") from None
    return constructor(tuple(input_shape), num_classes, **kwargs)

"""The testbed's settings, concepts, prompt grid and training helpers that need no trained model: public
through :mod:`unlearnx.testbed`, which builds, trains and samples the testbed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Concept",
    "PromptGrid",
    "TestbedConfig",
    "concept",
    "local_arrays",
    "make_optimizer",
    "quality_gate",
]

# Bumped whenever the cached checkpoints change structure, so a cache written by older code is never read
# (2: TrainState with the EMA in ``extra`` and a named optimizer chain, on train.loop / train.fit).
_CACHE_FORMAT = 2


@dataclasses.dataclass(frozen=True)
class TestbedConfig:
    """Everything that determines the trained testbed (its cache key).

    The defaults (Min-SNR-5 ε loss, batch 32, 3,000 steps) give unedited samples with the prompted shape and
    colour 100% of the time after ~11 min on 2 CPU cores; DDPM's unweighted loss with 1,500 steps of batch 64
    reached only 59% (shape) and 81% (colour), its squares and triangles drawn as blobs.

    Attributes:
        image_size: the images' side in pixels.
        shapes: the shape concepts.
        colours: the colour concepts.
        length: the captions' token length L.
        num_train: the training images (also the classifier's).
        text_width: the text encoder's width d (the UNet's context dimension).
        text_layers: the text encoder's layers.
        channels: the UNet's channels per level.
        attention: whether each UNet level has cross-attention.
        layers_per_block: the UNet's residual blocks per level.
        steps: the joint training steps.
        batch_size: the training batch.
        lr: Adam's peak learning rate (:func:`make_optimizer`).
        warmup: the linear warm-up steps.
        ema_decay: the EMA decay of the sampled parameters.
        p_uncond: the caption-dropout probability.
        snr_gamma: γ of the Min-SNR ε loss (``None``: DDPM's unweighted loss).
        classifier_epochs: the classifier's training epochs.
        seed: the seed of data, initialisation and training.

    Examples:
        >>> config = TestbedConfig(steps=10)
        >>> len(config.key()), config.key() == TestbedConfig(steps=10).key() != TestbedConfig().key()
        (16, True)
    """

    image_size: int = 16
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    length: int = 16
    num_train: int = 20_000
    text_width: int = 64
    text_layers: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.998
    p_uncond: float = 0.1
    snr_gamma: float | None = 5.0
    classifier_epochs: int = 4
    seed: int = 0

    def key(self) -> str:
        """The cache key: a hash of the settings and of the cache's checkpoint format."""
        text = json.dumps({"cache_format": _CACHE_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Concept(NamedTuple):
    """One erasable concept of the testbed: a shape or a colour.

    Attributes:
        name: the concept's word in the captions.
        kind: ``"shape"`` or ``"colour"``.
        label: its index in ``shapes`` or ``colours``.
        others: the other concepts of the same kind.

    Examples:
        >>> Concept("red", "colour", 0, ("green",)).kind
        'colour'
    """

    name: str
    kind: str  # "shape" or "colour"
    label: int  # its index in ``shapes`` or ``colours``
    others: tuple[str, ...]  # the other concepts of the same kind


def concept(config: TestbedConfig, name: str) -> Concept:
    """The shape or colour ``name`` of ``config``.

    Args:
        config: the testbed's settings.
        name: a shape or colour of ``config``.

    Returns:
        The :class:`Concept`.

    Raises:
        ValueError: if ``name`` is neither a shape nor a colour of ``config``.

    Examples:
        >>> concept(TestbedConfig(), "square")
        Concept(name='square', kind='shape', label=1, others=('circle', 'triangle', 'star'))
    """
    for kind, names in (("shape", config.shapes), ("colour", config.colours)):
        if name in names:
            return Concept(name, kind, names.index(name), tuple(other for other in names if other != name))
    raise ValueError(f"concept {name!r} is neither a shape {config.shapes} nor a colour {config.colours}")


class PromptGrid(NamedTuple):
    """Every prompt "a <colour> <shape>" (shape-major), ``repeat`` samples each.

    Attributes:
        prompts: the prompts, shape-major.
        shape: each sample's prompted shape index, ``[N]``.
        colour: each sample's prompted colour index, ``[N]``.
        contexts: each sample's text-encoder rows, ``[N, L, d]``.

    Examples:
        >>> import numpy as np
        >>> grid = PromptGrid(["a red circle"], np.array([0, 0]), np.array([0, 0]), np.zeros((2, 16, 64)))
        >>> len(grid.shape), grid.contexts.shape
        (2, (2, 16, 64))
    """

    prompts: list[str]
    shape: np.ndarray
    colour: np.ndarray
    contexts: jax.Array


def make_optimizer(config: TestbedConfig) -> optax.GradientTransformation:
    """Adam with global-norm clipping 1, linear warm-up to ``lr``, then cosine decay to 0.1·lr.

    Args:
        config: the testbed's settings (``lr``, ``warmup``, ``steps``).

    Returns:
        ``optax.named_chain(("clip", ...), ("adam", ...))``.

    Examples:
        >>> import jax.numpy as jnp
        >>> optimizer = make_optimizer(TestbedConfig(lr=1e-3, warmup=10, steps=100))
        >>> state = optimizer.init({"w": jnp.zeros(2)})
        >>> updates, _ = optimizer.update({"w": jnp.ones(2)}, state)  # step 0 of the warm-up: lr = 0
        >>> updates["w"].tolist()
        [-0.0, -0.0]
    """
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.lr, config.warmup),
            optax.cosine_decay_schedule(config.lr, config.steps, 0.1),
        ],
        [config.warmup],
    )
    return optax.named_chain(("clip", optax.clip_by_global_norm(1.0)), ("adam", optax.adam(schedule)))


def local_arrays(tree: Any) -> Any:
    """Plain default-device arrays of every leaf of ``tree``.

    Restored or mesh-replicated arrays carry another sharding, which would make every jitted consumer
    compile twice: once for them and once for jit outputs.

    Args:
        tree: a pytree of arrays.

    Returns:
        ``tree`` with each leaf copied through the host onto the default device.

    Examples:
        >>> import numpy as np
        >>> local_arrays({"w": np.arange(3)})["w"].tolist()
        [0, 1, 2]
    """
    return jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf)), tree)


def quality_gate(grid: PromptGrid, shape: np.ndarray, colour: np.ndarray, bar: float = 0.8) -> dict[str, Any]:
    """How often the unedited model's samples of ``grid`` show the prompted shape and colour.

    Args:
        grid: the prompts sampled.
        shape: the classifier's predicted shape index of each sample, ``[N]``.
        colour: its predicted colour index, ``[N]``.
        bar: the least rate of each that passes.

    Returns:
        ``{"shape_acc", "colour_acc", "passed"}``; ``passed`` when both rates reach ``bar``.

    Examples:
        >>> import numpy as np
        >>> grid = PromptGrid(["a red circle"] * 4, np.zeros(4, int), np.zeros(4, int), np.zeros((4, 1, 1)))
        >>> quality_gate(grid, np.array([0, 0, 0, 1]), np.zeros(4, int))
        {'shape_acc': 0.75, 'colour_acc': 1.0, 'passed': False}
    """
    rates = {
        "shape_acc": float(np.mean(shape == grid.shape)),
        "colour_acc": float(np.mean(colour == grid.colour)),
    }
    return {**rates, "passed": rates["shape_acc"] >= bar and rates["colour_acc"] >= bar}

"""Pure functional bridge from Flax NNX modules to Linen-style variable dicts.

Everything outside :mod:`unlearnx.models` sees a model only as a :class:`Model`: two pure
functions, ``init`` and ``apply``, that exchange plain nested ``dict`` pytrees with string keys
(``{"params": {...}, "batch_stats": {...}}``). The NNX module is built abstractly once to obtain
its static ``GraphDef``; each ``apply`` call rebuilds a throw-away module from the graph definition
and the given arrays, runs it, and reads the updated batch statistics back out.

Module convention for :func:`from_module`:

* The factory is called as ``factory(rngs)`` with an :class:`flax.nnx.Rngs` and returns the module.
* The module is called as ``module(x, train=train, rngs=rngs)``. ``train`` is a Python ``bool``;
  BatchNorm layers should use ``use_running_average=not train`` and Dropout layers
  ``deterministic=not train`` with the ``rngs`` argument forwarded to them. ``rngs`` is an
  :class:`flax.nnx.Rngs` with a ``dropout`` stream in train mode when the caller supplied a key,
  else ``None``.
* The module's state may hold only :class:`flax.nnx.Param` and :class:`flax.nnx.BatchStat`
  variables. In particular Dropout layers must be created without ``rngs`` (the key is passed at
  call time) so that no RNG state lives inside the module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

Variables = dict[str, Any]
"""Linen-style variables: ``{"params": {...}}`` plus optional ``"batch_stats": {...}``."""

Path = tuple[Any, ...]

PARAMS = "params"
BATCH_STATS = "batch_stats"


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as a pair of pure functions over plain nested-dict variables.

    Attributes:
        init: ``init(rng) -> variables``. Returns ``{"params": ...}`` and, only when the model has
            BatchNorm layers, ``"batch_stats"``. Leaves are ``jax.Array``; keys are strings.
        apply: ``apply(variables, x, *, train=False, rng=None)``. In eval mode returns the outputs;
            in train mode returns ``(outputs, new_variables)`` where ``new_variables`` carries the
            updated ``batch_stats`` (or is ``variables`` itself when there are none). ``train``
            must be a Python bool: under ``jax.jit`` mark it static, e.g.
            ``jax.jit(model.apply, static_argnames="train")``.
        name: Human-readable model name.
        has_batch_stats: Whether ``init`` returns a ``"batch_stats"`` collection.
        stochastic: Whether train-mode ``apply`` needs ``rng`` (the model has active dropout).

    Examples:
        >>> from unlearnx import models
        >>> model = models.mlp((4,), 3, dropout=0.5)
        >>> model.name, model.has_batch_stats, model.stochastic
        ('mlp', False, True)
    """

    init: Callable[[jax.Array], Variables]
    apply: Callable[..., Any]
    name: str
    has_batch_stats: bool = False
    stochastic: bool = False

    def num_params(self, variables: Mapping[str, Any]) -> int:
        """Counts the trainable parameters in ``variables``; see :func:`num_params`."""
        return num_params(variables)


def num_params(variables: Mapping[str, Any]) -> int:
    """Counts scalar parameters.

    Args:
        variables: Either full Linen-style variables (only the ``"params"`` collection is counted)
            or a bare parameter pytree. Leaves may be arrays or ``jax.ShapeDtypeStruct``.

    Returns:
        The total number of scalars in the parameter leaves.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import models
        >>> models.num_params({"params": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, "batch_stats": {}})
        8
    """
    tree = variables[PARAMS] if PARAMS in variables else variables
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(tree))


def _str_path(path: Path) -> tuple[str, ...]:
    return tuple(str(key) for key in path)


def _to_plain(state: nnx.State) -> dict[str, Any]:
    """Converts an NNX state into a nested dict of raw values with string keys."""
    out: dict[str, Any] = {}
    for path, variable in nnx.to_flat_state(state):
        node = out
        *parents, last = _str_path(path)
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = variable.get_value() if isinstance(variable, nnx.Variable) else variable
    return out


def _flat_plain(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat_plain(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _from_plain(abstract: list[tuple[Path, nnx.Variable]], tree: Any, collection: str) -> nnx.State:
    """Rebuilds an NNX state from a plain dict, using the abstract state as the template."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"variables[{collection!r}] must be a dict, got {type(tree).__name__}")
    flat = _flat_plain(tree)
    expected = {_str_path(path) for path, _ in abstract}
    if set(flat) != expected:
        missing = sorted("/".join(p) for p in expected - set(flat))
        extra = sorted("/".join(p) for p in set(flat) - expected)
        raise ValueError(
            f"variables[{collection!r}] does not match the model: missing={missing[:5]} "
            f"unexpected={extra[:5]}"
        )
    return nnx.from_flat_state(
        [(path, variable.replace(flat[_str_path(path)])) for path, variable in abstract]
    )


def _has_active_dropout(module: nnx.Module) -> bool:
    return any(isinstance(sub, nnx.Dropout) and sub.rate > 0.0 for _, sub in nnx.iter_modules(module))


def from_module(
    factory: Callable[[nnx.Rngs], nnx.Module],
    name: str,
    *,
    stochastic: bool | None = None,
) -> Model:
    """Builds a :class:`Model` bridge around an NNX module, built once abstractly for its ``GraphDef``.

    Args:
        factory: Creates the module from an ``nnx.Rngs``; must be deterministic given the key (the
            module's ``__call__`` convention is in the module docstring).
        name: Name stored on the returned model.
        stochastic: Whether train mode requires an ``rng``; default: any ``nnx.Dropout`` with ``rate > 0``.

    Returns:
        The pure functional :class:`Model`.

    Raises:
        ValueError: If the module holds state other than ``nnx.Param`` / ``nnx.BatchStat``.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> from unlearnx import models
        >>> linear = models.from_module(lambda rngs: nnx.Linear(3, 2, rngs=rngs), "linear")
        >>> models.num_params(jax.eval_shape(linear.init, jax.random.key(0)))  # 3 × 2 kernel + 2 biases
        8
    """
    abstract_module = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
    graphdef, abs_params, abs_stats, abs_rest = nnx.split(abstract_module, nnx.Param, nnx.BatchStat, ...)
    rest_paths = ["/".join(_str_path(p)) for p, _ in nnx.to_flat_state(abs_rest)]
    if rest_paths:
        raise ValueError(
            f"Model {name!r} holds state that is neither nnx.Param nor nnx.BatchStat: "
            f"{rest_paths[:5]}. Create Dropout layers without `rngs` and pass them at call time."
        )
    flat_params = list(nnx.to_flat_state(abs_params))
    flat_stats = list(nnx.to_flat_state(abs_stats))
    has_batch_stats = bool(flat_stats)
    if stochastic is None:
        stochastic = _has_active_dropout(abstract_module)

    def init(rng: jax.Array) -> Variables:
        module = factory(nnx.Rngs(rng))
        _, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
        variables: Variables = {PARAMS: _to_plain(params)}
        if has_batch_stats:
            variables[BATCH_STATS] = _to_plain(stats)
        return variables

    def apply(
        variables: Variables,
        x: jax.Array,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
    ) -> Any:
        if not isinstance(train, bool | np.bool_):
            raise TypeError(
                "`train` must be a Python bool; under jax.jit use "
                "jax.jit(model.apply, static_argnames='train')."
            )
        train = bool(train)
        if train and stochastic and rng is None:
            raise ValueError(f"Model {name!r} uses dropout: apply(train=True) requires `rng`.")
        params = _from_plain(flat_params, variables[PARAMS], PARAMS)
        states = [params]
        if has_batch_stats:
            states.append(_from_plain(flat_stats, variables[BATCH_STATS], BATCH_STATS))
        module = nnx.merge(graphdef, *states)
        rngs = nnx.Rngs(dropout=rng) if (train and rng is not None) else None
        outputs = module(x, train=train, rngs=rngs)
        if not train:
            return outputs
        if not has_batch_stats:
            return outputs, variables
        new_stats = _to_plain(nnx.state(module, nnx.BatchStat))
        return outputs, {**variables, BATCH_STATS: new_stats}

    return Model(init=init, apply=apply, name=name, has_batch_stats=has_batch_stats, stochastic=stochastic)

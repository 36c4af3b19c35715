"""Per-tensor sparsity targets: uniform, and Erdős–Rényi-Kernel (ERK) with RigL's ε-solve.

ERK gives tensor l (shape n_1 × … × n_d, size N_l) the density d_l = ε·(Σᵢ nᵢ / Πᵢ nᵢ)^power_scale, with ε
chosen so that Σ_l d_l·N_l = (1 − s)·Σ_l N_l. A tensor whose density would exceed 1 is made dense and ε is
solved again over the rest, so the overall sparsity over the selected tensors is exactly s (before the
rounding of per-tensor counts).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree

__all__ = ["erk_sparsities", "uniform_sparsities"]


def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    return checks.static_number(name, sparsity, low=0.0, high=1.0, high_open=True)


def _selected_paths(params: PyTree, where: tree_lib.Where) -> dict[str, tuple[int, ...]]:
    """Path -> shape of every selected tensor; the default selects every tensor of rank ≥ 2."""
    default = where is None
    flags = dict(tree_lib.leaves_with_paths(tree_lib.select(params, where)))
    chosen = {
        path: tuple(np.shape(leaf))
        for path, leaf in tree_lib.leaves_with_paths(params)
        if flags[path] and (not default or np.ndim(leaf) >= 2)
    }
    if not chosen:
        raise ValueError(f"where={where!r} selects no parameter tensor to sparsify")
    for path, shape in chosen.items():
        if math.prod(shape) == 0:
            raise ValueError(
                f"params[{path!r}] has shape {shape}: an empty tensor cannot be sparsified; "
                "exclude it with where="
            )
    return chosen


def _as_tree(params: PyTree, values: dict[str, float]) -> PyTree:
    return jax.tree_util.tree_map_with_path(lambda path, _: values.get(tree_lib.key_path_str(path)), params)


def uniform_sparsities(params: PyTree, sparsity: float, *, where: tree_lib.Where = None) -> PyTree:
    """Every selected tensor at ``sparsity``; unselected ones ``None`` (kept dense).

    Args:
        params: the parameter tree.
        sparsity: s ∈ [0, 1).
        where: a selector (:mod:`unlearnx.tree`); by default every tensor of rank ≥ 2 (kernels, not biases
            or norm scales), as in GraNet's CIFAR setting.

    Returns:
        A tree with ``params``' structure: s for every selected tensor, ``None`` for the rest.

    Raises:
        ValueError: ``sparsity`` outside [0, 1), a selector matching nothing, an empty selected tensor.

    Examples:
        >>> import numpy as np
        >>> uniform_sparsities({"bias": np.zeros(3), "kernel": np.zeros((3, 4))}, 0.9)
        {'bias': None, 'kernel': 0.9}
    """
    value = _check_sparsity(sparsity)
    return _as_tree(params, {path: value for path in _selected_paths(params, where)})


def erk_sparsities(
    params: PyTree, sparsity: float, *, where: tree_lib.Where = None, power_scale: float = 1.0
) -> PyTree:
    """ERK sparsities (see the module docstring); unselected tensors ``None``.

    Args:
        params: parameter tree.
        sparsity: overall target s ∈ [0, 1) over the selected tensors.
        where: selector (default: every tensor of rank ≥ 2).
        power_scale: exponent ≥ 0 on the ERK raw density (1 is ERK, 0 is uniform); static.

    Returns:
        A tree with ``params``' structure: s_l for every selected tensor (0 for one made dense), ``None`` for
        the rest.

    Raises:
        ValueError: ``sparsity`` outside [0, 1), a negative or non-finite ``power_scale`` (or one so large
            that every raw density underflows), a selector matching nothing, an empty selected tensor.
        TypeError: traced hyper-parameters.

    Examples:
        >>> import numpy as np
        >>> params = {"a": np.zeros((10, 10)), "b": np.zeros((100, 10))}  # raw density 0.2 and 0.11
        >>> s = erk_sparsities(params, 0.5)  # ε·(0.2·100 + 0.11·1000) = 550
        >>> round(s["a"], 4), round(s["b"], 4), round((s["a"] * 100 + s["b"] * 1000) / 1100, 4)
        (0.1538, 0.5346, 0.5)

    References:
        Evci et al., `Rigging the Lottery: Making All Tickets Winners <https://arxiv.org/abs/1911.11134>`_,
        ICML 2020.
    """
    value = _check_sparsity(sparsity)
    checks.static_number("power_scale", power_scale, low=0.0)
    shapes = _selected_paths(params, where)
    sizes = {path: math.prod(shape) for path, shape in shapes.items()}
    raw = {path: (sum(shape) / sizes[path]) ** power_scale for path, shape in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = (1.0 - value) * sum(sizes.values()) - sum(sizes[p] for p in dense)
        weight = sum(raw[p] * sizes[p] for p in shapes if p not in dense)
        if not dense and not 0.0 < weight < math.inf:
            raise ValueError(
                f"power_scale={power_scale!r} makes every raw ERK density {'0' if weight == 0 else 'inf'}; "
                "use a smaller power_scale"
            )
        epsilon = budget / weight if weight > 0 else 0.0
        overflow = [p for p in shapes if p not in dense and epsilon * raw[p] > 1.0]
        if not overflow:
            break
        dense.update(overflow)
    densities = {p: 1.0 if p in dense else epsilon * raw[p] for p in shapes}
    return _as_tree(params, {p: 1.0 - d for p, d in densities.items()})

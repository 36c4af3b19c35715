"""Parameter-tree utilities: key paths as strings, path selectors, structure checks and statistics.

Every transform in unlearnx addresses parameters by *path*, never by leaf identity, so the same code works
on Linen variable dicts (``params/Dense_0/kernel``), NNX ``State`` trees (whose leaves sit under a trailing
``.value`` attribute, which is dropped: ``Dense_0/kernel``), plain nested dicts, lists and dataclasses.

A selector (``where=``) is one of:

* ``None`` -- every leaf except batch statistics (Linen ``batch_stats`` collections and NNX
  ``BatchStat`` variables), which are never trainable;
* a string -- a glob matched against the whole path (``"*/kernel"``, ``"params/Dense_*/*"``), or a regular
  expression searched in the path when prefixed with ``re:`` (``"re:Dense_[01]/kernel$"``);
* a compiled ``re.Pattern`` -- searched in the path;
* a callable ``path -> bool``;
* a tree of bools with the tree's structure.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from unlearnx._typing import PyTree

Where = None | str | re.Pattern | Callable[[str], bool] | PyTree

__all__ = [
    "PyTree",
    "check_same_structure",
    "is_batch_stat",
    "key_path_str",
    "leaves_with_paths",
    "path_tree",
    "select",
    "trainable",
    "tree_stats",
]


def key_path_str(key_path: tuple) -> str:
    """Joins a JAX key path with ``/``, e.g. ``(DictKey('params'), DictKey('w'))`` -> ``params/w``.

    Integer keys become their decimal string and a trailing NNX ``.value`` attribute is dropped, so an NNX
    ``State`` and its pure-dict form give the same paths.

    Args:
        key_path: a key path as ``jax.tree_util.tree_flatten_with_path`` yields it.

    Returns:
        The keys joined with ``/``.

    Examples:
        >>> import jax
        >>> [(path, leaf)] = jax.tree_util.tree_flatten_with_path({"params": [{"w": 1.0}]})[0]
        >>> path
        (DictKey(key='params'), SequenceKey(idx=0), DictKey(key='w'))
        >>> key_path_str(path)
        'params/0/w'
    """
    key_path = tuple(key_path)
    if key_path and isinstance(key_path[-1], jax.tree_util.GetAttrKey) and key_path[-1].name == "value":
        key_path = key_path[:-1]
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
    """The leaves of a tree with their path strings, in the tree's flattening order.

    Args:
        tree: any pytree.

    Returns:
        A list ``[(path, leaf), ...]`` with ``path`` as :func:`key_path_str` writes it.

    Examples:
        >>> leaves_with_paths({"params": {"b": 0.0, "w": [1.0, 2.0]}})
        [('params/b', 0.0), ('params/w/0', 1.0), ('params/w/1', 2.0)]
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(key_path_str(path), leaf) for path, leaf in flat]


def path_tree(tree: PyTree) -> PyTree:
    """A tree with the structure of ``tree`` whose leaves are their own path strings.

    Args:
        tree: any pytree.

    Returns:
        A tree with ``tree``'s structure whose leaves are their :func:`key_path_str` paths.

    Examples:
        >>> path_tree({"params": {"w": 1.0, "b": [0.0]}})
        {'params': {'b': ['params/b/0'], 'w': 'params/w'}}
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: key_path_str(path), tree)


def _is_variable(node: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(node, nnx.Variable)


def is_batch_stat(tree: PyTree) -> PyTree:
    """A bool tree marking batch statistics: leaves under a ``batch_stats`` key or in an NNX ``BatchStat``.

    Args:
        tree: a Linen variable dict, an NNX ``State`` or any pytree.

    Returns:
        A tree with ``tree``'s structure whose leaves are ``True`` exactly for batch statistics.

    Examples:
        >>> is_batch_stat({"params": {"scale": 1.0}, "batch_stats": {"mean": 0.0}})
        {'batch_stats': {'mean': True}, 'params': {'scale': False}}
    """
    try:
        from flax import nnx

        batch_stat_type: tuple[type, ...] = (nnx.BatchStat,)
    except ImportError:  # pragma: no cover
        batch_stat_type = ()

    def mark(path, node):
        in_collection = "batch_stats" in key_path_str(path).split("/")
        if _is_variable(node):
            flag = in_collection or isinstance(node, batch_stat_type)
            return jax.tree.map(lambda _: flag, node)
        return in_collection

    return jax.tree_util.tree_map_with_path(mark, tree, is_leaf=_is_variable)


def _matcher(where: str | re.Pattern | Callable[[str], bool]) -> Callable[[str], bool]:
    if isinstance(where, re.Pattern):
        return lambda path: where.search(path) is not None
    if isinstance(where, str):
        if where.startswith("re:"):
            pattern = re.compile(where[3:])
            return lambda path: pattern.search(path) is not None
        return lambda path: fnmatch.fnmatchcase(path, where)
    return where


def select(tree: PyTree, where: Where = None) -> PyTree:
    """Evaluates a selector on every leaf of ``tree``.

    Args:
        tree: any pytree of arrays.
        where: a selector (see the module docstring).

    Returns:
        A tree with ``tree``'s structure whose leaves are Python bools.

    Raises:
        TypeError: a bool tree whose structure differs from ``tree``, or whose leaves are not bools.

    Examples:
        >>> params = {"Dense_0": {"bias": 0.0, "kernel": 1.0}, "Dense_1": {"bias": 0.0, "kernel": 1.0}}
        >>> select(params, "*/kernel")
        {'Dense_0': {'bias': False, 'kernel': True}, 'Dense_1': {'bias': False, 'kernel': True}}
        >>> select(params, "re:_1/")["Dense_1"]
        {'bias': True, 'kernel': True}
    """
    if where is None:
        return jax.tree.map(lambda stat: not stat, is_batch_stat(tree))
    if isinstance(where, str | re.Pattern) or callable(where):
        match = _matcher(where)
        return jax.tree_util.tree_map_with_path(lambda path, _: bool(match(key_path_str(path))), tree)
    check_same_structure(tree, where, names=("tree", "where"))
    for path, flag in leaves_with_paths(where):
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(f"where: leaf {path!r} must be a Python bool, got {flag!r}")
    return jax.tree.map(bool, where)


def trainable(tree: PyTree, where: Where = None) -> PyTree:
    """:func:`select`, then minus batch statistics whatever ``where`` says.

    Args:
        tree: any pytree of arrays.
        where: a selector (see the module docstring).

    Returns:
        A tree with ``tree``'s structure whose leaves are Python bools: selected and not a batch statistic.

    Examples:
        >>> variables = {"params": {"scale": 1.0}, "batch_stats": {"mean": 0.0}}
        >>> trainable(variables, "*")
        {'batch_stats': {'mean': False}, 'params': {'scale': True}}
    """
    return jax.tree.map(
        lambda chosen, stat: bool(chosen) and not stat, select(tree, where), is_batch_stat(tree)
    )


def check_same_structure(
    a: PyTree, b: PyTree, *, names: tuple[str, str] = ("a", "b"), shapes: bool = True
) -> None:
    """Checks that two trees have the same paths, tree types and (with ``shapes``) leaf shapes.

    Args:
        a: a pytree.
        b: a pytree to compare with ``a``.
        names: the two trees' names in the error message.
        shapes: also compare the leaves' shapes (``np.shape``).

    Returns:
        ``None``.

    Raises:
        ValueError: naming the paths where the structures (or leaf shapes) differ: the paths of ``a``
            missing from ``b`` and those of ``b`` missing from ``a``.

    Examples:
        >>> check_same_structure({"w": 1.0}, {"w": 2.0})
        >>> check_same_structure({"w": 1.0}, {"v": 2.0}, names=("params", "grads"))
        Traceback (most recent call last):
        ValueError: params and grads have different structures: grads lacks ['w']; grads has extra ['v']
    """
    paths_a = {p: leaf for p, leaf in leaves_with_paths(a)}
    paths_b = {p: leaf for p, leaf in leaves_with_paths(b)}
    missing = [p for p in paths_a if p not in paths_b]
    extra = [p for p in paths_b if p not in paths_a]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"{names[1]} lacks {missing[:3]}")
        if extra:
            detail.append(f"{names[1]} has extra {extra[:3]}")
        raise ValueError(f"{names[0]} and {names[1]} have different structures: " + "; ".join(detail))
    for path, leaf in paths_a.items() if shapes else ():
        shape_a, shape_b = np.shape(leaf), np.shape(paths_b[path])
        if shape_a != shape_b:
            raise ValueError(f"{names[0]} and {names[1]} differ in shape at {path!r}: {shape_a} vs {shape_b}")
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(
            f"{names[0]} and {names[1]} have the same paths but different tree types: "
            f"{jax.tree.structure(a)} vs {jax.tree.structure(b)}"
        )


def tree_stats(tree: PyTree, where: Where = None) -> dict[str, Any]:
    """Summary statistics of the selected leaves of a tree, computed in float64 on the host.

    Args:
        tree: any pytree of arrays.
        where: a selector (see the module docstring); the default leaves out batch statistics.

    Returns:
        A dict with ``size`` (number of scalars), ``zeros`` (exact zeros), ``sparsity`` (zeros / size),
        ``l2_norm`` (sqrt of the sum of squares of the finite entries), ``max_abs``, ``nonfinite`` (NaN/inf
        count) and ``per_leaf``, a ``{path: {size, zeros, sparsity, l2_norm}}`` dict.

    Examples:
        >>> import numpy as np
        >>> stats = tree_stats({"w": np.array([3.0, 0.0, -4.0, 0.0])})
        >>> stats["sparsity"], stats["l2_norm"], stats["max_abs"]
        (0.5, 5.0, 4.0)
    """
    flags = dict(leaves_with_paths(select(tree, where)))
    per_leaf: dict[str, dict[str, float]] = {}
    size = zeros = nonfinite = 0
    sum_sq = max_abs = 0.0
    for path, leaf in leaves_with_paths(tree):
        if not flags[path]:
            continue
        values = np.asarray(leaf, dtype=np.float64)
        leaf_zeros = int(np.count_nonzero(values == 0))
        leaf_sq = float(np.sum(np.square(values[np.isfinite(values)])))
        per_leaf[path] = {
            "size": int(values.size),
            "zeros": leaf_zeros,
            "sparsity": leaf_zeros / max(values.size, 1),
            "l2_norm": leaf_sq**0.5,
        }
        size += values.size
        zeros += leaf_zeros
        nonfinite += int(np.count_nonzero(~np.isfinite(values)))
        sum_sq += leaf_sq
        if values.size:
            max_abs = max(max_abs, float(np.max(np.abs(values))))
    return {
        "size": size,
        "zeros": zeros,
        "sparsity": zeros / max(size, 1),
        "l2_norm": sum_sq**0.5,
        "max_abs": max_abs,
        "nonfinite": nonfinite,
        "per_leaf": per_leaf,
    }

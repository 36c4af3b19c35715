"""unlearnx.tree: path strings, selectors, structure checks and statistics."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unlearnx import tree


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.Dense_0 = nnx.Linear(2, 3, rngs=rngs)
        self.norm = nnx.BatchNorm(3, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(3, 3, rngs=rngs)])


def test_paths_for_linen_nnx_and_lists():
    variables = {"params": {"Dense_0": {"kernel": 1, "bias": 2}}, "batch_stats": {"bn": {"mean": 3}}}
    assert tree.leaves_with_paths(variables) == [
        ("batch_stats/bn/mean", 3),
        ("params/Dense_0/bias", 2),
        ("params/Dense_0/kernel", 1),
    ]
    state = nnx.state(Tiny(nnx.Rngs(0)))
    paths = [path for path, _ in tree.leaves_with_paths(state)]
    assert "Dense_0/kernel" in paths and "blocks/0/kernel" in paths and "norm/mean" in paths
    assert tree.path_tree({"a": [5, 6]}) == {"a": ["a/0", "a/1"]}


def test_default_selector_excludes_batch_statistics():
    state = nnx.state(Tiny(nnx.Rngs(0)))
    flags = dict(tree.leaves_with_paths(tree.select(state)))
    assert flags["norm/mean"] is False and flags["norm/var"] is False
    assert flags["norm/scale"] is True and flags["Dense_0/kernel"] is True
    linen = {"params": {"w": 1}, "batch_stats": {"m": 2}}
    assert tree.select(linen) == {"params": {"w": True}, "batch_stats": {"m": False}}


@pytest.mark.parametrize(
    "where",
    ["params/*/kernel", "re:Dense_\\d/kernel$", re.compile("kernel$"), lambda p: p.endswith("kernel")],
)
def test_selector_forms_agree(where):
    variables = {"params": {"Dense_0": {"kernel": 1, "bias": 2}, "Dense_1": {"kernel": 3}}}
    assert tree.select(variables, where) == {
        "params": {"Dense_0": {"kernel": True, "bias": False}, "Dense_1": {"kernel": True}}
    }


def test_bool_tree_selector_is_validated():
    variables = {"a": 1, "b": 2}
    assert tree.select(variables, {"a": True, "b": False}) == {"a": True, "b": False}
    with pytest.raises(ValueError, match="different structures"):
        tree.select(variables, {"a": True})
    with pytest.raises(TypeError, match="leaf 'b' must be a Python bool"):
        tree.select(variables, {"a": True, "b": 0.5})


def test_tree_stats_by_hand():
    stats = tree.tree_stats({"a": jnp.asarray([0.0, 3.0]), "b": jnp.asarray([[0.0, 0.0], [4.0, 0.0]])})
    assert stats["size"] == 6 and stats["zeros"] == 4
    np.testing.assert_allclose(stats["sparsity"], 4 / 6)
    np.testing.assert_allclose(stats["l2_norm"], 5.0)
    assert stats["max_abs"] == 4.0 and stats["nonfinite"] == 0
    assert stats["per_leaf"]["b"] == {"size": 4, "zeros": 3, "sparsity": 0.75, "l2_norm": 4.0}
    assert tree.tree_stats({"a": jnp.asarray([1.0, jnp.nan])})["nonfinite"] == 1

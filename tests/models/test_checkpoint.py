"""Orbax round-trips of `init` variables (proves the key naming is checkpoint friendly)."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from unlearnx import models

CASES = {
    "mlp": (lambda: models.mlp((4, 4, 1), 3, hidden=(8,)), (4, 4, 1)),
    "cnn": (lambda: models.cnn((8, 8, 1), 3, channels=(4,), hidden=8), (8, 8, 1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_standard_checkpointer_round_trip(name, tmp_path):
    factory, input_shape = CASES[name]
    model = factory()
    variables = model.init(jax.random.key(0))
    path = tmp_path / "ckpt"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, variables)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(path, jax.eval_shape(model.init, jax.random.key(0)))
        restored_untyped = checkpointer.restore(path)
    for tree in (restored, restored_untyped):
        assert jax.tree.structure(tree) == jax.tree.structure(variables)
        jax.tree.map(np.testing.assert_array_equal, tree, variables)
    x = np.ones((2, *input_shape), np.float32)
    np.testing.assert_array_equal(model.apply(restored, x), model.apply(variables, x))

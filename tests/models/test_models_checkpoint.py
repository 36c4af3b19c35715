"""Orbax round-trips of `init` variables (proves the key naming is checkpoint friendly)."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from unlearnx import models


@pytest.mark.parametrize(
    "model",
    [
        models.mlp((4, 4, 1), 3, hidden=(8,)),
        models.cnn((8, 8, 1), 3, channels=(4,), hidden=8),
    ],
    ids=["mlp", "cnn"],
)
def test_standard_checkpointer_round_trip(model, tmp_path):
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
    x = np.ones((2, *model_input_shape(model)), np.float32)
    np.testing.assert_array_equal(model.apply(restored, x), model.apply(variables, x))


def model_input_shape(model: models.Model) -> tuple[int, ...]:
    return (4, 4, 1) if model.name == "mlp" else (8, 8, 1)

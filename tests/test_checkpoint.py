"""unlearnx.checkpoint: exact round trips of optimizer-state trees, retention and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearnx.checkpoint import Checkpointer
from unlearnx.train import TrainState


def _state(scale):
    params = {"params": {"Dense_0": {"kernel": jnp.full((3, 2), scale), "bias": jnp.zeros(2)}}}
    return TrainState(jnp.asarray(7, jnp.int32), params, optax.adam(1e-3).init(params["params"]))


def test_round_trip_and_latest(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None
        for step in (1, 2, 3):
            ckpt.save(step, _state(float(step)))
        assert ckpt.latest_step() == 3
        restored = ckpt.restore(_state(0.0))
        assert isinstance(restored, TrainState)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(_state(3.0)), strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(Exception):  # noqa: B017 - orbax reports a removed step in its own way
            ckpt.restore(_state(0.0), step=1)  # only the newest two are kept


def test_restore_without_checkpoint_names_the_directory(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(FileNotFoundError, match="empty"):
        ckpt.restore(_state(0.0))

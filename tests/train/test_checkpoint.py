"""unlearnx.checkpoint: exact round trips of train-state trees with their JSON record, retention, save
policies and clear errors."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearnx.checkpoint import Checkpointer, interval_policy
from unlearnx.train import TrainState


def _state(scale):
    params = {"params": {"Dense_0": {"kernel": jnp.full((3, 2), scale), "bias": jnp.zeros(2)}}}
    return TrainState.create(params, optax.adam(1e-3), jax.random.key(int(scale)))


def test_round_trip_with_record_and_latest(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        for step in (1, 2, 3):
            ckpt.save(step, _state(float(step)), {"history": [{"loss": 0.5 * step}]})
        assert ckpt.latest_step() == 3 and ckpt.all_steps() == [2, 3]  # only the newest two are kept
        restored, record = ckpt.restore(_state(0.0))
        assert isinstance(restored, TrainState) and record == {"history": [{"loss": 1.5}]}
        want = _state(3.0)
        np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(want.rng))
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want), strict=True):
            if not jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                np.testing.assert_array_equal(a, b)
        with pytest.raises(Exception):  # noqa: B017 - orbax reports a removed step in its own way
            ckpt.restore(_state(0.0), step=1)


def test_restore_without_checkpoint_names_the_directory(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(FileNotFoundError, match="empty"):
        ckpt.restore(_state(0.0))


def test_policies_decide_when_to_save(tmp_path):
    with Checkpointer(tmp_path / "none") as ckpt:
        assert not ckpt.should_save(5)  # without a policy only forced saves happen
    with Checkpointer(tmp_path / "steps", policy=interval_policy(steps=4)) as ckpt:
        assert [s for s in range(1, 10) if ckpt.should_save(s)] == [4, 8]
    with Checkpointer(tmp_path / "time", policy=interval_policy(seconds=3600)) as ckpt:
        assert ckpt.should_save(1)  # nothing saved yet
        ckpt.save(1, _state(1.0))
        time.sleep(0.01)
        assert not ckpt.should_save(2)  # an hour has not passed
    assert interval_policy() is None


@pytest.mark.parametrize(
    "kwargs", [{"seconds": -1.0}, {"steps": 0}, {"steps": 2.5}, {"seconds": float("nan")}]
)
def test_bad_policies_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        interval_policy(**kwargs)


def _data_files(step_dir):
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d")


@pytest.mark.parametrize("damage", ["flip a byte of a data file", "truncate _METADATA", "lose the digest"])
def test_a_damaged_step_is_named_deleted_and_the_previous_one_restored(tmp_path, damage):
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for step in (1, 2):
            ckpt.save(step, _state(float(step)), {"step": step})
    step_dir = tmp_path / "2"
    if damage.startswith("flip"):
        target = _data_files(step_dir)[0]
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        target.write_bytes(bytes(raw))
    elif damage.startswith("truncate"):
        target = step_dir / "state" / "_METADATA"
        target.write_bytes(target.read_bytes()[:20])
    else:
        target = step_dir / "unlearnx_digest.json"
        target.unlink()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.verify(1) is None and str(target) in ckpt.verify(2)
        with pytest.warns(RuntimeWarning, match=f"step 2 .* damaged .*{target.name}"):
            step, restored, record = ckpt.restore_latest(_state(0.0))
        assert step == 1 and record == {"step": 1} and ckpt.all_steps() == [1]
        np.testing.assert_array_equal(restored.variables["params"]["Dense_0"]["kernel"], np.ones((3, 2)))


def test_an_intact_step_of_another_structure_raises_and_is_kept(tmp_path):
    """A state that gained a field (another code version) is not damage: it raises, and nothing is deleted."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": np.ones(2, np.float32)}, {"step": 1})
    with Checkpointer(tmp_path) as ckpt:
        like = {"w": np.zeros(2, np.float32), "update_due": np.zeros((), bool)}
        with pytest.raises(ValueError, match=r"step 1 in .* is intact .*update_due.*nothing was deleted"):
            ckpt.restore_latest(like)
        assert ckpt.all_steps() == [1] and ckpt.verify(1) is None
        step, tree, record = ckpt.restore_latest({"w": np.zeros(2, np.float32)})
    assert step == 1 and record == {"step": 1}
    np.testing.assert_array_equal(tree["w"], np.ones(2))

"""unlearnx.train.loop: exact resume from any step, the stop mechanism (stop_at, SIGTERM), records, errors,
and 8 simulated devices (batch sharded, optionally parameters too) giving the one-device result."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import run_on_eight_devices

from unlearnx import train
from unlearnx.checkpoint import Checkpointer

OPTIMIZER = optax.sgd(0.1, momentum=0.9)
N, D, C, BATCH = 48, 16, 8, 16


def arrays():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(N, D)).astype(np.float32), "y": rng.integers(0, C, N)}


def initial_state():
    variables = {"params": {"w": jnp.zeros((D, C)), "b": jnp.zeros(C)}}
    return train.TrainState.create(variables, OPTIMIZER, jax.random.key(7))


def batch_at(step):
    """A deterministic batch per step, cycling over three batches of 16."""
    data, index = arrays(), step % (N // BATCH)
    chosen = slice(index * BATCH, (index + 1) * BATCH)
    return {key: value[chosen] for key, value in data.items()}


@jax.jit
def step_fn(state, batch):
    """Softmax regression with input dropout drawn from the state's RNG (so RNG handling is exercised)."""
    keep = jax.random.bernoulli(jax.random.fold_in(state.rng, state.step), 0.8, batch["x"].shape)

    def loss(params):
        logits = (batch["x"] * keep) @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    params = state.variables["params"]
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = OPTIMIZER.update(grads, state.opt_state, params)
    new = {"params": optax.apply_updates(params, updates)}
    return state._replace(step=state.step + 1, variables=new, opt_state=opt_state), {"loss": value}


def _strip(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def _assert_same_state(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _on_interval(step, state, step_metrics):
    return {"first_loss": step_metrics["loss"][0], "norm": jnp.sum(state.variables["params"]["w"] ** 2)}


@pytest.fixture(scope="module")
def straight():
    return train.loop(
        step_fn, initial_state(), batch_at, 10, interval=4, on_interval=_on_interval, progress=False
    )


@pytest.mark.parametrize("stop", [1, 4, 6, 9])
def test_stopped_anywhere_then_resumed_equals_straight(tmp_path, straight, stop):
    kwargs = dict(interval=4, on_interval=_on_interval, progress=False, checkpoint_dir=tmp_path / "ckpt")
    logger = train.MetricLogger(tmp_path / "log.jsonl", tensorboard_dir=False)
    train.stop_at("train", stop)
    try:
        with pytest.raises(train.Preempted, match=f"'train' stopped after step {stop}") as info:
            train.loop(step_fn, initial_state(), batch_at, 10, logger=logger, **kwargs)
    finally:
        train.clear_stop()
    assert info.value.step == stop and Checkpointer(tmp_path / "ckpt").latest_step() == stop
    state, history = train.loop(step_fn, initial_state(), batch_at, 10, logger=logger, **kwargs)
    _assert_same_state(state, straight[0])
    assert _strip(history) == _strip(straight[1])  # the unfinished interval's metrics were saved too
    assert [r["step"] for r in history] == [4, 8, 10]
    logged = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [4, 8, 10]  # no record written twice
    again, _ = train.loop(step_fn, initial_state(), batch_at, 10, **kwargs)  # finished: returns at once
    _assert_same_state(again, straight[0])


def test_records_hold_interval_means_and_on_interval_fields(straight):
    history = straight[1]
    assert [r["phase"] for r in history] == ["train"] * 3
    # Recompute the interval means by hand from a step-by-step run.
    state, losses = initial_state(), []
    for i in range(10):
        state, metrics = step_fn(state, batch_at(i))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(
        [r["loss"] for r in history],
        [np.mean(losses[0:4]), np.mean(losses[4:8]), np.mean(losses[8:10])],
        rtol=1e-6,
    )
    assert [r["first_loss"] for r in history] == pytest.approx([losses[0], losses[4], losses[8]])
    _assert_same_state(state, straight[0])


def test_stop_without_checkpoint_dir_says_progress_is_lost():
    train.stop_at("nameless", 2)
    try:
        with pytest.raises(train.Preempted, match="progress lost"):
            train.loop(step_fn, initial_state(), batch_at, 5, name="nameless", progress=False)
    finally:
        train.clear_stop()


def test_a_longer_runs_checkpoint_is_refused(tmp_path):
    train.loop(step_fn, initial_state(), batch_at, 6, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"past num_steps=4.*longer run"):
        train.loop(step_fn, initial_state(), batch_at, 4, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_steps": -1}, "num_steps"), ({"interval": 0}, "interval")]
)
def test_bad_counts_are_named(kwargs, match):
    arguments = {"num_steps": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        train.loop(
            step_fn, initial_state(), batch_at, arguments.pop("num_steps"), progress=False, **arguments
        )


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time, jax
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/.."]
    from test_loop import initial_state, batch_at, step_fn
    from unlearnx import train

    train.install_sigterm_handler()

    def slow(step):
        if step == 3:
            print("ready", flush=True)
            while not train.stop_requested("train", 0):  # SIGTERM arrives here; the loop stops after it
                time.sleep(0.05)
        return batch_at(step)

    try:
        train.loop(step_fn, initial_state(), slow, 10, checkpoint_dir=sys.argv[1], progress=False)
    except train.Preempted as stop:
        print("preempted", stop.step, flush=True)
        sys.exit(3)
    """
)


@pytest.mark.slow
def test_sigterm_saves_then_resume_finishes_exactly(tmp_path, straight):
    process = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path), os.path.dirname(__file__)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 3 and out.strip() == "preempted 4"
    assert Checkpointer(tmp_path).latest_step() == 4
    state, _ = train.loop(step_fn, initial_state(), batch_at, 10, checkpoint_dir=tmp_path, progress=False)
    _assert_same_state(state, train.loop(step_fn, initial_state(), batch_at, 10, progress=False)[0])


EIGHT_SCRIPT = textwrap.dedent(
    """
    import sys, jax, numpy as np
    from jax.sharding import PartitionSpec as P
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/.."]
    from test_loop import initial_state, batch_at, step_fn
    from unlearnx import train

    assert jax.device_count() == 8
    seen = []

    def checked(state, batch):
        if not isinstance(batch["x"], jax.core.Tracer):  # with shard_params the step is traced again
            seen.append(batch["x"].sharding.spec)
        return step_fn(state, batch)

    out = {}
    for shard in (False, True):
        state, _ = train.loop(checked, initial_state(), batch_at, 10, shard_params=shard, progress=False)
        kernel = state.variables["params"]["w"]
        out[f"w_{shard}"] = np.asarray(kernel)
        out[f"replicated_{shard}"] = np.asarray(kernel.sharding.is_fully_replicated)
    assert len(seen) == 10 and all(spec == P("data") for spec in seen), seen
    np.savez(sys.argv[1], **out)
    """
)


@pytest.mark.slow
def test_eight_devices_shard_the_batch_and_match_one(tmp_path, straight):
    output = tmp_path / "eight.npz"
    run_on_eight_devices(EIGHT_SCRIPT, output, os.path.dirname(__file__))
    eight = np.load(output)
    one = np.asarray(straight[0].variables["params"]["w"])
    assert bool(eight["replicated_False"]) and not bool(eight["replicated_True"])  # params split 8 ways
    for shard in (False, True):
        np.testing.assert_allclose(eight[f"w_{shard}"], one, rtol=1e-5, atol=1e-6)


def test_a_corrupted_checkpoint_falls_back_and_still_ends_exactly(tmp_path, straight):
    from unlearnx.checkpoint import interval_policy

    kwargs = dict(interval=2, on_interval=_on_interval, progress=False, checkpoint_dir=tmp_path)
    train.stop_at("train", 6)
    try:
        with pytest.raises(train.Preempted):
            train.loop(
                step_fn, initial_state(), batch_at, 10, checkpoint_policy=interval_policy(steps=2), **kwargs
            )
    finally:
        train.clear_stop()
    data_file = sorted(p for p in (tmp_path / "6").rglob("*") if p.is_file() and p.parent.name == "d")[0]
    data_file.write_bytes(b"\0" + data_file.read_bytes()[1:])
    with pytest.warns(RuntimeWarning, match="step 6 .* damaged"):
        state, history = train.loop(step_fn, initial_state(), batch_at, 10, **kwargs)
    _assert_same_state(state, straight[0])
    assert [r["step"] for r in history] == [2, 4, 6, 8, 10]


def test_short_batches_are_cut_to_the_device_count_with_one_warning():
    from unlearnx.train._loop import _even

    warned = []
    batch = {"x": np.arange(26).reshape(13, 2), "y": np.arange(13)}
    with pytest.warns(RuntimeWarning, match="batch of 13 examples does not split over 8 devices; its last 5"):
        cut = _even(batch, 8, 0, "train", warned)
    np.testing.assert_array_equal(cut["y"], np.arange(8))
    again = _even({"x": np.zeros((2, 11))}, 8, 1, "train", warned)  # axis 1, no second warning
    assert again["x"].shape == (2, 8)
    assert _even(batch, 1, 0, "train", []) is batch  # one device: nothing is ever dropped
    with pytest.raises(ValueError, match="batch of 3 examples cannot be split over 8 devices"):
        _even({"x": np.zeros(3)}, 8, 0, "train", [])


def test_a_done_record_stops_early_and_a_rerun_returns_it(tmp_path, straight):
    def until_step_4(step, state, step_metrics):
        return {"done": step >= 4}

    kwargs = dict(interval=2, on_interval=until_step_4, progress=False, checkpoint_dir=tmp_path)
    state, history = train.loop(step_fn, initial_state(), batch_at, 10, **kwargs)
    assert [r["step"] for r in history] == [2, 4] and int(state.step) == 4
    assert Checkpointer(tmp_path).latest_step() == 4
    again, again_history = train.loop(step_fn, initial_state(), batch_at, 10, **kwargs)
    _assert_same_state(again, state)
    assert _strip(again_history) == _strip(history)
    four, _ = train.loop(step_fn, initial_state(), batch_at, 4, progress=False)
    _assert_same_state(state, four)  # the same state as a 4-step run

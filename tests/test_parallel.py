"""unlearnx.parallel on the default single device (the 8-device case is in test_sharding.py)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from unlearnx import parallel


def test_mesh_shard_and_replicate_round_trip():
    mesh = parallel.data_mesh()
    assert mesh.axis_names == (parallel.DATA_AXIS,) and mesh.devices.size == jax.device_count()
    batch = {"x": np.arange(12.0).reshape(6, 2), "y": np.arange(6)}
    placed = parallel.shard_batch(parallel.process_share(batch), mesh)
    assert placed["x"].sharding.spec in (PartitionSpec(parallel.DATA_AXIS), PartitionSpec())
    np.testing.assert_array_equal(placed["x"], batch["x"])
    replicated = parallel.replicate({"w": np.ones(3)}, mesh)
    assert replicated["w"].sharding.is_fully_replicated
    assert parallel.is_main_process()
    assert parallel.initialize_distributed() is False  # no multi-host environment here


def test_ragged_batch_is_rejected():
    with pytest.raises(ValueError, match="disagree on the leading"):
        parallel.shard_batch({"x": np.zeros((4, 2)), "y": np.zeros(3)}, parallel.data_mesh())


def test_shard_batch_along_another_axis_and_param_shardings():
    mesh = parallel.data_mesh()
    batch = {"x": np.arange(24.0).reshape(2, 6, 2)}  # [runs, examples, features]
    placed = parallel.shard_batch(parallel.process_share(batch, 1), mesh, axis=1)
    np.testing.assert_array_equal(placed["x"], batch["x"])
    assert placed["x"].sharding.spec in (PartitionSpec(None, parallel.DATA_AXIS), PartitionSpec())
    shardings = parallel.param_shardings({"w": np.zeros((3, 8)), "s": np.zeros(())}, mesh)
    assert shardings["s"].spec == PartitionSpec()  # a scalar has no dimension to split
    if jax.device_count() == 1:
        assert shardings["w"].spec == PartitionSpec()


PACED_LOOPS = """
import jax, jax.numpy as jnp, numpy as np
from unlearnx import fisher, parallel, train

x = np.ones((128, 256), np.float32)
loss = lambda w, batch: jnp.mean(jnp.tanh(batch["x"] @ w) ** 2, axis=1)


@jax.jit
def step(w, batch):
    return w - 0.01 * jax.grad(lambda w: jnp.mean(loss(w, batch)))(w), {}


w, _ = train.loop(step, jnp.full((256, 256), 1e-3), lambda i: {"x": x}, 300, interval=300, progress=False)
mesh = parallel.data_mesh()
importance = fisher.diagonal(loss, w, ({"x": x} for _ in range(300)), estimator="batch_sq", mesh=mesh)
assert jax.device_count() == 8 and np.isfinite(np.asarray(importance)).all()
"""


def test_long_loops_on_eight_cpu_devices_do_not_deadlock():
    # 300 sharded steps (and 300 importance batches) dispatched with no host read in between: XLA:CPU's
    # 8-thread device pool deadlocks once 32 such programs are queued per device (within ~50 steps here,
    # see parallel.throttle); the loops wait every 8. Short collective timeouts turn a deadlock into an
    # abort within a minute instead of a hang.
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8 "
        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=20 "
        "--xla_cpu_collective_call_terminate_timeout_seconds=60",
    )
    env.pop("PJRT_NPROC", None)
    command = [sys.executable, "-c", PACED_LOOPS]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_throttle_waits_every_nth_call_only():
    class Probe:
        waited = 0

        def block_until_ready(self):
            Probe.waited += 1
            return self

    probe = Probe()
    for count in range(1, 20):
        assert parallel.throttle(probe, count, every=8) is probe
    assert Probe.waited == 2  # counts 8 and 16
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        parallel.throttle(probe, 1, every=0)

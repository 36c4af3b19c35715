"""unlearnx.parallel on the default single device (the 8-device case is in test_sharding.py)."""

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

"""Eight simulated CPU devices give the same importances and SSD edit as one device.

The 8-device half runs in a subprocess, because ``XLA_FLAGS`` must be set before JAX starts.
"""

import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import run_on_eight_devices

from unlearnx import fisher, unlearn

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[2])
    from test_sharding import problem, loss_fn
    from unlearnx import fisher, parallel, unlearn

    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.data_mesh()
    params, batches, forget, full = problem()
    params = parallel.replicate(params, mesh)
    sharded = [parallel.shard_batch(b, mesh) for b in batches]
    assert sharded[0]["x"].sharding.spec == P("data")
    out = {}
    for estimator in fisher.ESTIMATORS:
        result = fisher.diagonal(loss_fn, params, sharded, estimator=estimator, chunk_size=3)
        out[f"jit_{estimator}"] = np.asarray(result["w"])

        def per_device(p, bs, estimator=estimator):
            return fisher.diagonal(loss_fn, p, bs, estimator=estimator, axis_name="data")

        mapped = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
        out[f"shard_map_{estimator}"] = np.asarray(mapped(params, batches)["w"])
    kernel_sharding = NamedSharding(mesh, P("data"))
    place = lambda t: jax.tree.map(lambda a: jax.device_put(a, kernel_sharding), t)
    edited = jax.jit(lambda p, f, d: unlearn.ssd(p, f, d, alpha=1.5, lam=1.0))(
        place(params), place(forget), place(full))
    assert len(edited["w"].sharding.device_set) == 8
    out["ssd"] = np.asarray(edited["w"])
    np.savez(sys.argv[1], **out)
    """
)


def problem():
    """Softmax regression with 16 output columns (divisible by 8) and three batches of 16."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(16, 6)) * 0.3, jnp.float32)}
    batches = [
        {"x": jnp.asarray(rng.normal(size=(16, 16)), jnp.float32), "y": jnp.asarray(rng.integers(0, 6, 16))}
        for _ in range(3)
    ]
    forget = {"w": jnp.asarray(rng.exponential(size=(16, 6)), jnp.float32)}
    full = {"w": jnp.asarray(rng.exponential(size=(16, 6)), jnp.float32)}
    return params, batches, forget, full


def loss_fn(params, batch):
    log_probs = jax.nn.log_softmax(batch["x"] @ params["w"])
    return -jnp.take_along_axis(log_probs, batch["y"][:, None], axis=1)[:, 0]


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
    output = tmp_path / "eight.npz"
    run_on_eight_devices(SCRIPT, output, os.path.dirname(__file__))
    eight = np.load(output)
    params, batches, forget, full = problem()
    for estimator in fisher.ESTIMATORS:
        one = np.asarray(fisher.diagonal(loss_fn, params, batches, estimator=estimator)["w"])
        np.testing.assert_allclose(eight[f"jit_{estimator}"], one, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(eight[f"shard_map_{estimator}"], one, rtol=1e-5, atol=1e-8)
    one_ssd = np.asarray(unlearn.ssd(params, forget, full, alpha=1.5, lam=1.0)["w"])
    np.testing.assert_array_equal(eight["ssd"], one_ssd)

"""RECE on 8 simulated CPU devices (params replicated, or kernels sharded over their output axis) gives the
single-device edit. The 8-device half runs in a subprocess: ``XLA_FLAGS`` must be set before JAX starts."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from unlearnx import erase

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[2])
    from test_sharding import problem
    from unlearnx import erase, parallel

    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.data_mesh()
    params, concept, guide, preserve = problem()
    run = jax.jit(lambda p, c, g, q: erase.rece(p, c, g, q, epochs=2))
    out = {}
    replicated, history = run(parallel.replicate(params, mesh), concept, guide, preserve)
    out["replicated_k"] = np.asarray(replicated["a"]["attn2"]["to_k"]["kernel"])
    out["replicated_v"] = np.asarray(replicated["b"]["attn2"]["to_v"]["kernel"])
    out["replicated_change"] = np.asarray(history["change"])
    columns = NamedSharding(mesh, P(None, "data"))
    sharded_params = jax.tree.map(lambda a: jax.device_put(a, columns), params)
    sharded, history = run(sharded_params, concept, guide, preserve)
    kernel = sharded["a"]["attn2"]["to_k"]["kernel"]
    assert len(kernel.sharding.device_set) == 8, kernel.sharding
    out["sharded_k"] = np.asarray(kernel)
    out["sharded_v"] = np.asarray(sharded["b"]["attn2"]["to_v"]["kernel"])
    out["sharded_change"] = np.asarray(history["change"])
    np.savez(sys.argv[1], **out)
    """
)


def problem():
    """Two cross-attention blocks (output widths divisible by 8) and well-conditioned random keys."""
    rng = np.random.default_rng(0)
    d_in = 32

    def kv(width):
        return {
            name: {"kernel": (rng.normal(size=(d_in, width)) / np.sqrt(d_in)).astype(np.float32)}
            for name in ("to_k", "to_v")
        }

    params = {"a": {"attn2": kv(16)}, "b": {"attn2": kv(40)}}
    concept, guide, preserve = (rng.normal(size=(7, d_in)).astype(np.float32) for _ in range(3))
    return params, concept, guide, preserve


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
    output = tmp_path / "eight.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    here = os.path.dirname(__file__)
    subprocess.run([sys.executable, "-c", SCRIPT, str(output), here], env=env, check=True, timeout=300)
    eight = np.load(output)
    params, concept, guide, preserve = problem()
    one, history = jax.jit(lambda p, c, g, q: erase.rece(p, c, g, q, epochs=2))(
        params, concept, guide, preserve
    )
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
    for layout in ("replicated", "sharded"):
        assert rel(eight[f"{layout}_k"], np.asarray(one["a"]["attn2"]["to_k"]["kernel"])) <= 1e-5
        assert rel(eight[f"{layout}_v"], np.asarray(one["b"]["attn2"]["to_v"]["kernel"])) <= 1e-5
        np.testing.assert_allclose(eight[f"{layout}_change"], history["change"], rtol=1e-5)
    assert history["change"][0] > 0.05  # the edit is not trivially small

"""GraNet masks on 8 simulated CPU devices (batch sharded, params replicated) equal the single-device ones,
with the step plain and wrapped by ``sparse.branch_on_mask_update``.

The 8-device half runs in a subprocess, because ``XLA_FLAGS`` must be set before JAX starts.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearnx import sparse

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_sharding import run
    from unlearnx import parallel

    assert jax.device_count() == 8
    mesh = parallel.data_mesh()
    arrays = {}
    for wrap in (False, True):
        masks, params = run(
            lambda batch: parallel.shard_batch(batch, mesh), lambda tree: parallel.replicate(tree, mesh), wrap
        )
        arrays |= {f"{wrap}_{k}": v for k, v in masks.items()}
        arrays |= {f"{wrap}_param_{k}": v for k, v in params.items()}
    np.savez(sys.argv[1], **arrays)
    """
)


def run(place_batch, place_params, wrap=False):
    """A few GraNet steps on a fixed problem; returns the final masks and kernels as host arrays."""
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(10, 24)).astype(np.float32),
        "w2": rng.normal(size=(24, 4)).astype(np.float32),
    }
    x = rng.normal(size=(96, 10)).astype(np.float32)
    y = rng.integers(0, 4, 96)
    opt = sparse.granet(
        optax.sgd(0.05, momentum=0.9),
        final_sparsity=0.9,
        begin_step=0,
        end_step=12,
        frequency=3,
        total_steps=18,
    )
    params = place_params(params)
    state = place_params(opt.init(params))

    def loss(p, batch):
        logits = jnp.tanh(batch["x"] @ p["w1"]) @ p["w2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], axis=1))

    def step(p, s, batch):
        updates, s = opt.update(jax.grad(loss)(p, batch), s, p)
        return optax.apply_updates(p, updates), s

    step = jax.jit(sparse.branch_on_mask_update(step) if wrap else step)

    for t in range(18):
        rows = (np.arange(48) + 48 * t) % 96
        params, state = step(params, state, place_batch({"x": x[rows], "y": y[rows]}))
    return {k: np.asarray(v) for k, v in sparse.masks(state).items()}, {
        k: np.asarray(v) for k, v in params.items()
    }


@pytest.mark.slow
def test_masks_match_on_eight_devices(tmp_path):
    output = tmp_path / "eight.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(output), os.path.dirname(__file__)],
        env=env,
        check=True,
        timeout=300,
    )
    eight = np.load(output)
    masks, params = run(lambda batch: batch, lambda tree: tree)
    for wrap in (False, True):
        for name in ("w1", "w2"):
            np.testing.assert_array_equal(eight[f"{wrap}_{name}"], masks[name])
            np.testing.assert_allclose(eight[f"{wrap}_param_{name}"], params[name], rtol=1e-4, atol=1e-6)
    for name in ("w1", "w2"):  # on 8 devices the wrapped step is the plain one bit for bit
        np.testing.assert_array_equal(eight[f"True_param_{name}"], eight[f"False_param_{name}"])
    assert sum(m.sum() for m in masks.values()) == round(0.1 * (240 + 96))

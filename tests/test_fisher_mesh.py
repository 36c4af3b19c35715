"""fisher.diagonal(mesh=...): every batch padded with zero-weight rows to a multiple of the devices and split
over them (a short last batch is never replicated work), with the importance of the unsharded call."""

import json
import textwrap

import numpy as np
import pytest
from problems import run_on_eight_devices

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from unlearnx import fisher, parallel

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    x = rng.normal(size=(29, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=29)

    def loss(p, batch):
        logits = batch["x"] @ p["w"] + p["b"]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], axis=1)[:, 0]

    batches = [{"x": x[i : i + 12], "y": y[i : i + 12]} for i in range(0, 29, 12)]  # 12, 12, 5 rows
    seen = []
    original = parallel.shard_batch

    def recording(batch, mesh, axis=0):
        placed = original(batch, mesh, axis)
        leaf = jax.tree.leaves(placed)[0]
        seen.append([leaf.shape[0], not leaf.sharding.is_fully_replicated])
        return placed

    parallel.shard_batch = recording
    out = {}
    for estimator in ("empirical", "batch_sq", "batch_abs"):
        plain = fisher.diagonal(loss, params, batches, estimator=estimator)
        meshed = fisher.diagonal(loss, params, batches, estimator=estimator, mesh=parallel.data_mesh())
        out[estimator] = [np.asarray(plain["w"]).tolist(), np.asarray(meshed["w"]).tolist()]
    out["seen"] = seen
    json.dump(out, open(sys.argv[1], "w"))
    """
)


@pytest.mark.slow
def test_mesh_pads_and_splits_every_batch_and_keeps_the_importance(tmp_path):
    result = tmp_path / "out.json"
    run_on_eight_devices(SCRIPT, result)
    out = json.loads(result.read_text())
    for estimator in ("empirical", "batch_sq", "batch_abs"):
        plain, meshed = out[estimator]
        np.testing.assert_allclose(meshed, plain, rtol=2e-5, atol=1e-7, err_msg=estimator)
    # Batches of 12, 12, 5 rows over 8 devices: padded to 16 rows each and split, never replicated.
    assert out["seen"] == [[16, True]] * 9

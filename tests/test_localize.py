"""Localised unlearning: SSD's selection I_f > α·I_D and the per-element masked optax transform."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import run_on_eight_devices, tree_flavours

from unlearnx.unlearn import localize, objectives


def importances(seed=0):
    rng = np.random.default_rng(seed)
    forget = (rng.exponential(size=(4, 3)), rng.exponential(size=3))
    full = (rng.exponential(size=(4, 3)), rng.exponential(size=3))
    full[0][0, 0] = 0.0  # I_D = 0 with I_f > 0: selected (ratio +inf)
    forget[1][1] = 0.0  # I_f = 0: never selected
    return [tuple(np.asarray(a, np.float32) for a in pair) for pair in (forget, full)]


@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_selection_matches_numpy(flavour, alpha):
    (fw, fb), (dw, db) = importances()
    forget, unpack = tree_flavours(jnp.asarray(fw), jnp.asarray(fb))[flavour]
    full, _ = tree_flavours(jnp.asarray(dw), jnp.asarray(db))[flavour]
    for fn in (localize.selection, jax.jit(localize.selection, static_argnames="alpha")):
        chosen = fn(forget, full, alpha=alpha)
        assert jax.tree.structure(chosen) == jax.tree.structure(forget)
        for got, f, d in zip(unpack(chosen), (fw, fb), (dw, db), strict=True):
            np.testing.assert_array_equal(
                np.asarray(got), f.astype(np.float64) > alpha * d.astype(np.float64)
            )
    assert localize.selected_fraction(localize.selection(forget, full, alpha=alpha)) == pytest.approx(
        (np.sum(fw > alpha * dw) + np.sum(fb > alpha * db)) / 15
    )


def test_selection_respects_where():
    (fw, fb), (dw, db) = importances()
    forget, full = {"w": fw, "b": fb}, {"w": dw, "b": db}
    chosen = localize.selection(forget, full, alpha=0.5, where="w")
    assert not np.any(chosen["b"])
    np.testing.assert_array_equal(chosen["w"], fw > 0.5 * dw)


@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
def test_masked_updates_zero_outside_the_selection(flavour):
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    gw, gb = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    mw, mb = rng.random((4, 3)) < 0.5, np.array([True, False, True])
    params, unpack = tree_flavours(jnp.asarray(w), jnp.asarray(b))[flavour]
    grads, _ = tree_flavours(jnp.asarray(gw), jnp.asarray(gb))[flavour]
    mask, _ = tree_flavours(jnp.asarray(mw), jnp.asarray(mb))[flavour]
    optimizer = localize.localized(optax.sgd(0.1), mask)
    state = optimizer.init(params)
    updates, _ = jax.jit(optimizer.update)(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for got, g, m in zip(unpack(updates), (gw, gb), (mw, mb), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.where(m, -0.1 * g.astype(np.float64), 0.0), rtol=1e-6)


def test_localized_objective_leaves_unselected_parameters_bit_identical():
    """Ten Adam + weight-decay steps of NPO on a linear LM: unselected weights never move."""
    rng = np.random.default_rng(2)
    features = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 6, size=(3, 5)))
    mask = jnp.ones((3, 5))
    params = {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
    selected = {"w": jnp.asarray(rng.random((4, 6)) < 0.3)}
    ref = objectives.token_log_probs(features @ params["w"], targets)

    def loss(p):
        return objectives.npo(objectives.token_log_probs(features @ p["w"], targets), ref, mask, beta=0.1)

    optimizer = localize.localized(optax.adamw(1e-2, weight_decay=0.1), selected)
    state = optimizer.init(params)

    @jax.jit
    def step(p, s):
        updates, s = optimizer.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    new = params
    for _ in range(10):
        new, state = step(new, state)
    keep = ~np.asarray(selected["w"])
    np.testing.assert_array_equal(np.asarray(new["w"])[keep], np.asarray(params["w"])[keep])
    assert np.all(np.asarray(new["w"])[~keep] != np.asarray(params["w"])[~keep])
    assert float(loss(new)) < float(loss(params))


def test_bad_input_raises():
    (fw, fb), (dw, db) = importances()
    with pytest.raises(ValueError, match="full_importance"):
        localize.selection({"w": fw}, {"v": dw}, alpha=1.0)
    with pytest.raises(ValueError, match="forget_importance.*'w'"):
        localize.selection({"w": -fw}, {"w": dw}, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        localize.selection({"w": fw}, {"w": dw}, alpha=-1.0)
    transform = localize.masked_updates({"w": fw > 1})
    with pytest.raises(ValueError, match="'w'"):
        transform.init({"w": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="mask_tree"):
        transform.init({"v": jnp.zeros((4, 3))})


SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from unlearnx import parallel
    from unlearnx.unlearn import localize
    assert jax.device_count() == 8
    mesh = parallel.data_mesh()
    data = np.load(sys.argv[2])
    rows = NamedSharding(mesh, P("data"))
    place = lambda a: jax.device_put(jnp.asarray(a), rows)
    forget, full, params, grads = ({"w": place(data[k])} for k in ("f", "d", "p", "g"))
    chosen = jax.jit(localize.selection, static_argnames="alpha")(forget, full, alpha=1.5)
    assert len(chosen["w"].sharding.device_set) == 8
    optimizer = localize.localized(optax.adam(0.1), chosen)
    state = optimizer.init(params)
    updates, _ = jax.jit(optimizer.update)(grads, state, params)
    np.savez(sys.argv[1], chosen=np.asarray(chosen["w"]), updates=np.asarray(updates["w"]))
    """
)


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
    rng = np.random.default_rng(3)
    data = {k: rng.exponential(size=(16, 5)).astype(np.float32) for k in ("f", "d")}
    data.update({k: rng.normal(size=(16, 5)).astype(np.float32) for k in ("p", "g")})
    np.savez(tmp_path / "in.npz", **data)
    run_on_eight_devices(SCRIPT, tmp_path / "out.npz", tmp_path / "in.npz")
    eight = np.load(tmp_path / "out.npz")
    chosen = localize.selection({"w": data["f"]}, {"w": data["d"]}, alpha=1.5)
    optimizer = localize.localized(optax.adam(0.1), chosen)
    params = {"w": jnp.asarray(data["p"])}
    updates, _ = optimizer.update({"w": jnp.asarray(data["g"])}, optimizer.init(params), params)
    np.testing.assert_array_equal(eight["chosen"], chosen["w"])
    np.testing.assert_allclose(eight["updates"], updates["w"], rtol=1e-6)

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


def _shapes():
    return {"w": np.zeros((6, 5), np.float32), "b": np.zeros(4, np.float32), "s": np.zeros((), np.float32)}


@pytest.mark.parametrize("count", [0, 1, 17, 35])
def test_random_selection_keeps_exactly_count(count):
    tree = _shapes()  # 30 + 4 + 1 = 35 scalars
    for fn in (localize.random_selection, jax.jit(localize.random_selection)):
        chosen = fn(jax.random.key(3), tree, count)
        assert jax.tree.structure(chosen) == jax.tree.structure(tree)
        for got, leaf in zip(jax.tree.leaves(chosen), jax.tree.leaves(tree), strict=True):
            assert got.dtype == jnp.bool_ and got.shape == leaf.shape
        assert sum(int(np.sum(leaf)) for leaf in jax.tree.leaves(chosen)) == count
        assert localize.selected_count(chosen) == count


def test_random_selection_is_determined_by_the_key():
    tree = _shapes()
    a = localize.random_selection(jax.random.key(5), tree, 12)
    b = localize.random_selection(jax.random.key(5), tree, 12)
    c = localize.random_selection(jax.random.key(6), tree, 12)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, c)]
    assert not np.array_equal(*flat)
    # A traced count under jit gives the same selection as the concrete one.
    jitted = jax.jit(localize.random_selection)(jax.random.key(5), tree, jnp.int32(12))
    jax.tree.map(np.testing.assert_array_equal, a, jitted)


def test_random_selection_is_uniform():
    """Over 2,000 keys each of the 35 scalars is kept with probability count/35 = 2/7: every frequency
    within 5 binomial standard deviations, and the χ² of the per-position counts below the 99.9% point of
    χ²(34) (65.2); a selection biased towards one leaf or the first positions fails both."""
    tree, count, draws = _shapes(), 10, 2000
    keys = jax.random.split(jax.random.key(0), draws)
    chosen = jax.vmap(lambda k: localize.random_selection(k, tree, count))(keys)
    hits = np.concatenate([np.asarray(x).reshape(draws, -1) for x in jax.tree.leaves(chosen)], axis=1)
    assert (hits.sum(axis=1) == count).all()
    p = count / hits.shape[1]
    frequency = hits.mean(axis=0)
    assert np.abs(frequency - p).max() < 5 * np.sqrt(p * (1 - p) / draws)
    expected = draws * p
    chi2 = float(np.sum((hits.sum(axis=0) - expected) ** 2 / expected))
    assert chi2 < 65.2
    # Pairs are not favoured either: the 45 chosen pairs per draw spread over all 595 pairs.
    pairs = hits.T.astype(np.float64) @ hits.astype(np.float64) / draws
    off = pairs[~np.eye(hits.shape[1], dtype=bool)]
    q = count * (count - 1) / (35 * 34)
    assert np.abs(off - q).max() < 5 * np.sqrt(q * (1 - q) / draws)


def test_random_selection_respects_where_and_rejects_bad_counts():
    tree = _shapes()
    chosen = localize.random_selection(jax.random.key(1), tree, 30, where="w")
    assert bool(np.all(chosen["w"])) and not np.any(chosen["b"]) and not np.any(chosen["s"])
    batch_stats = {"params": {"w": np.zeros(3)}, "batch_stats": {"mean": np.zeros(3)}}
    chosen = localize.random_selection(jax.random.key(1), batch_stats, 3)
    assert np.all(chosen["params"]["w"]) and not np.any(chosen["batch_stats"]["mean"])
    for bad in (-1, 36, 2.5, True):
        with pytest.raises(ValueError, match="count"):
            localize.random_selection(jax.random.key(1), tree, bad)
    with pytest.raises(ValueError, match=r"\[0, 30\]"):
        localize.random_selection(jax.random.key(1), tree, 31, where="w")

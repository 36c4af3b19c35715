"""EWC, online EWC and SI: gradients by finite differences, SI against its closed form on a quadratic,
composition in optax chains, tree flavours and 8 simulated devices."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from problems import eight_device_env

from unlearnx import continual


def _trees(seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    fisher = {k: rng.exponential(size=v.shape) for k, v in params.items()}
    anchor = {k: rng.normal(size=v.shape) for k, v in params.items()}
    return params, fisher, anchor


def _as32(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def test_ewc_gradient_matches_finite_differences_of_the_penalty():
    params, fisher, anchor = _trees()
    strength = 3.0

    def penalty(flat):  # float64 NumPy: (λ/2) Σ F (θ − θ*)²
        theta = {"w": flat[:12].reshape(4, 3), "b": flat[12:]}
        return sum(0.5 * strength * np.sum(fisher[k] * (theta[k] - anchor[k]) ** 2) for k in theta)

    flat = np.concatenate([params["w"].ravel(), params["b"]])
    eps = 1e-6
    numeric = np.asarray(
        [(penalty(flat + eps * e) - penalty(flat - eps * e)) / (2 * eps) for e in np.eye(flat.size)]
    )
    opt = continual.ewc(_as32(fisher), _as32(anchor), strength)
    zero = jax.tree.map(jnp.zeros_like, _as32(params))
    added, _ = jax.jit(opt.update)(zero, opt.init(_as32(params)), _as32(params))
    np.testing.assert_allclose(
        np.concatenate([np.ravel(added["w"]), added["b"]]), numeric, rtol=1e-4, atol=1e-4
    )
    at_anchor, _ = opt.update(zero, opt.init(_as32(anchor)), _as32(anchor))
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(at_anchor))  # zero at the anchor


def test_ewc_sums_separate_tasks():
    params, fisher, anchor = _trees()
    _, fisher2, anchor2 = _trees(1)
    both = continual.ewc([_as32(fisher), _as32(fisher2)], [_as32(anchor), _as32(anchor2)], 2.0)
    zero = jax.tree.map(jnp.zeros_like, _as32(params))
    got, _ = both.update(zero, both.init(_as32(params)), _as32(params))
    want = jax.tree.map(
        lambda p, f, a, f2, a2: 2.0 * (f * (p - a) + f2 * (p - a2)), params, fisher, anchor, fisher2, anchor2
    )
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5)


def test_online_ewc_with_zero_decay_is_ewc_on_the_latest_task():
    params, fisher, anchor = _trees()
    _, fisher2, anchor2 = _trees(1)
    online = optax.chain(continual.online_ewc(2.0, decay=0.0), optax.sgd(0.1))
    state = online.init(_as32(params))
    state = continual.consolidate_online_ewc(state, _as32(fisher), _as32(anchor))
    state = continual.consolidate_online_ewc(state, _as32(fisher2), _as32(anchor2))
    plain = optax.chain(continual.ewc(_as32(fisher2), _as32(anchor2), 2.0), optax.sgd(0.1))
    grads = _as32(_trees(2)[0])
    got, _ = jax.jit(online.update)(grads, state, _as32(params))
    want, _ = plain.update(grads, plain.init(_as32(params)), _as32(params))
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    decayed = continual.consolidate_online_ewc(
        continual.consolidate_online_ewc(online.init(_as32(params)), _as32(fisher), _as32(anchor)),
        _as32(fisher2),
        _as32(anchor2),
    )
    # γ = 0 forgets the first Fisher
    assert np.allclose(optax.tree.get(decayed, "OnlineEwcState").fisher["w"], fisher2["w"])


def test_si_importance_matches_the_closed_form_on_a_quadratic():
    """L = ½ a (θ − b)², plain gradient descent with rate η from θ₀: gₜ = a(θ₀ − b)(1 − ηa)ᵗ, Δθₜ = −η gₜ,
    ω = Σₜ η gₜ² = η a²(θ₀ − b)² (1 − q^{2T}) / (1 − q²) with q = 1 − ηa, and Ω = ω / ((θ_T − θ₀)² + ξ)."""
    a, b, theta0, lr, steps, damping, strength = 2.0, 1.0, 3.0, 0.1, 25, 0.1, 0.5
    opt = optax.chain(continual.synaptic_intelligence(strength, damping), optax.sgd(lr))
    params = {"theta": jnp.asarray(theta0)}
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.update({"theta": a * (p["theta"] - b)}, s, p))
    for _ in range(steps):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    state = continual.consolidate_si(state, params)
    q = 1 - lr * a
    omega = lr * a**2 * (theta0 - b) ** 2 * (1 - q ** (2 * steps)) / (1 - q**2)
    total_change = (theta0 - b) * (q**steps - 1)
    importance = omega / (total_change**2 + damping)
    si_state = optax.tree.get(state, "SiState")
    np.testing.assert_allclose(float(si_state.importance["theta"]), importance, rtol=1e-4)
    assert float(si_state.anchor["theta"]) == pytest.approx(b + (theta0 - b) * q**steps, rel=1e-5)
    # The penalty now pulls toward the anchor: gradient 2cΩ(θ − θ̃) on top of the task gradient.
    probe = {"theta": jnp.asarray(5.0)}
    added, _ = opt.update({"theta": jnp.asarray(0.0)}, state, probe)
    want = -lr * 2 * strength * importance * (5.0 - float(si_state.anchor["theta"]))
    np.testing.assert_allclose(float(added["theta"]), want, rtol=1e-4)


@pytest.mark.parametrize("decay_penalty", [False, True])
def test_online_ewc_penalty_conventions_match_float64(decay_penalty):
    """Two consolidations with γ = 0.7: F̃ = γ F₁ + F₂; the gradient is λ F̃ (θ − θ*₂), or λ γ F̃ (θ − θ*₂)
    with ``decay_penalty`` (van de Ven's code, Schwarz et al.'s ½‖θ − θ*‖²_{γF̃})."""
    params, fisher, anchor = _trees()
    _, fisher2, anchor2 = _trees(1)
    strength, decay = 2.5, 0.7
    opt = continual.online_ewc(strength, decay=decay, decay_penalty=decay_penalty)
    state = opt.init(_as32(params))
    state = continual.consolidate_online_ewc(state, _as32(fisher), _as32(anchor))
    state = continual.consolidate_online_ewc(state, _as32(fisher2), _as32(anchor2))
    zero = jax.tree.map(jnp.zeros_like, _as32(params))
    got, _ = jax.jit(opt.update)(zero, state, _as32(params))
    scale = strength * decay if decay_penalty else strength
    for k in params:
        want = scale * (decay * fisher[k] + fisher2[k]) * (params[k] - anchor2[k])  # float64 NumPy
        np.testing.assert_allclose(np.asarray(got[k], np.float64), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="decay_penalty must be a Python bool"):
        continual.online_ewc(1.0, decay_penalty=1)


def _si_reference(path_gradient, *, a, b, theta0, lr, strength, damping, steps):
    """Float64 SI by hand on tasks L_k = ½ a_k (θ − b_k)² (one SGD loop per task), with ω accumulating
    −g·Δθ for g the task gradient or the task gradient plus the penalty's 2cΩ(θ − θ̃)."""
    theta, anchor = np.asarray(theta0, np.float64), np.asarray(theta0, np.float64)
    importance = np.zeros_like(theta)
    for a_k, b_k in zip(a, b, strict=True):
        omega = np.zeros_like(theta)
        for _ in range(steps):
            task = a_k * (theta - b_k)
            total = task + 2 * strength * importance * (theta - anchor)
            delta = -lr * total
            omega -= (total if path_gradient == "total" else task) * delta
            theta = theta + delta
        importance = importance + omega / ((theta - anchor) ** 2 + damping)
        anchor = theta
    return importance, theta


@pytest.mark.parametrize("path_gradient", ["task", "total"])
def test_si_path_gradient_conventions_match_float64(path_gradient):
    hyper = {"strength": 0.8, "damping": 0.1}
    a, b = np.array([2.0, 0.5]), np.array([[1.0, -2.0, 0.5], [-1.5, 1.0, 3.0]])
    theta0, lr, steps = np.array([3.0, 0.0, -1.0]), 0.1, 20
    opt = optax.chain(continual.synaptic_intelligence(**hyper, path_gradient=path_gradient), optax.sgd(lr))
    params = {"theta": jnp.asarray(theta0, jnp.float32)}
    state = opt.init(params)
    for a_k, b_k in zip(a, b, strict=True):
        step = jax.jit(lambda p, s, a_k=a_k, b_k=b_k: opt.update({"theta": a_k * (p["theta"] - b_k)}, s, p))
        for _ in range(steps):
            updates, state = step(params, state)
            params = optax.apply_updates(params, updates)
        state = continual.consolidate_si(state, params)
    want, theta = _si_reference(path_gradient, a=a, b=b, theta0=theta0, lr=lr, steps=steps, **hyper)
    np.testing.assert_allclose(np.asarray(params["theta"], np.float64), theta, rtol=1e-5)
    got = np.asarray(optax.tree.get(state, "SiState").importance["theta"], np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    flipped = {"task": "total", "total": "task"}[path_gradient]
    other, _ = _si_reference(flipped, a=a, b=b, theta0=theta0, lr=lr, steps=steps, **hyper)
    assert np.max(np.abs(other - want) / np.abs(want)) > 1e-2  # the conventions differ after task 1
    with pytest.raises(ValueError, match="path_gradient must be one of"):
        continual.synaptic_intelligence(1.0, path_gradient="penalty")


@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
def test_penalties_on_every_tree_flavour(flavour):
    params, fisher, anchor = (_as32(t) for t in _trees())
    wrap = {
        "linen": lambda t: {"params": t},
        "nnx": lambda t: nnx.State(jax.tree.map(nnx.Param, t)),
        "plain": lambda t: t,
    }[flavour]
    for opt in (
        optax.chain(continual.ewc(wrap(fisher), wrap(anchor), 1.5), optax.adam(1e-2)),
        optax.chain(continual.online_ewc(1.5, decay=0.9), optax.adam(1e-2)),
        optax.chain(continual.synaptic_intelligence(0.1), optax.adam(1e-2)),
    ):
        tree = wrap(params)
        state = opt.init(tree)
        updates, state = jax.jit(opt.update)(wrap(fisher), state, tree)
        assert jax.tree.structure(updates) == jax.tree.structure(tree)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(updates))


def test_penalty_errors():
    params, fisher, anchor = (_as32(t) for t in _trees())
    with pytest.raises(ValueError, match="strength must be a finite number >= 0"):
        continual.ewc(fisher, anchor, -1.0)
    with pytest.raises(TypeError, match="strength"):  # traced: the library's rule, never skipped under jit
        jax.jit(lambda s: continual.online_ewc(s))(1.0)
    with pytest.raises(ValueError, match="2 Fisher trees but 1 anchors"):
        continual.ewc([fisher, fisher], [anchor], 1.0)
    with pytest.raises(ValueError, match="decay must be"):
        continual.online_ewc(1.0, decay=1.5)
    with pytest.raises(ValueError, match="damping must be"):
        continual.synaptic_intelligence(1.0, damping=0.0)
    negative = jax.tree.map(lambda f: -f, fisher)  # an anti-penalty: pushes away from the anchor
    with pytest.raises(ValueError, match=r"fisher\[0\].*finite and non-negative"):
        continual.ewc(negative, anchor, 1.0)
    nan = jax.tree.map(lambda f: f * np.nan, fisher)
    with pytest.raises(ValueError, match="fisher.*finite and non-negative"):
        continual.consolidate_online_ewc(continual.online_ewc(1.0).init(params), nan, params)
    opt = continual.ewc(fisher, anchor, 1.0)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(fisher, opt.init(params))
    with pytest.raises(ValueError, match="exactly one OnlineEwcState"):
        continual.consolidate_online_ewc(optax.sgd(0.1).init(params), fisher, params)


def test_consolidation_finds_the_penalty_in_any_chain_and_keeps_the_rest():
    params, fisher, anchor = (_as32(t) for t in _trees())
    online = continual.online_ewc(2.0, decay=0.5)
    si = continual.synaptic_intelligence(0.1)
    layouts = {
        "alone": online,
        "chain": optax.chain(online, optax.adam(1e-2)),
        "named": optax.named_chain(("penalty", online), ("adam", optax.adam(1e-2))),
        "nested": optax.chain(
            optax.named_chain(("clip", optax.clip(1.0)), ("penalty", online)), optax.sgd(0.1)
        ),
        "with si": optax.named_chain(("ewc", online), ("si", si), ("adam", optax.adam(1e-2))),
    }
    for layout, opt in layouts.items():
        state = jax.tree.map(lambda a: a + 1, opt.init(params))  # non-initial values elsewhere
        new = continual.consolidate_online_ewc(state, fisher, anchor)
        assert jax.tree.structure(new) == jax.tree.structure(state), layout
        got = optax.tree.get(new, "OnlineEwcState")
        before = optax.tree.get(state, "OnlineEwcState")
        for k in params:  # F̃ ← γ F̃ + F, θ* ← θ
            np.testing.assert_allclose(got.fisher[k], before.decay * before.fisher[k] + fisher[k], rtol=1e-6)
            np.testing.assert_array_equal(got.anchor[k], anchor[k])
        restored = optax.tree.set(new, OnlineEwcState=before)  # everything else is unchanged
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(a, b)
    named = layouts["with si"]
    state = named.init(params)
    consolidated = continual.consolidate_si(state, anchor)
    for name in ("ewc", "adam"):
        for a, b in zip(jax.tree.leaves(consolidated[name]), jax.tree.leaves(state[name]), strict=True):
            np.testing.assert_array_equal(a, b)
    assert optax.tree.get(consolidated, "SiState").anchor is anchor
    assert isinstance(consolidated, type(state))  # an OrderedDict stays one (same treedef for jit)
    twice = optax.chain(continual.online_ewc(1.0), continual.online_ewc(1.0))
    with pytest.raises(ValueError, match="exactly one OnlineEwcState in the optimizer state, found several"):
        continual.consolidate_online_ewc(twice.init(params), fisher, params)
    with pytest.raises(ValueError, match="exactly one SiState in the optimizer state, found none"):
        continual.consolidate_si(optax.adam(1e-2).init(params), params)


SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from unlearnx import continual, parallel
    assert jax.device_count() == 8
    mesh = parallel.data_mesh()
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    fisher = {"w": jnp.asarray(rng.exponential(size=(16, 8)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    shard = lambda t: jax.device_put(t, NamedSharding(mesh, P("data")))
    opt = optax.chain(continual.ewc(shard(fisher), shard(fisher), 2.0), continual.synaptic_intelligence(0.3),
                      optax.adam(1e-2))
    state = opt.init(shard(params))
    step = jax.jit(opt.update)
    p = shard(params)
    for _ in range(3):
        updates, state = step(shard(grads), state, p)
        p = optax.apply_updates(p, updates)
    assert len(p["w"].sharding.device_set) == 8
    np.save(sys.argv[1], np.asarray(p["w"]))
    """
)


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
    output = tmp_path / "w.npy"
    env = eight_device_env()
    subprocess.run([sys.executable, "-c", SCRIPT, str(output)], env=env, check=True, timeout=300)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    fisher = {"w": jnp.asarray(rng.exponential(size=(16, 8)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    opt = optax.chain(
        continual.ewc(fisher, fisher, 2.0), continual.synaptic_intelligence(0.3), optax.adam(1e-2)
    )
    state, p = opt.init(params), params
    for _ in range(3):
        updates, state = jax.jit(opt.update)(grads, state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(np.load(output), p["w"], rtol=1e-6, atol=1e-7)

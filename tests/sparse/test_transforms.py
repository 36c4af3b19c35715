"""GraNet and its baselines as optax transforms: exact sparsity after every step, masked momentum,
regrowth by gradient magnitude, composition, tree flavours, checkpoints and clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from unlearnx import sparse
from unlearnx.checkpoint import Checkpointer


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "Dense_0": {"kernel": jnp.asarray(rng.normal(size=(12, 16)), jnp.float32), "bias": jnp.zeros(16)},
        "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(16, 3)), jnp.float32), "bias": jnp.zeros(3)},
    }
    x = jnp.asarray(rng.normal(size=(64, 12)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 64))
    return params, x, y


def _loss(params, x, y):
    hidden = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    logits = hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _train(opt, params, x, y, steps, every=None):
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch_x, batch_y):
        grads = jax.grad(_loss)(params, batch_x, batch_y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, grads

    history = []
    for t in range(steps):
        rows = (np.arange(16) + 16 * t) % 64
        new_params, new_state, grads = step(params, state, x[rows], y[rows])
        if every is not None:
            every(t + 1, params, state, new_params, new_state, grads)
        params, state = new_params, new_state
    return params, state, history


KERNELS = ("Dense_0", "Dense_1")
N_KERNEL = 12 * 16 + 16 * 3


def _active(tree):
    return sum(int(np.sum(np.asarray(tree[k]["kernel"]))) for k in KERNELS)


def _trace(state):
    inner = state.inner_state
    return inner[1][0].trace if isinstance(inner, tuple) else inner.trace


def test_granet_exact_schedule_zero_weights_and_momentum_after_every_step():
    params, x, y = _problem()
    inner = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9, nesterov=True))
    kwargs = dict(final_sparsity=0.9, begin_step=0, end_step=40, frequency=5, total_steps=60)
    opt = sparse.granet(inner, **kwargs)

    def check(step, old_params, old_state, new_params, new_state, grads):
        masks = sparse.masks(new_state)
        schedule = float(
            sparse.cubic_sparsity(step, initial=0.0, final=0.9, begin_step=0, end_step=40, frequency=5)
        )
        if step % 5 == 0:
            assert _active(masks) == round((1 - schedule) * N_KERNEL), step
        for layer in KERNELS:
            m = np.asarray(masks[layer]["kernel"])
            assert np.all(np.asarray(new_params[layer]["kernel"])[~m] == 0.0)  # exactly zero, despite decay
            assert np.all(np.asarray(_trace(new_state)[layer]["kernel"])[~m] == 0.0)  # and zero momentum
            assert np.all(np.asarray(masks[layer]["bias"]))  # biases stay dense
            newly = m & ~np.asarray(sparse.masks(old_state)[layer]["kernel"])
            was_zero = np.asarray(old_params[layer]["kernel"]) == 0
            # A regrown weight that was inactive before the step starts at exactly 0.
            assert np.all(np.asarray(new_params[layer]["kernel"])[newly & was_zero] == 0.0)
        # Zero-cost regrowth needs the dense gradient: it is non-zero at masked positions.
        if step == 12:
            g = np.asarray(grads["Dense_0"]["kernel"])[
                ~np.asarray(sparse.masks(old_state)["Dense_0"]["kernel"])
            ]
            assert np.any(g != 0)

    _, state, _ = _train(opt, params, x, y, 60, every=check)
    assert _active(sparse.masks(state)) == round(0.1 * N_KERNEL)


def test_masks_keep_changing_after_pruning_ends():
    params, x, y = _problem()
    opt = sparse.granet(
        optax.sgd(0.1, momentum=0.9),
        final_sparsity=0.8,
        begin_step=0,
        end_step=20,
        frequency=5,
        total_steps=60,
    )
    snapshots = {}

    def record(step, *args):
        snapshots[step] = np.asarray(sparse.masks(args[3])["Dense_0"]["kernel"])

    _train(opt, params, x, y, 60, every=record)
    assert not np.array_equal(snapshots[30], snapshots[50])  # regeneration continues at constant sparsity
    assert snapshots[30].sum() == snapshots[50].sum()


def _one_event(opt, params, masks, grads):
    """Applies one update at step 1 from the given masks (lr 0: the weights themselves do not move)."""
    state = opt.init(params)._replace(masks=masks)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_rigl_regrows_by_gradient_magnitude_hand_built():
    params = {"w": jnp.asarray([[4.0, -3.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])}
    masks = {"w": jnp.asarray([[1, 1, 1, 1], [0, 0, 0, 0]], bool)}
    grads = {"w": jnp.asarray([[0.0, 0.0, 0.0, 0.0], [0.1, -0.9, 0.3, 0.8]])}
    opt = sparse.rigl(optax.sgd(0.0, momentum=0.9), sparsity=0.5, end_step=10, frequency=1, drop_fraction=0.5)
    new_params, state = _one_event(opt, params, masks, grads)
    # p_1 = 0.5 · ½(1 + cos(π/10)) ≈ 0.488, r = ⌈0.488 · 4⌉ = 2: drop |0.5| and |2|, grow |−0.9| and |0.8|.
    fraction = 0.5 * 0.5 * (1 + math.cos(math.pi / 10))
    assert math.ceil(fraction * 4) == 2
    np.testing.assert_array_equal(np.asarray(sparse.masks(state)["w"]), [[1, 1, 0, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(np.asarray(new_params["w"]), [[4.0, -3.0, 0, 0], [0, 0, 0, 0]])


def test_granet_prunes_globally_then_regrows_hand_built():
    params = {"a": jnp.asarray([[9.0, 8.0], [0.3, 0.2]]), "b": jnp.asarray([[7.0, 0.1], [0.05, 6.0]])}
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    grads = {"a": jnp.asarray([[0.0, 0.0], [0.0, 5.0]]), "b": jnp.asarray([[0.0, 0.0], [4.0, 0.0]])}
    opt = sparse.granet(
        optax.sgd(0.0),
        final_sparsity=0.5,
        begin_step=0,
        end_step=2,
        frequency=1,
        total_steps=4,
        drop_fraction=0.5,
        minimum_drop_fraction=0.5,
    )
    _, state = _one_event(opt, params, masks, grads)
    # Step 1 of k0 = 0, kf = 2: s = 0.5 + (0 − 0.5)(1 − 1/2)³ = 0.4375, keep round(0.5625 · 8) = 4 of the 8
    # weights by raw |w| globally: 9, 8 (a) and 7, 6 (b). Then p = 0.5 per tensor: a keeps 9, regrows the
    # largest |g| among the rest (0.2's slot, |g| = 5); b keeps 7 and regrows the 0.05 slot (|g| = 4).
    np.testing.assert_array_equal(np.asarray(sparse.masks(state)["a"]), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(np.asarray(sparse.masks(state)["b"]), [[1, 0], [1, 0]])


@pytest.mark.parametrize("policy", ["mask_every_step", "reset_regrown"])
def test_granet_globally_pruned_then_regrown_restarts_at_zero_with_zero_momentum(policy):
    params = {"a": jnp.asarray([[9.0, 8.0], [0.3, 0.2]]), "b": jnp.asarray([[7.0, 0.1], [0.05, 6.0]])}
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    grads = {"a": jnp.asarray([[1.0, 3.0], [0.0, 5.0]]), "b": jnp.asarray([[2.0, 0.0], [0.0, 4.0]])}
    opt = sparse.granet(
        optax.sgd(0.0, momentum=0.9),  # lr 0: weights do not move; the trace after the step is g
        final_sparsity=0.5,
        begin_step=0,
        end_step=2,
        frequency=1,
        total_steps=4,
        drop_fraction=0.5,
        minimum_drop_fraction=0.5,
        momentum_policy=policy,
    )
    new_params, state = _one_event(opt, params, masks, grads)
    # Step 1: s = 0.4375, the global prune keeps round(0.5625 · 8) = 4 weights: 9, 8 (a) and 7, 6 (b).
    # Then p = 0.5 per tensor, r = ⌈0.5 · 2⌉ = 1: a drops 8 and regrows the largest |g| among 8's, 0.3's and
    # 0.2's slots: 0.2's (|g| = 5), which the global prune removed -> it restarts at 0 with zero momentum
    # (a stale 0.2 with momentum 5 before the fix). b drops 6 and regrows 6's own slot (|g| = 4 beats 0.1's
    # and 0.05's 0): dropped and regrown by the per-tensor step, it keeps its value and momentum, as in the
    # official code, where only the global prune applies the mask before regrowth.
    np.testing.assert_array_equal(np.asarray(sparse.masks(state)["a"]), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(np.asarray(sparse.masks(state)["b"]), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(np.asarray(new_params["a"]), [[9.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(new_params["b"]), [[7.0, 0.0], [0.0, 6.0]])
    trace = state.inner_state[0].trace
    np.testing.assert_array_equal(np.asarray(trace["a"])[[0, 1], [0, 1]], [1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(trace["b"])[[0, 1], [0, 1]], [2.0, 4.0])
    if policy == "mask_every_step":  # inactive entries carry no momentum
        np.testing.assert_array_equal(np.asarray(trace["a"])[[0, 1], [1, 0]], [0.0, 0.0])


def test_granet_death_rates_and_kept_counts_are_the_float64_schedules():
    from unlearnx.sparse import _schedules as schedules
    from unlearnx.sparse import _select
    from unlearnx.sparse import _transforms as transforms

    rates = transforms._death_rates(0.5, 0.005, 1000, 10, 0, 1000)
    kept = transforms._kept_counts(
        dict(initial=0.0, final=0.9, begin_step=0, end_step=700, frequency=10), 0, 700
    )
    steps = jnp.arange(10, 1001, 10)
    got_rates = jax.jit(jax.vmap(lambda t: _select.ceil_times(*rates(t), jnp.int32(2_000_003))))(steps)
    exact = [0.005 + 0.5 * (0.5 - 0.005) * (1 + math.cos(math.pi * t / 1000)) for t in range(10, 1001, 10)]
    np.testing.assert_array_equal(np.asarray(got_rates), [math.ceil(p * 2_000_003) for p in exact])
    got_kept = jax.jit(jax.vmap(lambda t: kept(t, 3_000_001)))(steps[:70])
    want_kept = []
    for t in range(10, 701, 10):
        k = t // 10
        s = 0.9 if k >= 70 else 0.9 + (0.0 - 0.9) * (1 - k / 70) ** 3
        want_kept.append(round((1 - s) * 3_000_001))
    np.testing.assert_array_equal(np.asarray(got_kept), want_kept)
    assert want_kept[-1] == round(0.1 * 3_000_001)  # the last event reaches s_f exactly
    # The traced schedules agree with the tables to float32 precision.
    traced = schedules.cosine_drop_fraction(steps, initial=0.5, minimum=0.005, total_steps=1000)
    np.testing.assert_allclose(np.asarray(traced), exact, rtol=1e-6, atol=1e-7)


def test_gmp_only_prunes_static_never_changes_set_keeps_counts():
    params, x, y = _problem()
    gmp = sparse.gmp(optax.sgd(0.1), final_sparsity=0.9, begin_step=0, end_step=30, frequency=5)
    static = sparse.static_sparse(optax.sgd(0.1), sparsity=0.9)
    set_opt = sparse.set_sparse(optax.sgd(0.1, momentum=0.9), sparsity=0.9, end_step=30, frequency=5)
    initial_static = sparse.masks(static.init(params))

    def shrinking(step, old_params, old_state, new_params, new_state, grads):
        old, new = sparse.masks(old_state), sparse.masks(new_state)
        for layer in KERNELS:
            assert not np.any(np.asarray(new[layer]["kernel"]) & ~np.asarray(old[layer]["kernel"]))

    _, state, _ = _train(gmp, params, x, y, 40, every=shrinking)
    assert _active(sparse.masks(state)) == round(0.1 * N_KERNEL)
    _, state, _ = _train(static, params, x, y, 10)
    for layer in KERNELS:
        np.testing.assert_array_equal(sparse.masks(state)[layer]["kernel"], initial_static[layer]["kernel"])
    counts = []
    _train(set_opt, params, x, y, 30, every=lambda s, *a: counts.append(_active(sparse.masks(a[3]))))
    assert len(set(counts)) == 1


@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
def test_tree_flavours_give_the_same_masks_and_chain_and_checkpoint(flavour, tmp_path):
    params, x, y = _problem()
    if flavour == "linen":
        tree, plain_of = {"params": params}, lambda t: t["params"]
    elif flavour == "nnx":
        tree, plain_of = nnx.State(jax.tree.map(nnx.Param, params)), nnx.to_pure_dict
    else:
        tree, plain_of = params, lambda t: t
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        sparse.granet(
            optax.sgd(0.1, momentum=0.9),
            final_sparsity=0.75,
            begin_step=0,
            end_step=10,
            frequency=2,
            total_steps=20,
            where="*kernel",
        ),
    )
    state = opt.init(tree)

    @jax.jit
    def step(tree, state):
        grads = jax.grad(lambda t: _loss(plain_of(t), x, y))(tree)
        updates, state = opt.update(grads, state, tree)
        return optax.apply_updates(tree, updates), state

    for _ in range(12):
        tree, state = step(tree, state)
    masks = sparse.masks(state)
    assert jax.tree.structure(masks) == jax.tree.structure(jax.tree.map(lambda p: p, tree))
    flat = {k: np.asarray(v) for k, v in zip(["a", "b", "c", "d"], jax.tree.leaves(masks), strict=True)}
    total = sum(v.sum() for v in flat.values() if v.ndim == 2)
    assert total == round(0.25 * N_KERNEL)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        restored, _ = ckpt.restore(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


class TestErrors:
    params = _problem()[0]

    def test_bad_sparsity(self):
        with pytest.raises(ValueError, match=r"final_sparsity must be a finite number in \[0, 1\), got 1.0"):
            sparse.granet(
                optax.sgd(0.1), final_sparsity=1.0, begin_step=0, end_step=10, frequency=1, total_steps=10
            )

    def test_bad_window(self):
        with pytest.raises(ValueError, match="end_step .* must be greater than begin_step"):
            sparse.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=10, end_step=10, frequency=1)

    def test_where_selects_nothing(self):
        opt = sparse.static_sparse(optax.sgd(0.1), sparsity=0.5, where="nothing/*")
        with pytest.raises(ValueError, match="selects no parameter"):
            opt.init(self.params)

    def test_momentum_policy_cannot_handle_a_flattened_state(self):
        opt = sparse.static_sparse(optax.flatten(optax.sgd(0.1, momentum=0.9)), sparsity=0.5)
        with pytest.raises(ValueError, match="momentum_policy='mask_every_step' cannot find"):
            opt.init(self.params)
        sparse.static_sparse(
            optax.flatten(optax.sgd(0.1, momentum=0.9)), sparsity=0.5, momentum_policy="none"
        ).init(self.params)

    def test_unknown_policy_and_missing_params(self):
        with pytest.raises(ValueError, match="momentum_policy must be one of"):
            sparse.static_sparse(optax.sgd(0.1), sparsity=0.5, momentum_policy="zero").init(self.params)
        opt = sparse.static_sparse(optax.sgd(0.1), sparsity=0.5)
        with pytest.raises(ValueError, match="need params"):
            opt.update(self.params, opt.init(self.params))

    def test_no_sparse_state(self):
        with pytest.raises(ValueError, match="no SparseState"):
            sparse.masks(optax.sgd(0.1).init(self.params))


def test_masks_are_found_in_any_chain():
    tree = {"w": jnp.ones((4, 4))}
    inner = sparse.static_sparse(optax.sgd(0.1), sparsity=0.5)
    for opt in (
        inner,
        optax.chain(optax.identity(), inner),
        optax.named_chain(("sparse", inner), ("id", optax.identity())),
    ):
        assert int(sparse.masks(opt.init(tree))["w"].sum()) == 8
    with pytest.raises(ValueError, match="no SparseState"):
        sparse.masks(optax.sgd(0.1).init(tree))

"""``sparse.branch_on_mask_update``: the mask-update decision taken at the top of a training step.

The wrapped step must equal the plain one bit for bit on every step (mask updates included), its ordinary
branch must carry no mask-update ``lax.cond``, and ``SparseState.update_due`` must be the schedule one step
ahead (checked against the schedules' definitions written out here).
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from unlearnx import models, sparse, train

RNG = np.random.default_rng(0)
PARAMS = {
    "Dense_0": {"kernel": jnp.asarray(RNG.normal(size=(12, 16)), jnp.float32), "bias": jnp.zeros(16)},
    "Dense_1": {"kernel": jnp.asarray(RNG.normal(size=(16, 3)), jnp.float32), "bias": jnp.zeros(3)},
}
X = jnp.asarray(RNG.normal(size=(64, 12)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 3, 64))


def _loss(params, x, y):
    hidden = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    logits = hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _inner():
    return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))


OPTIMIZERS = {
    "granet": lambda: sparse.granet(
        _inner(),
        final_sparsity=0.8,
        initial_sparsity=0.5,
        begin_step=0,
        end_step=6,
        frequency=2,
        total_steps=12,
    ),
    "gmp": lambda: sparse.gmp(_inner(), final_sparsity=0.8, begin_step=2, end_step=8, frequency=3),
    "rigl": lambda: sparse.rigl(_inner(), sparsity=0.7, end_step=9, frequency=3),
    "set": lambda: sparse.set_sparse(_inner(), sparsity=0.7, end_step=9, frequency=2),
    "chained granet": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        sparse.granet(_inner(), final_sparsity=0.8, begin_step=1, end_step=7, frequency=3, total_steps=12),
    ),
}
# The steps t at which each optimizer updates its masks: t ≡ 0 (mod ΔT) inside its window, written out.
UPDATE_STEPS = {
    "granet": {2, 4, 6, 8, 10, 12},  # pruning to end_step, regrowth to total_steps
    "gmp": {3, 6},
    "rigl": {3, 6, 9},
    "set": {2, 4, 6, 8},
    "chained granet": {3, 6, 9, 12},
}


def _steps(opt, plain_of=lambda tree: tree):
    def step(tree, state, x, y):
        grads = jax.grad(lambda t: _loss(plain_of(t), x, y))(tree)
        updates, state = opt.update(grads, state, tree)
        return optax.apply_updates(tree, updates), state

    return jax.jit(step), jax.jit(sparse.branch_on_mask_update(step))


def _sparse_state(state):
    return optax.tree.get_all_with_path(state, "SparseState")[0][1]


def _run_both(opt, tree, steps=13, plain_of=lambda tree: tree):
    plain, wrapped = _steps(opt, plain_of)
    state = opt.init(tree)
    due = []
    for t in range(steps):
        rows = (np.arange(16) + 16 * t) % 64
        due.append(bool(_sparse_state(state).update_due))
        expected = plain(tree, state, X[rows], Y[rows])
        got = wrapped(tree, state, X[rows], Y[rows])
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
        tree, state = got
    return due


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_wrapped_step_is_the_plain_step_bit_for_bit_and_due_is_the_schedule(name):
    due = _run_both(OPTIMIZERS[name](), PARAMS)
    # Before step t (t = 1, 2, ...) the state says whether step t updates the masks.
    assert due == [t in UPDATE_STEPS[name] for t in range(1, 14)]


@pytest.mark.parametrize("flavour", ["linen", "nnx"])
def test_wrapped_step_on_linen_and_nnx_trees(flavour):
    if flavour == "linen":
        tree, plain_of = {"params": PARAMS}, lambda t: t["params"]
    else:
        tree, plain_of = nnx.State(jax.tree.map(nnx.Param, PARAMS)), nnx.to_pure_dict
    due = _run_both(OPTIMIZERS["granet"](), tree, plain_of=plain_of)
    assert sum(due) == len(UPDATE_STEPS["granet"])


def _conds(jaxpr) -> list:
    """Every ``cond`` equation in a jaxpr and the jaxprs nested in it, outermost first."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            found.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found.extend(_conds(sub))
    return found


def test_the_ordinary_branch_has_no_mask_update_cond():
    opt = OPTIMIZERS["granet"]()
    state = opt.init(PARAMS)
    plain, wrapped = _steps(opt)
    in_plain = len(_conds(jax.make_jaxpr(plain)(PARAMS, state, X, Y).jaxpr))  # GraNet: the update, its phase
    assert in_plain >= 1
    outer, *inner = _conds(jax.make_jaxpr(wrapped)(PARAMS, state, X, Y).jaxpr)
    ordinary, full = outer.params["branches"]  # lax.cond(pred, true, false): branches = (false, true)
    assert _conds(ordinary.jaxpr) == []
    assert len(_conds(full.jaxpr)) == len(inner) == in_plain


def test_no_branch_without_mask_updates_and_states_made_inside_keep_their_cond():
    static = sparse.static_sparse(_inner(), sparsity=0.5)
    plain, wrapped = _steps(static)
    state = static.init(PARAMS)
    assert state.update_due is None
    assert _conds(jax.make_jaxpr(wrapped)(PARAMS, state, X, Y).jaxpr) == []
    got, expected = wrapped(PARAMS, state, X, Y), plain(PARAMS, state, X, Y)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)

    opt = OPTIMIZERS["rigl"]()

    def fresh_state_step(params, x, y):  # the state is built inside: nothing to branch on, its cond stays
        state = opt.init(params)._replace(update_due=jnp.asarray(True))
        updates, _ = opt.update(jax.grad(_loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates)

    wrapped = sparse.branch_on_mask_update(fresh_state_step)
    assert len(_conds(jax.make_jaxpr(wrapped)(PARAMS, X, Y).jaxpr)) == 1
    np.testing.assert_array_equal(
        jax.jit(wrapped)(PARAMS, X, Y)["Dense_0"]["kernel"],
        jax.jit(fresh_state_step)(PARAMS, X, Y)["Dense_0"]["kernel"],
    )


def test_static_arguments_reach_both_branches_unchanged():
    opt = OPTIMIZERS["rigl"]()
    seen = []

    def step(params, state, x, y, *, scale):  # scale: a Python float, static under jit
        seen.append(type(scale))
        grads = jax.tree.map(lambda g: scale * g, jax.grad(_loss)(params, x, y))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(PARAMS)
    state = state._replace(update_due=jnp.asarray(True), count=jnp.asarray(2))  # step 3: a mask update
    wrapped = jax.jit(sparse.branch_on_mask_update(step), static_argnames="scale")
    got = wrapped(PARAMS, state, X, Y, scale=2.0)
    expected = jax.jit(step, static_argnames="scale")(PARAMS, state, X, Y, scale=2.0)
    assert set(seen) == {float}
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(sparse.masks(got[1])["Dense_0"]["kernel"], state.masks["Dense_0"]["kernel"])


def test_make_train_step_branches_before_the_forward_pass():
    model = models.mlp((12,), 3, hidden=(16,))
    variables = model.init(jax.random.key(0))
    opt = OPTIMIZERS["rigl"]()
    state = train.TrainState(jnp.asarray(0), variables, opt.init(variables["params"]), jax.random.key(1))
    batch = {"x": X[:16], "y": Y[:16]}
    step = train.make_train_step(model, opt)
    outer, *_ = _conds(jax.make_jaxpr(step)(state, batch).jaxpr)
    ordinary, full = outer.params["branches"]
    assert _conds(ordinary.jaxpr) == [] and len(_conds(full.jaxpr)) == 1
    assert any(eqn.primitive.name == "dot_general" for eqn in ordinary.jaxpr.eqns)  # the forward pass inside
    for _ in range(4):  # steps 1-4: a mask update at step 3
        state, _ = step(state, batch)
    assert int(_sparse_state(state.opt_state).count) == 4 and not bool(state.opt_state.update_due)

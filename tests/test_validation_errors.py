"""Issue 14 (library side): every bad input gets a clear error naming the argument, path and value.

Classes: 2 (one rule for traced hyper-parameters: static, a traced one raises ``TypeError``), 3 (concrete
trees closed over by an outer ``jit`` are checked, not a ``ConcretizationTypeError``), 7 (float32 overflow of
outputs is named), 8 (public helpers validate like their callers), 9 (our message, not JAX's).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearnx import _validation as checks
from unlearnx import continual, erase, fisher, sparse, unlearn
from unlearnx.unlearn import localize
from unlearnx.unlearn import objectives as obj

RNG = np.random.default_rng(0)
THETA = {"w": jnp.asarray(RNG.normal(size=(6, 4)), jnp.float32)}
FORGET = {"w": jnp.asarray(RNG.exponential(size=(6, 4)), jnp.float32)}
FULL = {"w": jnp.asarray(RNG.exponential(size=(6, 4)), jnp.float32)}
LOGP = -jnp.asarray(RNG.exponential(size=(2, 3)), jnp.float32)
MASK = jnp.ones((2, 3))
KERNEL = RNG.normal(size=(12, 7)).astype(np.float32)
KEYS = RNG.normal(size=(3, 12)).astype(np.float32)
SPARSE_PARAMS = {"a": jnp.ones((8, 6)), "b": jnp.ones((6, 4))}


# -- the rule itself ----------------------------------------------------------------------------------------


def test_static_number_rule():
    assert checks.static_number("x", np.float32(0.5), low=0.0, high=1.0) == 0.5
    assert checks.static_number("x", jnp.asarray(2.0)) == 2.0  # a concrete 0-d array is a number
    with pytest.raises(TypeError, match="x is a traced value .* static_argnames=\\('x',\\)"):
        jax.jit(lambda v: checks.static_number("x", v))(1.0)
    with pytest.raises(TypeError, match="x must be a number, got the bool True"):
        checks.static_number("x", True)
    with pytest.raises(TypeError, match="x must be a real number, got 'a'"):
        checks.static_number("x", "a")
    with pytest.raises(ValueError, match="x must be a scalar, got shape \\(2,\\)"):
        checks.static_number("x", [1.0, 2.0])
    with pytest.raises(ValueError, match="x must be a finite number in \\[0, 1\\), got nan"):
        checks.static_number("x", math.nan, low=0.0, high=1.0, high_open=True)
    assert checks.static_int("n", 2**62, low=0) == 2**62
    with pytest.raises(TypeError, match="n must be an integer, got 3.0"):
        checks.static_int("n", 3.0)


def test_data_checks_name_the_path_and_value():
    tree = {"a": {"b": jnp.asarray([1.0, -2.0])}}
    with pytest.raises(ValueError, match="imp\\['a/b'\\] must be finite and non-negative, found -2.0"):
        checks.check_tree("imp", tree, nonnegative=True)
    with pytest.raises(ValueError, match="labels must be class labels in \\[0, 3\\), found -1 at index 1"):
        checks.check_ids("labels", np.asarray([0, -1, 2]), 3, what="class labels")
    with pytest.raises(TypeError, match="labels must hold integer ids, got dtype float32"):
        checks.check_ids("labels", np.zeros(2, np.float32), 3)
    with pytest.raises(ValueError, match="m must be boolean or exactly 0/1, found 0.5"):
        checks.check_binary("m", np.asarray([0.0, 0.5]))
    with pytest.raises(ValueError, match="out\\['w'\\] is not finite .* because"):
        checks.check_output("out", {"w": jnp.asarray([jnp.inf])}, "because")
    checks.check_tree("imp", jax.jit(lambda: 0)())  # concrete, finite
    jax.jit(lambda t: checks.check_tree("imp", t))(tree)  # traced data: skipped, documented


def test_nonfinite_flags_mark_exactly_the_bad_leaves_and_gate_the_search():
    tree = {"a": jnp.asarray([1.0, jnp.nan]), "b": jnp.ones(3), "c": jnp.asarray([[-jnp.inf]])}
    assert np.asarray(jax.jit(checks.nonfinite_flags)(tree)).tolist() == [True, False, True]
    clean = {"a": jnp.ones(2)}
    flags = checks.nonfinite_flags(clean)
    checks.check_tree("imp", clean, flags=flags)
    checks.check_output("out", clean, "because", flags=flags)
    bad = {"w": jnp.asarray([0.0, jnp.inf])}
    with pytest.raises(ValueError, match="out\\['w'\\] is not finite .* because"):
        checks.check_output("out", bad, "because", flags=checks.nonfinite_flags(bad))
    with pytest.raises(ValueError, match="imp\\['w'\\] must be finite, found inf"):
        checks.check_tree("imp", bad, flags=checks.nonfinite_flags(bad))
    # concrete all-False flags skip the search (the caller vouches for them); traced flags never do
    checks.check_tree("imp", bad, flags=jnp.zeros(1, bool))
    with pytest.raises(ValueError, match="must be finite"):
        jax.jit(lambda f: checks.check_tree("imp", bad, flags=f))(jnp.zeros(1, bool))


# -- class 2: traced hyper-parameters raise TypeError everywhere --------------------------------------------

TRACED_CALLS = {
    "ssd alpha": lambda v: unlearn.ssd(THETA, FORGET, FULL, alpha=v),
    "ssd lam": lambda v: unlearn.ssd(THETA, FORGET, FULL, lam=v),
    "dampening_factors alpha": lambda v: unlearn.dampening_factors(FORGET, FULL, alpha=v),
    "selection alpha": lambda v: localize.selection(FORGET, FULL, alpha=v),
    "assd_alpha forget_fraction": lambda v: unlearn.assd_alpha(FORGET, FULL, v),
    "npo beta": lambda v: obj.npo(LOGP, LOGP, MASK, beta=v),
    "simnpo delta": lambda v: obj.simnpo(LOGP, MASK, delta=v),
    "grad_diff retain_weight": lambda v: obj.grad_diff(LOGP, MASK, LOGP, MASK, retain_weight=v),
    "task_vector alpha": lambda v: obj.task_vector(THETA, THETA, v),
    "uce lamb": lambda v: erase.uce(KERNEL, KEYS, KEYS @ KERNEL, None, lamb=v),
    "derive_embedding reg": lambda v: erase.derive_embedding([KERNEL], [KERNEL], KEYS, reg=v),
    "rece round_lamb": lambda v: erase.rece(
        {"attn2": {"to_k": {"kernel": KERNEL}}}, KEYS, KEYS, None, round_lamb=v
    ),
    "cubic_sparsity final": lambda v: sparse.cubic_sparsity(
        3, initial=0.0, final=v, begin_step=0, end_step=10, frequency=1
    ),
    "cosine_drop_fraction initial": lambda v: sparse.cosine_drop_fraction(3, initial=v, total_steps=10),
    "erk_sparsities power_scale": lambda v: sparse.erk_sparsities(SPARSE_PARAMS, 0.5, power_scale=v),
    "uniform_sparsities sparsity": lambda v: sparse.uniform_sparsities(SPARSE_PARAMS, v),
    "rehearsal_counts exponent": lambda v: continual.rehearsal_counts(
        "power_law", current_task=2, last_seen=np.arange(2), budget=4, exponent=v
    ),
}


@pytest.mark.parametrize("call", sorted(TRACED_CALLS))
def test_traced_hyperparameters_raise_a_type_error_naming_them(call):
    argument = call.split()[-1]
    with pytest.raises(TypeError, match=f"{argument} is a traced value.*static"):
        jax.jit(TRACED_CALLS[call])(0.5)


# -- class 3: concrete trees closed over by an outer jit ----------------------------------------------------


def test_closed_over_importances_work_under_jit_and_equal_eager():
    eager = unlearn.ssd(THETA, FORGET, FULL, alpha=1.0)
    jitted = jax.jit(lambda p: unlearn.ssd(p, FORGET, FULL, alpha=1.0))(THETA)
    np.testing.assert_array_equal(jitted["w"], eager["w"])
    chosen = jax.jit(lambda: localize.selection(FORGET, FULL, alpha=1.0))()
    np.testing.assert_array_equal(chosen["w"], localize.selection(FORGET, FULL, alpha=1.0)["w"])
    alpha = jax.jit(lambda: unlearn.assd_alpha(FORGET, FULL, 0.1))()
    assert float(alpha) == float(unlearn.assd_alpha(FORGET, FULL, 0.1))
    bad = {"w": FORGET["w"].at[1, 2].set(-3.0)}
    with pytest.raises(
        ValueError, match="forget_importance\\['w'\\] must be finite and non-negative, found -3.0"
    ):
        jax.jit(lambda p: unlearn.ssd(p, bad, FULL))(THETA)


# -- class 7: overflow of outputs is named ------------------------------------------------------------------


def test_uce_rece_and_derive_embedding_name_the_overflowing_quantity():
    with pytest.raises(ValueError, match="uce: the edited kernel is not finite .*Gram matrix α C_E C_Eᵀ"):
        erase.uce(KERNEL, KEYS * 1e20, np.zeros((3, 7), np.float32), None)
    params = {"attn2": {"to_k": {"kernel": KERNEL}}}
    with pytest.raises(ValueError, match="rece: the edited kernels\\['attn2/to_k/kernel'\\] is not finite"):
        erase.rece(params, KEYS * 1e20, KEYS * 1e19, None)
    with pytest.raises(ValueError, match="derive_embedding: the embedding C′ is not finite .*Σ K′K′ᵀ"):
        erase.derive_embedding([KERNEL * 1e20], [KERNEL], KEYS, reg=0.1)


def test_fisher_names_overflowing_importances():
    params = {"w": jnp.ones(3, jnp.float32)}
    loss = lambda p, b: 1e20 * jnp.sum(p["w"]) * b["x"]  # noqa: E731  finite loss, gradient² = 1e40 overflows
    with pytest.raises(ValueError, match="fisher.diagonal: the importance\\['w'\\] is not finite .*squared"):
        fisher.diagonal(loss, params, [{"x": jnp.ones(2)}], estimator="batch_sq")


# -- class 8: public helpers validate like their callers ----------------------------------------------------


def test_public_helpers_validate():
    with pytest.raises(ValueError, match="lam must be a finite number >= 0, got -1.0"):
        unlearn.dampening_factors(FORGET, FULL, lam=-1.0)
    for bad, shown in ((-1.0, "-1.0"), (math.nan, "nan")):
        with pytest.raises(
            ValueError, match=f"full_importance\\['w'\\] must be finite and non-negative, found {shown}"
        ):
            unlearn.assd_alpha(FORGET, {"w": FULL["w"].at[0, 0].set(bad)}, 0.1)
    with pytest.raises(ValueError, match="mask_tree\\['w'\\] must be boolean or exactly 0/1, found 0.5"):
        localize.masked_updates({"w": jnp.full((6, 4), 0.5)})
    localize.masked_updates({"w": jnp.ones((6, 4))})  # exactly 0/1 floats are a selection
    with pytest.raises(ValueError, match="power_scale must be a finite number >= 0, got nan"):
        sparse.erk_sparsities(SPARSE_PARAMS, 0.5, power_scale=math.nan)
    with pytest.raises(TypeError, match="params\\['w'\\] has dtype int32: SSD .* would truncate"):
        unlearn.ssd({"w": jnp.arange(3)}, {"w": jnp.ones(3)}, {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="params\\['w'\\] must be finite, found nan"):
        unlearn.ssd({"w": jnp.asarray([1.0, jnp.nan, 2.0])}, {"w": jnp.ones(3)}, {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="params\\['w'\\] must be finite, found nan"):
        fisher.diagonal(lambda p, b: p["w"] * b["x"], {"w": jnp.asarray(jnp.nan)}, [{"x": jnp.ones(2)}])
    with pytest.raises(ValueError, match="logp must hold log-probabilities \\(<= 0\\), found 0.25"):
        obj.nll(jnp.asarray([[0.25, -1.0]]), jnp.ones((1, 2)))


def test_fisher_flags_out_of_range_labels_instead_of_zero_importance():
    def loss(p, batch):  # take_along_axis fills NaN for label 5 of 3 classes, with a zero gradient
        log_probs = jax.nn.log_softmax(batch["x"] @ p["w"])
        return -jnp.take_along_axis(log_probs, batch["y"][:, None], axis=1)[:, 0]

    params = {"w": jnp.ones((2, 3))}
    batches = [
        {"x": jnp.ones((2, 2)), "y": jnp.asarray([0, 1])},
        {"x": jnp.ones((2, 2)), "y": jnp.asarray([5, 1])},
    ]
    with pytest.raises(ValueError, match="1 non-finite per-example losses in batch 1: a label outside"):
        fisher.diagonal(loss, params, batches)


# -- class 9: our message, not JAX's ------------------------------------------------------------------------


def test_clear_messages_instead_of_jax_internals():
    with pytest.raises(ValueError, match="params\\['a'\\] has shape \\(0, 3\\): an empty tensor"):
        sparse.erk_sparsities({"a": jnp.ones((0, 3)), "b": jnp.ones((3, 3))}, 0.5)
    with pytest.raises(TypeError, match="end_step must be an integer, got 10.0"):
        sparse.cubic_sparsity(0, initial=0.0, final=0.5, begin_step=0, end_step=10.0, frequency=1)
    opt = sparse.static_sparse(optax.sgd(0.1), sparsity=0.5)
    state = opt.init(SPARSE_PARAMS)
    with pytest.raises(ValueError, match="params and grads have different structures: grads lacks \\['b'\\]"):
        opt.update({"a": jnp.ones((8, 6))}, state, SPARSE_PARAMS)
    transform = localize.masked_updates({"w": jnp.ones((6, 4), bool)})
    with pytest.raises(ValueError, match="updates and mask_tree have different structures"):
        transform.update({"v": jnp.ones((6, 4))}, transform.init(THETA))
    with pytest.raises(ValueError, match="sparsity has paths that params lacks: \\['c'\\]"):
        sparse.magnitude_masks(SPARSE_PARAMS, {"c": 0.5}, scope="layer")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, jnp.bfloat16, np.int32])
def test_fast_bad_value_flags_match_an_elementwise_float64_check(dtype):
    """sum(0·x) flags exactly the leaves an element-wise isfinite (and x < 0) check flags, including leaves
    whose plain sum would overflow and leaves with a single bad entry."""
    rng = np.random.default_rng(0)
    big = float(jnp.finfo(dtype).max) / 2 if jnp.issubdtype(dtype, jnp.floating) else 2**30
    leaves = [rng.normal(size=(7, 5)) for _ in range(6)] + [np.full((64,), big), np.zeros((0, 3))]
    leaves[1][3, 2] = np.nan
    leaves[2][0, 0] = np.inf
    leaves[3][6, 4] = -np.inf
    leaves[4][2, 1] = -1.0
    if not jnp.issubdtype(dtype, jnp.floating):
        leaves = [np.nan_to_num(leaf, posinf=5, neginf=-5) for leaf in leaves]
    arrays = [jnp.asarray(leaf, dtype) for leaf in leaves]
    for nonnegative in (False, True):
        host = [np.asarray(a, np.float64) for a in arrays]
        want = [bool(np.any(~np.isfinite(h)) or (nonnegative and np.any(h < 0))) for h in host]
        got = np.asarray(checks._any_bad(arrays, nonnegative)).tolist()
        assert got == want, (nonnegative, got, want)
        counts = checks._counts_if_bad(arrays, nonnegative)
        assert [bool(c) for c in counts] == want

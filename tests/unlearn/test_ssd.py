"""unlearnx.unlearn._ssd and assd_alpha against float64 NumPy references and the paper's invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from problems import tree_flavours

from unlearnx import unlearn


def _reference_ssd(theta, forget, full, alpha, lam):
    theta, forget, full = (np.asarray(a, np.float64) for a in (theta, forget, full))
    out = theta.copy()
    for i in np.ndindex(theta.shape):
        if forget[i] > alpha * full[i]:
            out[i] = theta[i] * min(lam * full[i] / forget[i], 1.0)
    return out


def _importance(rng, shape, zero_fraction=0.3):
    values = rng.exponential(size=shape)
    values[rng.random(shape) < zero_fraction] = 0.0
    return values.astype(np.float32)


def _problem(seed=0, shape=(6, 4)):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=shape).astype(np.float32)
    return theta, _importance(rng, shape), _importance(rng, shape)


@pytest.mark.parametrize("alpha,lam", [(10.0, 1.0), (1.0, 1.0), (0.5, 2.0), (0.0, 1.0), (2.0, 5.0)])
@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
def test_matches_reference_on_every_tree_flavour(alpha, lam, flavour):
    theta, forget, full = _problem()
    bias, bias_forget, bias_full = _problem(seed=1, shape=(4,))
    params, unpack = tree_flavours(jnp.asarray(theta), jnp.asarray(bias))[flavour]
    forget_tree, _ = tree_flavours(jnp.asarray(forget), jnp.asarray(bias_forget))[flavour]
    full_tree, _ = tree_flavours(jnp.asarray(full), jnp.asarray(bias_full))[flavour]
    out = unlearn.ssd(params, forget_tree, full_tree, alpha=alpha, lam=lam)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    got_kernel, got_bias = unpack(out)
    np.testing.assert_allclose(got_kernel, _reference_ssd(theta, forget, full, alpha, lam), rtol=1e-6)
    np.testing.assert_allclose(got_bias, _reference_ssd(bias, bias_forget, bias_full, alpha, lam), rtol=1e-6)


def test_jitted_matches_eager():
    theta, forget, full = _problem(seed=3, shape=(50, 20))
    params = {"w": jnp.asarray(theta)}
    eager = unlearn.ssd(params, {"w": forget}, {"w": full}, alpha=2.0, lam=1.0)
    jitted = jax.jit(lambda p, f, d, a: unlearn.ssd(p, f, d, alpha=a, lam=1.0), static_argnums=3)(
        params, {"w": forget}, {"w": full}, 2.0
    )
    np.testing.assert_array_equal(eager["w"], jitted["w"])
    # importances closed over by an outer jit are concrete: checked at trace time, no ConcretizationTypeError
    closed = jax.jit(lambda p: unlearn.ssd(p, {"w": forget}, {"w": full}, alpha=2.0))(params)
    np.testing.assert_array_equal(eager["w"], closed["w"])


def test_traced_hyperparameters_raise_a_clear_type_error():
    theta, forget, full = _problem(seed=3)
    with pytest.raises(TypeError, match="alpha is a traced value.*static_argnames"):
        jax.jit(lambda a: unlearn.ssd({"w": theta}, {"w": forget}, {"w": full}, alpha=a))(2.0)
    with pytest.raises(TypeError, match="lam is a traced value"):
        jax.jit(lambda a: unlearn.dampening_factors({"w": forget}, {"w": full}, lam=a))(2.0)
    with pytest.raises(TypeError, match="forget_fraction is a traced value"):
        jax.jit(lambda s: unlearn.assd_alpha({"w": forget}, {"w": full}, s))(0.1)


# XLA flushes float32 subnormals (< 1.2e-38) to zero, as documented on ssd(); the invariants are
# stated for normal numbers.
finite = st.floats(-100, 100, allow_nan=False, width=32, allow_subnormal=False)
importance = st.one_of(st.just(0.0), st.floats(0, 1e6, allow_nan=False, width=32, allow_subnormal=False))


@settings(max_examples=60, deadline=None)
@given(
    theta=hnp.arrays(np.float32, 12, elements=finite),
    forget=hnp.arrays(np.float32, 12, elements=importance),
    full=hnp.arrays(np.float32, 12, elements=importance),
    alpha=st.floats(0, 50),
    lam=st.floats(0, 50),
)
def test_invariants(theta, forget, full, alpha, lam):
    out = np.asarray(unlearn.ssd({"w": theta}, {"w": forget}, {"w": full}, alpha=alpha, lam=lam)["w"])
    assert np.all(np.isfinite(out))
    selected = forget > np.float32(alpha) * full
    # Unselected parameters are bit-identical; |theta| never grows.
    np.testing.assert_array_equal(out[~selected], theta[~selected])
    assert np.all(np.abs(out) <= np.abs(theta))
    # Selected parameters with I_D = 0 are zeroed; the others shrink by at least min(lam/alpha, 1).
    np.testing.assert_array_equal(out[selected & (full == 0)], 0.0)
    if alpha > 0:
        bound = min(lam / alpha, 1.0) * np.abs(theta[selected]) * (1 + 1e-6)
        assert np.all(np.abs(out[selected]) <= bound + 1e-30)


@pytest.mark.parametrize("where", [None, "*", "re:bn", lambda path: True])
def test_batch_stats_are_never_touched(where):
    variables = {
        "params": {"bn": {"scale": jnp.ones(3)}},
        "batch_stats": {"bn": {"mean": jnp.ones(3), "var": jnp.ones(3)}},
    }
    forget = jax.tree.map(lambda a: jnp.full_like(a, 5.0), variables)
    full = jax.tree.map(lambda a: jnp.full_like(a, 0.1), variables)
    out = unlearn.ssd(variables, forget, full, where=where)
    np.testing.assert_allclose(out["params"]["bn"]["scale"], 0.02)  # beta = 0.1 / 5
    np.testing.assert_array_equal(out["batch_stats"]["bn"]["mean"], 1.0)
    np.testing.assert_array_equal(out["batch_stats"]["bn"]["var"], 1.0)


@pytest.mark.parametrize("where", ["*/kernel", "re:kernel$", lambda path: path.endswith("kernel")])
def test_where_restricts_dampening(where):
    params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    forget = jax.tree.map(lambda a: jnp.full_like(a, 4.0), params)
    full = jax.tree.map(lambda a: jnp.full_like(a, 0.0), params)
    out = unlearn.ssd(params, forget, full, where=where)
    np.testing.assert_array_equal(out["Dense_0"]["kernel"], 0.0)
    np.testing.assert_array_equal(out["Dense_0"]["bias"], 1.0)


def test_bf16_parameters_keep_their_dtype():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    out = unlearn.ssd(params, {"w": jnp.full(4, 2.0)}, {"w": jnp.full(4, 0.1)}, alpha=10, lam=1)
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(out["w"].astype(np.float32), 0.05, rtol=1e-2)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_assd_alpha_is_the_documented_percentile(fraction):
    rng = np.random.default_rng(0)
    forget = {"a": _importance(rng, (30, 7)), "b": _importance(rng, (11,))}
    full = {"a": _importance(rng, (30, 7)), "b": _importance(rng, (11,))}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.concatenate([(forget[k].astype(np.float64) / full[k]).ravel() for k in ("a", "b")])
    ratio = ratio[np.isfinite(ratio)]
    want = np.percentile(ratio, 100 - math.log(1 + 100 * fraction))
    got = unlearn.assd_alpha(forget, full, fraction)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_assd_alpha_ignores_batch_statistics():
    forget = {"params": {"w": jnp.asarray([1.0, 2.0, 3.0])}, "batch_stats": {"m": jnp.asarray([1e6])}}
    full = {"params": {"w": jnp.asarray([1.0, 1.0, 1.0])}, "batch_stats": {"m": jnp.asarray([1.0])}}
    fraction = 0.5
    want = np.percentile([1.0, 2.0, 3.0], 100 - math.log(1 + 100 * fraction))
    np.testing.assert_allclose(float(unlearn.assd_alpha(forget, full, fraction)), want, rtol=1e-6)


class TestErrors:
    params = {"w": jnp.ones(3)}
    good = {"w": jnp.ones(3)}

    def test_mismatched_structure(self):
        with pytest.raises(ValueError, match="forget_importance lacks \\['w'\\]"):
            unlearn.ssd(self.params, {"v": jnp.ones(3)}, self.good)

    def test_mismatched_shape(self):
        with pytest.raises(ValueError, match="differ in shape at 'w': \\(3,\\) vs \\(4,\\)"):
            unlearn.ssd(self.params, self.good, {"w": jnp.ones(4)})

    @pytest.mark.parametrize("name", ["alpha", "lam"])
    @pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
    def test_bad_hyperparameters(self, name, value):
        with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got"):
            unlearn.ssd(self.params, self.good, self.good, **{name: value})

    def test_negative_importance_names_the_path(self):
        message = r"full_importance\['w'\] must be finite and non-negative, found -2.0"
        with pytest.raises(ValueError, match=message):
            unlearn.ssd(self.params, self.good, {"w": jnp.asarray([1.0, -2.0, 1.0])})

    def test_nan_importance(self):
        message = r"forget_importance\['w'\] must be finite and non-negative, found nan"
        with pytest.raises(ValueError, match=message):
            unlearn.ssd(self.params, {"w": jnp.asarray([1.0, jnp.nan, 1.0])}, self.good)

    def test_assd_bad_fraction(self):
        with pytest.raises(ValueError, match="forget_fraction"):
            unlearn.assd_alpha(self.good, self.good, 0.0)

    def test_assd_all_zero_full_importance(self):
        with pytest.raises(ValueError, match="no finite importance ratio"):
            unlearn.assd_alpha(self.good, {"w": jnp.zeros(3)}, 0.1)

"""unlearnx.erase.uce and derive_embedding against float64 NumPy references, closed forms and invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import erase


def _f32(*arrays):
    """Float32 copies and their exact float64 values (so the reference sees the same inputs)."""
    return [np.asarray(a, np.float32).astype(np.float64) for a in arrays]


def _problem(seed=0, d_in=12, d_out=7, n=3, m=4):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)
    keys = rng.normal(size=(n, d_in))
    targets = rng.normal(size=(n, d_out))
    preserve = rng.normal(size=(m, d_in))
    return _f32(kernel, keys, targets, preserve)


def reference_uce(kernel, keys, targets, preserve, alpha, beta, lamb):
    """Flax layout, float64: G⁻¹ (λK + α Σ c vᵀ + β Σ c_p c_pᵀ K)."""
    d_in = kernel.shape[0]
    gram = lamb * np.eye(d_in) + alpha * keys.T @ keys + beta * preserve.T @ preserve
    return np.linalg.solve(
        gram, lamb * kernel + alpha * keys.T @ targets + beta * preserve.T @ preserve @ kernel
    )


def reference_uce_torch(weight, keys, targets, preserve, alpha, beta, lamb):
    """PyTorch layout W (d_out, d_in), float64: (λW + α V*ᵀ C_E + β W C_Pᵀ C_P) G⁻¹."""
    d_in = weight.shape[1]
    gram = lamb * np.eye(d_in) + alpha * keys.T @ keys + beta * preserve.T @ preserve
    numerator = lamb * weight + alpha * targets.T @ keys + beta * weight @ preserve.T @ preserve
    return np.linalg.solve(gram.T, numerator.T).T  # X G⁻¹ without an inverse


def reference_embedding(edited, original, concept, reg):
    d_in = concept.shape[1]
    lhs = reg * np.eye(d_in) + sum(e.reshape(d_in, -1) @ e.reshape(d_in, -1).T for e in edited)
    rhs = sum(e.reshape(d_in, -1) @ o.reshape(d_in, -1).T for e, o in zip(edited, original, strict=True))
    return np.linalg.solve(lhs, rhs @ concept.T).T


def _rel(got, want):
    return np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)


@pytest.mark.parametrize(
    "alpha,beta,lamb", [(1.0, 1.0, 0.5), (1.0, 0.1, 0.1), (2.5, 0.0, 1.0), (1.0, 3.0, 0.01), (0.3, 1.0, 5.0)]
)
@pytest.mark.parametrize("m", [0, 4, 30])
def test_uce_matches_float64_reference(alpha, beta, lamb, m):
    kernel, keys, targets, preserve = _problem(seed=m, m=m)
    got = erase.uce(kernel, keys, targets, preserve, erase_scale=alpha, preserve_scale=beta, lamb=lamb)
    assert got.dtype == jnp.float32 and got.shape == kernel.shape
    assert _rel(got, reference_uce(kernel, keys, targets, preserve, alpha, beta, lamb)) <= 1e-4


def test_uce_on_ill_conditioned_clip_like_keys():
    """Near-duplicate padding rows (as CLIP prompts have) give G a condition number ~1e5 at λ = 0.1."""
    rng = np.random.default_rng(3)
    d_in, pad = 96, rng.normal(size=96)
    keys = np.concatenate([rng.normal(size=(3, d_in)), pad + 0.05 * rng.normal(size=(40, d_in))])
    targets = rng.normal(size=(43, 20))
    preserve = pad + 0.05 * rng.normal(size=(43, d_in))
    kernel = rng.normal(size=(d_in, 20)) / np.sqrt(d_in)
    kernel, keys, targets, preserve = _f32(kernel, keys, targets, preserve)
    gram = 0.1 * np.eye(d_in) + keys.T @ keys + preserve.T @ preserve
    assert np.linalg.cond(gram) > 5e4
    got = erase.uce(kernel, keys, targets, preserve, lamb=0.1)
    assert _rel(got, reference_uce(kernel, keys, targets, preserve, 1.0, 1.0, 0.1)) <= 1e-4


def test_uce_jitted_equals_eager():
    kernel, keys, targets, preserve = _problem(seed=1)
    eager = erase.uce(kernel, keys, targets, preserve, lamb=0.3)
    jitted = jax.jit(lambda *a: erase.uce(*a, lamb=0.3))(kernel, keys, targets, preserve)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)


def test_flax_and_torch_layouts_are_transposes():
    kernel, keys, targets, preserve = _problem(seed=2, m=5)
    torch_weight = kernel.T
    want = reference_uce_torch(torch_weight, keys, targets, preserve, 1.0, 0.1, 0.5)
    got = erase.uce(kernel, keys, targets, preserve, erase_scale=1.0, preserve_scale=0.1, lamb=0.5)
    assert _rel(np.asarray(got).T, want) <= 1e-4


@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_zero_erase_scale_returns_the_kernel_exactly(beta):
    kernel, keys, targets, preserve = _problem(seed=4)
    got = erase.uce(kernel, keys, targets, preserve, erase_scale=0.0, preserve_scale=beta, lamb=0.5)
    np.testing.assert_array_equal(got, np.float32(kernel))


def test_targets_equal_to_current_outputs_change_nothing():
    kernel, keys, _, preserve = _problem(seed=5)
    kernel32 = np.float32(kernel)
    targets = np.float32(keys) @ kernel32
    got = erase.uce(kernel32, keys, targets, preserve, lamb=0.1)
    np.testing.assert_allclose(got, kernel32, atol=1e-6)


def test_erase_keys_reach_their_targets_as_lamb_goes_to_zero():
    kernel, keys, targets, _ = _problem(seed=6, d_in=12, n=4)
    misses = []
    for lamb in (1.0, 1e-2, 1e-4, 1e-6):
        edited = np.asarray(erase.uce(kernel, keys, targets, None, lamb=lamb), np.float64)
        misses.append(np.linalg.norm(keys @ edited - targets) / np.linalg.norm(targets))
    assert all(b < a for a, b in zip(misses, misses[1:], strict=False)), misses
    assert misses[-1] < 1e-4


def test_many_preserve_keys_stay_put_with_small_lamb():
    """n + m ≤ d_in independent rows: as λ → 0 both the erase and the preserve equations hold exactly."""
    kernel, keys, targets, preserve = _problem(seed=7, d_in=24, n=3, m=18)
    edited = np.asarray(erase.uce(kernel, keys, targets, preserve, lamb=1e-5), np.float64)
    assert np.linalg.norm(preserve @ (edited - kernel)) / np.linalg.norm(preserve @ kernel) < 1e-3
    assert np.linalg.norm(keys @ edited - targets) / np.linalg.norm(targets) < 1e-3
    # Without the preserve term the same edit moves the preserved outputs a lot.
    free = np.asarray(erase.uce(kernel, keys, targets, preserve, preserve_scale=0.0, lamb=1e-5), np.float64)
    assert np.linalg.norm(preserve @ (free - kernel)) / np.linalg.norm(preserve @ kernel) > 0.05


def test_larger_preserve_scale_keeps_preserved_outputs_closer():
    kernel, keys, targets, preserve = _problem(seed=8, d_in=10, n=3, m=20)  # over-determined: a trade-off
    drift = []
    for beta in (0.0, 0.1, 1.0, 10.0):
        edited = np.asarray(erase.uce(kernel, keys, targets, preserve, preserve_scale=beta), np.float64)
        drift.append(np.linalg.norm(preserve @ (edited - kernel)))
    assert all(b < a for a, b in zip(drift, drift[1:], strict=False)), drift


@pytest.mark.parametrize("flat_targets", [False, True])
def test_three_d_kernels_are_edited_over_flattened_outputs(flat_targets):
    kernel, keys, targets, preserve = _problem(seed=9, d_out=12)
    kernel3 = np.float32(kernel).reshape(12, 3, 4)
    targets3 = np.float32(targets) if flat_targets else np.float32(targets).reshape(3, 3, 4)
    got = erase.uce(kernel3, keys, targets3, preserve)
    assert got.shape == (12, 3, 4)
    want = reference_uce(kernel, keys, targets, preserve, 1.0, 1.0, 0.5)
    assert _rel(np.asarray(got).reshape(12, 12), want) <= 1e-4


def test_bf16_kernel_keeps_its_dtype():
    kernel, keys, targets, preserve = _problem(seed=10)
    got = erase.uce(jnp.asarray(kernel, jnp.bfloat16), keys, targets, preserve)
    assert got.dtype == jnp.bfloat16
    want = reference_uce(
        np.asarray(jnp.asarray(kernel, jnp.bfloat16), np.float64), keys, targets, preserve, 1, 1, 0.5
    )
    assert _rel(np.asarray(got, np.float32), want) <= 1e-2


def test_derive_embedding_matches_float64_reference():
    rng = np.random.default_rng(11)
    d_in = 16
    shapes = [(d_in, 8), (d_in, 24), (d_in, 2, 5)]
    original = _f32(*[rng.normal(size=s) / 4 for s in shapes])
    edited = _f32(*[o + 0.1 * rng.normal(size=o.shape) for o in original])
    (concept,) = _f32(rng.normal(size=(5, d_in)))
    for reg in (0.1, 1e-3, 3.0):
        got = erase.derive_embedding(edited, original, concept, reg=reg)
        assert got.shape == (5, d_in) and got.dtype == jnp.float32
        assert _rel(got, reference_embedding(edited, original, concept, reg)) <= 1e-4


def test_derive_embedding_jitted_over_a_dict_of_kernels():
    rng = np.random.default_rng(12)
    original = {"k": rng.normal(size=(8, 6)), "v": rng.normal(size=(8, 10))}
    original = dict(zip(original, _f32(*original.values()), strict=True))
    edited = {k: v * 0.5 for k, v in original.items()}
    (concept,) = _f32(rng.normal(size=(3, 8)))
    got = jax.jit(lambda e, o, c: erase.derive_embedding(e, o, c, reg=0.2))(edited, original, concept)
    want = reference_embedding(list(edited.values()), list(original.values()), concept, 0.2)
    assert _rel(got, want) <= 1e-4


def test_unedited_kernels_and_vanishing_reg_give_back_the_concept():
    rng = np.random.default_rng(13)
    kernels = _f32(rng.normal(size=(10, 6)), rng.normal(size=(10, 7)))  # Σ d_out = 13 ≥ d_in: S invertible
    (concept,) = _f32(rng.normal(size=(4, 10)))
    got = erase.derive_embedding(kernels, kernels, concept, reg=1e-7)
    np.testing.assert_allclose(got, concept, rtol=1e-4, atol=1e-4)


def test_edited_model_reproduces_the_original_outputs_on_the_embedding():
    """K′ = M K with M invertible and λ_reg → 0: c′ = c M⁻¹, so c′ K′ = c K (derived by hand)."""
    rng = np.random.default_rng(14)
    d_in = 9
    mixing = np.eye(d_in) + 0.3 * rng.normal(size=(d_in, d_in))
    original = _f32(rng.normal(size=(d_in, 12)), rng.normal(size=(d_in, 5)))
    edited = [mixing @ k for k in original]
    (concept,) = _f32(rng.normal(size=(2, d_in)))
    got = np.asarray(erase.derive_embedding(edited, original, concept, reg=1e-7), np.float64)
    want = np.linalg.solve(mixing.T, concept.T).T
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    for k_new, k_old in zip(edited, original, strict=True):
        np.testing.assert_allclose(got @ k_new, concept @ k_old, rtol=1e-3, atol=1e-3)


class TestErrors:
    kernel, keys, targets, preserve = _problem(seed=15)

    def call(self, **overrides):
        args = {
            "kernel": self.kernel,
            "erase_keys": self.keys,
            "erase_targets": self.targets,
            "preserve_keys": self.preserve,
        }
        scales = {k: overrides.pop(k) for k in ("erase_scale", "preserve_scale", "lamb") if k in overrides}
        args.update(overrides)
        return erase.uce(
            args["kernel"], args["erase_keys"], args["erase_targets"], args["preserve_keys"], **scales
        )

    def test_key_dimension_mismatch(self):
        with pytest.raises(ValueError, match="erase_keys has 11 columns .* d_in is 12"):
            self.call(erase_keys=self.keys[:, :11])
        with pytest.raises(ValueError, match="preserve_keys has 5 columns"):
            self.call(preserve_keys=np.ones((2, 5)))

    def test_target_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"erase_targets must have shape \(3, 7\).*got \(3, 6\)"):
            self.call(erase_targets=self.targets[:, :6])

    @pytest.mark.parametrize("name", ["erase_scale", "preserve_scale", "lamb"])
    @pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf")])
    def test_bad_scales(self, name, value):
        with pytest.raises(ValueError, match=f"{name} must be a finite number .*{value}"):
            self.call(**{name: value})

    def test_zero_lamb(self):
        with pytest.raises(ValueError, match="lamb must be a finite number > 0, got 0"):
            self.call(lamb=0)

    def test_empty_erase_set(self):
        with pytest.raises(ValueError, match="erase_keys is empty"):
            self.call(erase_keys=np.zeros((0, 12)), erase_targets=np.zeros((0, 7)))

    def test_non_finite_inputs(self):
        bad = self.keys.copy()
        bad[1, 2] = np.nan
        with pytest.raises(ValueError, match="erase_keys must be finite, found nan"):
            self.call(erase_keys=bad)
        bad_kernel = self.kernel.copy()
        bad_kernel[0, 0] = np.inf
        with pytest.raises(ValueError, match="kernel must be finite, found inf"):
            self.call(kernel=bad_kernel)

    def test_bad_kernel(self):
        with pytest.raises(ValueError, match="kernel must be a kernel of shape"):
            self.call(kernel=np.ones(12))
        with pytest.raises(TypeError, match="floating-point"):
            self.call(kernel=np.ones((12, 7), np.int32))

    def test_derive_embedding_errors(self):
        k = np.ones((4, 3), np.float32)
        with pytest.raises(ValueError, match="reg must be a finite number > 0"):
            erase.derive_embedding([k], [k], np.ones((1, 4)), reg=0.0)
        with pytest.raises(ValueError, match="differ in shape"):
            erase.derive_embedding([k], [np.ones((4, 2))], np.ones((1, 4)), reg=0.1)
        with pytest.raises(ValueError, match="share d_in.*has d_in 5"):
            erase.derive_embedding([k, np.ones((5, 3))], [k, np.ones((5, 3))], np.ones((1, 4)), reg=0.1)
        with pytest.raises(ValueError, match="concept_keys has 3 columns"):
            erase.derive_embedding([k], [k], np.ones((1, 3)), reg=0.1)
        with pytest.raises(ValueError, match="at least one kernel"):
            erase.derive_embedding([], [], np.ones((1, 3)), reg=0.1)

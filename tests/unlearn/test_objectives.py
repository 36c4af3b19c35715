"""RESTOR unlearning objectives against float64 NumPy formulas with hand-derived gradients.

Gradients with respect to logp (with Sᵦ = Σ m·logp, nᵦ = Σ m, M = Σ nᵦ, B' = #rows with nᵦ > 0):

* GA          ∂/∂logp = m / M
* NPO         ∂/∂logp_bt = (2/B') σ(β(Sᵦ − S_refᵦ)) m_bt
* NPO batch   with z = β(NLL − NLL_ref): ∂/∂logp = 2 (1 − σ(z)) m / M
* SimNPO      with uᵦ = −Sᵦ/nᵦ: ∂/∂logp_bt = (2/B') (1 − σ(β(uᵦ − δ))) m_bt / nᵦ
* GradDiff    γ_f m_f / M_f  and  −γ_r m_r / M_r
* KL forms, w.r.t. logits z with p = softmax z, c = log softmax z_ref, q = e^c:
  cross-entropy  (m/M) p_j (c_j − Σ p c);  reverse  −(m/M) p_j (log p_j − c_j − KL(p‖q));
  forward −(m/M)(p_j − q_j).
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import run_on_eight_devices, tree_flavours

from unlearnx.unlearn import objectives as obj


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hand_batch(seed=0):
    """Three sequences of five tokens: lengths 3, 5 and 0 (an empty row that must not count)."""
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(1.5, size=(3, 5))
    ref_logp = -rng.exponential(1.5, size=(3, 5))
    mask = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.float64)
    return logp, ref_logp, mask


def value_and_grad(fn, *arrays):
    args = [jnp.asarray(a, jnp.float32) for a in arrays]
    value, grad = jax.value_and_grad(fn)(*args)
    return float(value), np.asarray(grad, np.float64)


def test_gradient_ascent_and_nll():
    logp, _, mask = hand_batch()
    value, grad = value_and_grad(lambda lp: obj.gradient_ascent(lp, jnp.asarray(mask)), logp)
    assert value == pytest.approx((mask * logp).sum() / mask.sum(), rel=1e-6)
    np.testing.assert_allclose(grad, mask / mask.sum(), rtol=1e-6)
    assert float(obj.nll(jnp.asarray(logp), jnp.asarray(mask))) == pytest.approx(-value, rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_npo_per_sequence(beta):
    logp, ref_logp, mask = hand_batch()
    sums, ref_sums, n = (mask * logp).sum(1), (mask * ref_logp).sum(1), mask.sum(1)
    rows = n > 0
    x = beta * (sums - ref_sums)
    expected = (2 / beta) * np.mean(np.log1p(np.exp(x[rows])))
    expected_grad = (2 / rows.sum()) * (sigmoid(x) * rows)[:, None] * mask
    value, grad = value_and_grad(
        lambda lp: obj.npo(lp, jnp.asarray(ref_logp), jnp.asarray(mask), beta=beta), logp
    )
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_npo_batch_mean(beta):
    logp, ref_logp, mask = hand_batch(1)
    loss, ref_loss = -(mask * logp).sum() / mask.sum(), -(mask * ref_logp).sum() / mask.sum()
    z = beta * (loss - ref_loss)
    expected = -(2 / beta) * np.log(sigmoid(z))
    expected_grad = 2 * (1 - sigmoid(z)) * mask / mask.sum()
    value, grad = value_and_grad(
        lambda lp: obj.npo_batch_mean(lp, jnp.asarray(ref_logp), jnp.asarray(mask), beta=beta), logp
    )
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("beta", "delta"), [(4.5, 0.0), (1.0, 0.7)])
def test_simnpo(beta, delta):
    logp, _, mask = hand_batch(2)
    n = mask.sum(1)
    rows = n > 0
    u = -(mask * logp).sum(1) / np.maximum(n, 1)
    s = sigmoid(beta * (u - delta))
    expected = -(2 / beta) * np.mean(np.log(s[rows]))
    expected_grad = (2 / rows.sum()) * ((1 - s) * rows / np.maximum(n, 1))[:, None] * mask
    value, grad = value_and_grad(lambda lp: obj.simnpo(lp, jnp.asarray(mask), beta=beta, delta=delta), logp)
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_grad_diff():
    forget, retain, mask = hand_batch(3)
    retain_mask = np.ones_like(mask)
    fn = lambda f, r: obj.grad_diff(  # noqa: E731
        f, jnp.asarray(mask), r, jnp.asarray(retain_mask), forget_weight=0.5, retain_weight=2.0
    )
    value, (grad_f, grad_r) = jax.value_and_grad(fn, argnums=(0, 1))(
        jnp.asarray(forget, jnp.float32), jnp.asarray(retain, jnp.float32)
    )
    expected = 0.5 * (mask * forget).sum() / mask.sum() - 2.0 * retain.mean()
    assert float(value) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(grad_f, 0.5 * mask / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(grad_r, -2.0 * retain_mask / retain_mask.size, rtol=1e-6)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("form", obj.KL_FORMS)
def test_kl_forms(form):
    rng = np.random.default_rng(4)
    logits, ref_logits = rng.normal(size=(2, 4, 6)) * 2, rng.normal(size=(2, 4, 6)) * 2
    mask = np.array([[1, 1, 0, 1], [0, 1, 0, 0]], np.float64)
    m = mask[..., None] / mask.sum()
    log_p, c = log_softmax(logits), log_softmax(ref_logits)
    p, q = np.exp(log_p), np.exp(c)
    if form == "cross_entropy":
        per_token = (p * c).sum(-1)
        grad = m * p * (c - (p * c).sum(-1, keepdims=True))
    elif form == "reverse":
        divergence = (p * (log_p - c)).sum(-1, keepdims=True)
        per_token = -divergence[..., 0]
        grad = -m * p * (log_p - c - divergence)
    else:
        per_token = -(q * (c - log_p)).sum(-1)
        grad = -m * (p - q)
    value, got = value_and_grad(
        lambda z: obj.kl(z, jnp.asarray(ref_logits), jnp.asarray(mask), form=form), logits
    )
    assert value == pytest.approx((mask * per_token).sum() / mask.sum(), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(got, grad, rtol=1e-4, atol=1e-6)


def test_relation_to_open_unlearning_conventions():
    """The documented differences, in float64: open-unlearning's NPO averages the empty row in at
    (2/β)·log 2, and its KL retain term KL(P_ref ‖ P_θ) over all positions is −kl(form="forward", ones)."""
    beta = 0.5
    logp, ref_logp, mask = hand_batch(4)  # row 2 has no target token
    sums, ref_sums = (mask * logp).sum(1), (mask * ref_logp).sum(1)
    every_row = (2 / beta) * np.mean(np.log1p(np.exp(beta * (sums - ref_sums))))  # open-unlearning's mean
    ours = float(obj.npo(jnp.asarray(logp), jnp.asarray(ref_logp), jnp.asarray(mask), beta=beta))
    assert every_row == pytest.approx((2 * ours + (2 / beta) * np.log(2)) / 3, rel=1e-5)
    rng = np.random.default_rng(5)
    logits, ref_logits = rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 4, 6))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    log_r = ref_logits - np.log(np.exp(ref_logits).sum(-1, keepdims=True))
    batchmean = np.sum(np.exp(log_r) * (log_r - log_p)) / (2 * 4)  # kl_div(..., "batchmean") on [B·T, V]
    got = obj.kl(jnp.asarray(logits), jnp.asarray(ref_logits), jnp.ones((2, 4)), form="forward")
    assert -float(got) == pytest.approx(batchmean, rel=1e-5)


def test_token_log_probs_helpers():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 5, 7))
    tokens = rng.integers(0, 7, size=(2, 5))
    expected = np.take_along_axis(log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
    got = obj.next_token_log_probs(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_batch_npo_is_sequence_npo_at_beta_over_t_divided_by_t():
    """One sequence of T masked tokens: (2/β)·softplus(β(S − S_ref)/T) in both cases."""
    logp, ref_logp, mask = hand_batch(6)
    logp, ref_logp, mask = logp[1:2], ref_logp[1:2], mask[1:2]  # one sequence, T = 5 masked tokens
    t = mask.sum()
    for beta in (0.1, 1.0, 5.0):
        batch = float(
            obj.npo_batch_mean(jnp.asarray(logp), jnp.asarray(ref_logp), jnp.asarray(mask), beta=beta)
        )
        seq = float(obj.npo(jnp.asarray(logp), jnp.asarray(ref_logp), jnp.asarray(mask), beta=beta / t))
        assert batch == pytest.approx(seq / t, rel=1e-5)


def test_npo_gradient_at_reference_is_ascent_direction():
    """At θ = θ_ref: ∇_θ NPO = 2σ(0)∇_θ ℓ_θ = ∇_θ Σ m·logp_θ, the (sequence-summed) GA direction."""
    rng = np.random.default_rng(7)
    features = jnp.asarray(rng.normal(size=(1, 6, 4)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, size=(1, 6)))
    mask = jnp.asarray([[1, 0, 1, 1, 1, 0]], jnp.float32)
    weights = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)

    def logp(w):
        return obj.token_log_probs(features @ w, targets)

    ref = jax.lax.stop_gradient(logp(weights))
    npo_grad = jax.grad(lambda w: obj.npo(logp(w), ref, mask, beta=0.1))(weights)
    ga_grad = jax.grad(lambda w: obj.gradient_ascent(logp(w), mask))(weights)
    summed = jax.grad(lambda w: jnp.sum(mask * logp(w)))(weights)
    np.testing.assert_allclose(npo_grad, summed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npo_grad, float(mask.sum()) * ga_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
def test_task_vector_flavours(flavour):
    rng = np.random.default_rng(8)
    w_c, b_c = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    w_s, b_s = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    theta_c, unpack = tree_flavours(jnp.asarray(w_c), jnp.asarray(b_c))[flavour]
    theta_star, _ = tree_flavours(jnp.asarray(w_s), jnp.asarray(b_s))[flavour]
    same = jax.jit(obj.task_vector, static_argnums=2)(theta_c, theta_star, 0.0)
    assert jax.tree.structure(same) == jax.tree.structure(theta_c)
    for got, want in zip(unpack(same), (w_c, b_c), strict=True):
        np.testing.assert_array_equal(got, want)
    edited = jax.jit(obj.task_vector, static_argnums=2)(theta_c, theta_star, 0.5)
    for got, c, s in zip(unpack(edited), (w_c, b_c), (w_s, b_s), strict=True):
        np.testing.assert_allclose(got, c.astype(np.float64) - 0.5 * (s.astype(np.float64) - c), rtol=1e-6)


def test_jit_matches_eager():
    logp, ref_logp, mask = (jnp.asarray(a, jnp.float32) for a in hand_batch(9))
    cases = {
        "ga": lambda lp, rf, m: obj.gradient_ascent(lp, m),
        "npo": lambda lp, rf, m: obj.npo(lp, rf, m, beta=0.1),
        "npo_batch": lambda lp, rf, m: obj.npo_batch_mean(lp, rf, m, beta=0.1),
        "simnpo": lambda lp, rf, m: obj.simnpo(lp, m),
        "grad_diff": lambda lp, rf, m: obj.grad_diff(lp, m, rf, m),
    }
    for name, fn in cases.items():
        np.testing.assert_allclose(
            jax.jit(fn)(logp, ref_logp, mask), fn(logp, ref_logp, mask), rtol=1e-6, err_msg=name
        )


def test_all_zero_mask_under_jit_is_zero_not_nan():
    logp = jnp.full((2, 3), -1.0)
    zero = jnp.zeros((2, 3))
    for fn in (obj.gradient_ascent, lambda lp, m: obj.simnpo(lp, m), lambda lp, m: obj.npo(lp, lp, m)):
        value, grad = jax.jit(jax.value_and_grad(fn))(logp, zero)
        assert np.isfinite(value) and not np.any(grad)


def test_large_arguments_do_not_overflow():
    logp = jnp.full((1, 4), -500.0)
    ref = jnp.zeros((1, 4))
    mask = jnp.ones((1, 4))
    for value in (
        obj.npo(ref, logp, mask, beta=1.0),
        obj.npo_batch_mean(logp, ref, mask, beta=10.0),
        obj.simnpo(ref - 1e3, mask, beta=4.5),
        obj.simnpo(logp, mask, beta=4.5),
    ):
        assert np.isfinite(float(value))


def test_bad_input_raises():
    logp, ref_logp, mask = (jnp.asarray(a) for a in hand_batch())
    with pytest.raises(ValueError, match="mask shape"):
        obj.gradient_ascent(logp, mask[:, :4])
    with pytest.raises(ValueError, match="ref_logp"):
        obj.npo(logp, ref_logp[:2], mask)
    with pytest.raises(ValueError, match="forget set is empty"):
        obj.npo(logp, ref_logp, jnp.zeros_like(mask))
    with pytest.raises(ValueError, match="0/1"):
        obj.simnpo(logp, mask * 2)
    for beta in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            obj.npo(logp, ref_logp, mask, beta=beta)
        with pytest.raises(ValueError, match="beta"):
            obj.npo_batch_mean(logp, ref_logp, mask, beta=beta)
        with pytest.raises(ValueError, match="beta"):
            obj.simnpo(logp, mask, beta=beta)
    with pytest.raises(ValueError, match="delta"):
        obj.simnpo(logp, mask, delta=float("nan"))
    with pytest.raises(ValueError, match="retain_weight"):
        obj.grad_diff(logp, mask, logp, mask, retain_weight=-1.0)
    with pytest.raises(ValueError, match="form"):
        obj.kl(logp[..., None], logp[..., None], mask, form="js")
    with pytest.raises(ValueError, match="ref_logits"):
        obj.kl(logp[..., None], logp[:2, :, None], mask)
    with pytest.raises(ValueError, match="theta_star"):
        obj.task_vector({"w": jnp.ones(2)}, {"v": jnp.ones(2)}, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        obj.task_vector({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, float("nan"))


SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from unlearnx import parallel
    from unlearnx.unlearn import objectives as obj
    assert jax.device_count() == 8
    mesh = parallel.data_mesh()
    data = np.load(sys.argv[2])
    rows = NamedSharding(mesh, P("data"))
    lp, rf, m, lg, rlg = (jax.device_put(jnp.asarray(data[k]), rows) for k in ("lp", "rf", "m", "lg", "rlg"))
    assert len(lp.sharding.device_set) == 8
    fns = {
        "ga": lambda: jax.jit(jax.grad(obj.gradient_ascent))(lp, m),
        "npo": lambda: jax.jit(jax.grad(lambda a, b, c: obj.npo(a, b, c, beta=0.5)))(lp, rf, m),
        "npo_batch": lambda: jax.jit(jax.grad(lambda a, b, c: obj.npo_batch_mean(a, b, c, beta=0.5)))(
            lp, rf, m),
        "simnpo": lambda: jax.jit(jax.grad(lambda a, c: obj.simnpo(a, c)))(lp, m),
        "kl": lambda: jax.jit(jax.grad(lambda a, b, c: obj.kl(a, b, c, form="forward")))(lg, rlg, m),
        "value": lambda: jax.jit(lambda a, b, c: obj.npo(a, b, c, beta=0.5))(lp, rf, m),
    }
    np.savez(sys.argv[1], **{k: np.asarray(f()) for k, f in fns.items()})
    """
)


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
    rng = np.random.default_rng(10)
    data = {
        "lp": -rng.exponential(size=(8, 6)).astype(np.float32),
        "rf": -rng.exponential(size=(8, 6)).astype(np.float32),
        "m": (rng.random((8, 6)) < 0.6).astype(np.float32),
        "lg": rng.normal(size=(8, 6, 5)).astype(np.float32),
        "rlg": rng.normal(size=(8, 6, 5)).astype(np.float32),
    }
    np.savez(tmp_path / "in.npz", **data)
    run_on_eight_devices(SCRIPT, tmp_path / "out.npz", tmp_path / "in.npz")
    eight = np.load(tmp_path / "out.npz")
    d = {k: jnp.asarray(v) for k, v in data.items()}
    one = {
        "ga": jax.grad(obj.gradient_ascent)(d["lp"], d["m"]),
        "npo": jax.grad(lambda a, b, c: obj.npo(a, b, c, beta=0.5))(d["lp"], d["rf"], d["m"]),
        "npo_batch": jax.grad(lambda a, b, c: obj.npo_batch_mean(a, b, c, beta=0.5))(
            d["lp"], d["rf"], d["m"]
        ),
        "simnpo": jax.grad(lambda a, c: obj.simnpo(a, c))(d["lp"], d["m"]),
        "kl": jax.grad(lambda a, b, c: obj.kl(a, b, c, form="forward"))(d["lg"], d["rlg"], d["m"]),
        "value": obj.npo(d["lp"], d["rf"], d["m"], beta=0.5),
    }
    for name, value in one.items():
        np.testing.assert_allclose(eight[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_token_log_probs_rejects_ids_outside_the_vocabulary():
    logits = jnp.zeros((2, 3, 5))
    for bad, shown in ((jnp.array([[0, 1, 5], [2, 3, 1]]), "5"), (jnp.array([[0, -1, 4], [2, 3, 1]]), "-1")):
        with pytest.raises(ValueError, match=rf"\[0, 5\), found {shown}"):
            obj.token_log_probs(logits, bad)
    with pytest.raises(TypeError, match="integer token ids"):
        obj.token_log_probs(logits, jnp.zeros((2, 3)))

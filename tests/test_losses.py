"""The one token cross-entropy (unlearnx._losses) against float64 NumPy, and its gradient against the
log-softmax-gather form it replaced."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearnx import _losses


def _nll_float64(logits, ids):
    x = np.asarray(logits, np.float64)
    top = x.max(axis=-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(x - top).sum(axis=-1))
    return log_z - np.take_along_axis(x, np.asarray(ids)[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 11), (2, 3, 2, 257)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_nll_matches_float64(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    logits = rng.normal(0.0, 4.0, shape).astype(np.float32)
    ids = rng.integers(0, shape[-1], shape[:-1])
    cast = jnp.asarray(logits, dtype)
    got = jax.jit(_losses.token_nll)(cast, jnp.asarray(ids))
    assert got.dtype == jnp.float32 and got.shape == shape[:-1]
    np.testing.assert_allclose(got, _nll_float64(np.asarray(cast, np.float32), ids), rtol=2e-6, atol=2e-6)


def test_token_nll_of_a_hand_case():
    # logits (0, ln 3): p = (1/4, 3/4), so −log p = (ln 4, ln 4 − ln 3)
    logits = jnp.array([[0.0, np.log(3.0)], [0.0, np.log(3.0)]])
    np.testing.assert_allclose(
        _losses.token_nll(logits, jnp.array([0, 1])), [np.log(4.0), np.log(4.0 / 3.0)], rtol=1e-6
    )


def test_gradient_is_softmax_minus_onehot_and_equals_optax_bit_for_bit():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(0.0, 3.0, (64, 33)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 33, 64))
    new = jax.grad(lambda x: _losses.token_nll(x, ids).sum())(logits)
    optax_form = lambda x: optax.losses.softmax_cross_entropy_with_integer_labels(x, ids).sum()
    np.testing.assert_array_equal(new, jax.grad(optax_form)(logits))
    x = np.asarray(logits, np.float64)
    softmax = np.exp(x - x.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(new, softmax - np.eye(33)[np.asarray(ids)], atol=1e-6)


def test_small_losses_keep_more_precision_than_logsumexp_minus_logit():
    # Confident, correct predictions (the true logit 9 above the rest): the losses a loss-based MIA ranks.
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 1.0, (4096, 10)).astype(np.float32)
    logits[:, 0] += 9.0
    ids = np.zeros(4096, np.int64)
    exact = _nll_float64(logits, ids)
    ours = np.asarray(_losses.token_nll(jnp.asarray(logits), jnp.asarray(ids)), np.float64)
    theirs = np.asarray(optax.losses.softmax_cross_entropy_with_integer_labels(logits, ids), np.float64)
    ours_error, optax_error = np.median(np.abs(ours / exact - 1)), np.median(np.abs(theirs / exact - 1))
    assert ours_error < 5e-5 and optax_error > 3 * ours_error

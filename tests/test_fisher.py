"""unlearnx.fisher.diagonal against a float64 NumPy reference on softmax regression."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import softmax_regression_data, softmax_regression_grads, tree_flavours

from unlearnx import fisher


def _reference(x, y, w, b, estimator, batch_size):
    """Float64 importances from hand-derived per-example gradients."""
    grad_w, grad_b = softmax_regression_grads(x, y, w, b)
    if estimator == "empirical":
        return (grad_w**2).mean(0), (grad_b**2).mean(0)
    reduce = np.square if estimator == "batch_sq" else np.abs
    starts = range(0, len(x), batch_size)
    acc_w = sum(reduce(grad_w[s : s + batch_size].mean(0)) for s in starts)
    acc_b = sum(reduce(grad_b[s : s + batch_size].mean(0)) for s in starts)
    return acc_w / len(starts), acc_b / len(starts)


def _loss_for(unpack):
    def loss_fn(params, batch):
        w, b = unpack(params)
        logits = batch["x"] @ w + b
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(log_probs, batch["y"][:, None], axis=1)[:, 0]

    return loss_fn


def _batches(x, y, batch_size):
    return [
        {"x": jnp.asarray(x[s : s + batch_size], jnp.float32), "y": jnp.asarray(y[s : s + batch_size])}
        for s in range(0, len(x), batch_size)
    ]


@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
@pytest.mark.parametrize("estimator", ["empirical", "batch_sq", "batch_abs"])
@pytest.mark.parametrize("batch_size", [1, 5, 24])  # 5 leaves a smaller last batch of 4
def test_matches_float64_reference(flavour, estimator, batch_size):
    x, y, w, b = softmax_regression_data()
    params, unpack = tree_flavours(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))[flavour]
    result = fisher.diagonal(_loss_for(unpack), params, _batches(x, y, batch_size), estimator=estimator)
    assert jax.tree.structure(result) == jax.tree.structure(params)
    got_w, got_b = unpack(result)
    assert got_w.dtype == jnp.float32
    want_w, want_b = _reference(x, y, w, b, estimator, batch_size)
    np.testing.assert_allclose(got_w, want_w, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(got_b, want_b, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 100])
def test_chunking_does_not_change_empirical(chunk_size):
    x, y, w, b = softmax_regression_data(n=30)
    params, unpack = tree_flavours(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))["plain"]
    got = fisher.diagonal(_loss_for(unpack), params, _batches(x, y, 10), chunk_size=chunk_size)
    want_w, want_b = _reference(x, y, w, b, "empirical", 10)
    np.testing.assert_allclose(got["w"], want_w, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(got["b"], want_b, rtol=2e-5, atol=1e-7)


def test_batch_sq_depends_on_batch_size_empirical_does_not():
    x, y, w, b = softmax_regression_data(n=48)
    params, unpack = tree_flavours(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))["plain"]
    loss = _loss_for(unpack)

    def total(estimator, batch_size):
        result = fisher.diagonal(loss, params, _batches(x, y, batch_size), estimator=estimator)
        return float(sum(jnp.sum(v) for v in jax.tree.leaves(result)))

    emp = [total("empirical", bs) for bs in (1, 8, 48)]
    np.testing.assert_allclose(emp, emp[0], rtol=1e-5)
    sq = [total("batch_sq", bs) for bs in (1, 8, 48)]
    np.testing.assert_allclose(sq[0], emp[0], rtol=1e-5)  # B = 1: the same estimator
    assert sq[0] > sq[1] > sq[2]  # E[g_bar^2] = mu^2 + sigma^2 / B shrinks with B


@pytest.mark.parametrize("estimator", ["empirical", "batch_sq", "batch_abs"])
def test_jitted_matches_eager(estimator):
    x, y, w, b = softmax_regression_data()
    params, unpack = tree_flavours(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))["nnx"]
    batches = _batches(x, y, 7)  # a short last batch inside jit too
    loss = _loss_for(unpack)
    eager = fisher.diagonal(loss, params, batches, estimator=estimator, chunk_size=3)
    jitted = jax.jit(lambda p, bs: fisher.diagonal(loss, p, bs, estimator=estimator, chunk_size=3))(
        params, batches
    )
    assert jax.tree.structure(jitted) == jax.tree.structure(params)
    for a, c in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-6)


def test_sampled_label_loss_is_batch_invariant_and_distributed_like_the_model():
    logits = jnp.log(jnp.asarray([[0.7, 0.2, 0.1]], jnp.float32))
    x = jnp.arange(4000, dtype=jnp.float32)[:, None]  # distinct examples, same predictive distribution

    def logits_fn(params, batch):
        return jnp.broadcast_to(params["logits"], (batch["x"].shape[0], 3))

    loss_fn = fisher.sampled_label_loss(logits_fn, jax.random.key(0))
    losses = loss_fn({"logits": logits}, {"x": x})
    # The loss of the sampled label is -log p(label): recover the labels' frequencies.
    frequencies = [float(jnp.mean(jnp.isclose(losses, -jnp.log(p)))) for p in (0.7, 0.2, 0.1)]
    np.testing.assert_allclose(frequencies, [0.7, 0.2, 0.1], atol=0.03)
    # Evaluating each example alone gives the same sample (per-example gradients rely on it).
    alone = jnp.concatenate([loss_fn({"logits": logits}, {"x": x[i : i + 1]}) for i in range(5)])
    np.testing.assert_allclose(alone, losses[:5], rtol=1e-6)


def test_output_norm_loss_by_hand():
    loss_fn = fisher.output_norm_loss(lambda p, batch: batch["x"] * p["s"])
    got = loss_fn({"s": 2.0}, {"x": jnp.asarray([[1.0, 2.0], [0.0, -3.0]])})
    np.testing.assert_allclose(got, [4 * (1 + 4), 4 * 9])


class TestErrors:
    def setup_method(self):
        x, y, w, b = softmax_regression_data()
        self.params, unpack = tree_flavours(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))["plain"]
        self.loss = _loss_for(unpack)
        self.batches = _batches(x, y, 8)

    def test_unknown_estimator(self):
        with pytest.raises(ValueError, match="estimator must be one of"):
            fisher.diagonal(self.loss, self.params, self.batches, estimator="fisher")

    def test_no_batches(self):
        with pytest.raises(ValueError, match="batches is empty"):
            fisher.diagonal(self.loss, self.params, [])

    def test_empty_batch(self):
        empty = {"x": jnp.zeros((0, 5)), "y": jnp.zeros((0,), jnp.int32)}
        with pytest.raises(ValueError, match="batch 1 is empty"):
            fisher.diagonal(self.loss, self.params, [self.batches[0], empty])

    def test_ragged_batch(self):
        ragged = {"x": jnp.zeros((3, 5)), "y": jnp.zeros((2,), jnp.int32)}
        with pytest.raises(ValueError, match="disagree on the batch size"):
            fisher.diagonal(self.loss, self.params, [ragged])

    def test_mean_loss_is_rejected(self):
        def mean_loss(params, batch):
            return jnp.mean(self.loss(params, batch))

        with pytest.raises(ValueError, match=r"per-example losses of shape \(B,\) = \(8,\)"):
            fisher.diagonal(mean_loss, self.params, self.batches)

    def test_bad_chunk_size(self):
        with pytest.raises(ValueError, match="chunk_size"):
            fisher.diagonal(self.loss, self.params, self.batches, chunk_size=0)

    def test_integer_parameter(self):
        params = dict(self.params, step=jnp.asarray(3))
        with pytest.raises(TypeError, match="'step' has non-floating dtype"):
            fisher.diagonal(self.loss, params, self.batches)

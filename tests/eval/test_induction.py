"""Induction and copying measures against hand-built attention maps and NumPy float64 references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unlearnx.eval import induction


def _previous_loop(tokens: np.ndarray) -> np.ndarray:
    out = -np.ones(tokens.shape, int)
    for b, row in enumerate(tokens):
        for t in range(len(row)):
            for s in range(t):
                if row[s] == row[t]:
                    out[b, t] = s
    return out


def _prefix_loop(attention: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    earlier = _previous_loop(tokens)
    total, count = np.zeros(attention.shape[1:3]), 0
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            if earlier[b, t] >= 0:
                total += attention[b, :, :, t, earlier[b, t] + 1]
                count += 1
    return total / count


def _causal_random(rng, shape) -> np.ndarray:
    length = shape[-1]
    scores = rng.normal(size=shape)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def test_previous_occurrence_matches_a_loop():
    tokens = np.random.default_rng(0).integers(0, 5, (3, 17))
    np.testing.assert_array_equal(induction.previous_occurrence(jnp.asarray(tokens)), _previous_loop(tokens))


def test_perfect_induction_head_scores_one_and_uniform_scores_mean_inverse_position():
    span, batch = 12, 3
    rng = np.random.default_rng(1)
    segment = np.stack([rng.permutation(50)[:span] for _ in range(batch)])  # distinct tokens per copy
    tokens = np.concatenate([segment, segment], axis=1)
    length = 2 * span
    attention = np.zeros((batch, 1, 2, length, length))
    for t in range(length):
        # head 0: induction (t attends to the token after its earlier occurrence), else to BOS
        attention[:, 0, 0, t, t - span + 1 if t >= span else 0] = 1.0
        attention[:, 0, 1, t, : t + 1] = 1.0 / (t + 1)  # head 1: uniform causal attention
    score = np.asarray(jax.jit(induction.prefix_matching_score)(attention, tokens))
    assert score[0, 0] == pytest.approx(1.0, abs=1e-6)
    # only the second copy has earlier occurrences: q = span..2·span−1
    assert score[0, 1] == pytest.approx(np.mean([1.0 / (q + 1) for q in range(span, length)]), rel=1e-6)


def test_random_attention_matches_a_loop_reference():
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 6, (4, 15))  # many repeats within a row, latest occurrence matters
    attention = _causal_random(rng, (4, 3, 2, 15, 15))
    got = induction.prefix_matching_score(jnp.asarray(attention, jnp.float32), jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(got), _prefix_loop(attention, tokens), rtol=1e-5)


def test_prefix_matching_errors_and_traced_no_repeat():
    tokens = np.arange(8)[None]
    attention = np.full((1, 1, 1, 8, 8), 1 / 8)
    with pytest.raises(ValueError, match="no token occurs twice"):
        induction.prefix_matching_score(attention, tokens)
    assert float(jax.jit(induction.prefix_matching_score)(attention, tokens)[0, 0]) == 0.0
    with pytest.raises(ValueError, match=r"\[batch, layers, heads, T, T\]"):
        induction.prefix_matching_score(attention[0], tokens)
    with pytest.raises(ValueError, match="disagree"):
        induction.prefix_matching_score(attention, np.zeros((2, 8), int))
    with pytest.raises(ValueError, match="integer array"):
        induction.prefix_matching_score(attention, np.zeros((1, 8)))


def test_repeated_random_tokens():
    tokens = induction.repeated_random_tokens(jax.random.key(0), 3, 10, 256, repeats=3)
    assert tokens.shape == (3, 30)
    np.testing.assert_array_equal(tokens[:, :10], tokens[:, 10:20])
    np.testing.assert_array_equal(tokens[:, :10], tokens[:, 20:])
    with pytest.raises(ValueError, match="length must be an integer in \\[1, 2147483647\\], got 0"):
        induction.repeated_random_tokens(jax.random.key(0), 3, 0, 256)


def _nll(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """float64 −log p(x_t | x_<t) for t ≥ 1, [B, T − 1]."""
    logits = logits.astype(np.float64)[:, :-1]
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    return log_z - picked


def test_copying_loss_scores_second_copy_tokens_only():
    rng = np.random.default_rng(3)
    span = 6
    segment = rng.integers(0, 11, (3, span))
    tokens = np.concatenate([segment, segment], axis=1)
    logits = rng.normal(size=(3, 2 * span, 11)).astype(np.float32)
    expected = _nll(logits, tokens)[:, span:].mean()  # targets t = span+1 .. 2·span−1
    got = jax.jit(induction.copying_loss)(logits, tokens)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # first-copy logits and the prediction of the first second-copy token do not matter
    changed = logits.copy()
    changed[:, :span] = rng.normal(size=changed[:, :span].shape)
    assert float(induction.copying_loss(changed, tokens)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="same segment"):
        induction.copying_loss(logits, np.concatenate([segment, segment + 1], axis=1))
    with pytest.raises(ValueError, match="2ℓ"):
        induction.copying_loss(logits[:, :-1], tokens[:, :-1])
    with pytest.raises(ValueError, match="logits"):
        induction.copying_loss(logits[:2], tokens)


def test_icl_score_is_late_minus_early_loss():
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 9, (5, 20))
    logits = rng.normal(size=(5, 20, 9)).astype(np.float32)
    nll = _nll(logits, tokens)  # column j is the loss of target position j + 1
    expected = nll[:, 17 - 1].mean() - nll[:, 3 - 1].mean()
    got = jax.jit(lambda lg, tk: induction.icl_score(lg, tk, late=17, early=3))(logits, tokens)
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    windowed = induction.icl_score(logits, tokens, late=(15, 20), early=(1, 5))
    assert float(windowed) == pytest.approx(nll[:, 14:19].mean() - nll[:, 0:4].mean(), rel=1e-5, abs=1e-6)
    for late, early in ((17, 0), (3, 3), (20, 3), ((10, 21), 3), (12, (5, 13))):
        with pytest.raises(ValueError, match="1 <= early < late <= T - 1 = 19"):
            induction.icl_score(logits, tokens, late=late, early=early)


def test_ov_copying_score_identity_negation_and_reference():
    eye = jnp.eye(6)
    assert float(induction.ov_copying_score(eye, eye, eye, eye)) == pytest.approx(1.0, abs=1e-6)
    assert float(induction.ov_copying_score(eye, eye, -eye, eye)) == pytest.approx(-1.0, abs=1e-6)
    assert float(induction.ov_copying_score(eye, eye, 0 * eye, eye)) == 0.0
    rng = np.random.default_rng(5)
    w_e, w_v, w_o, w_u = (rng.normal(size=s) for s in ((20, 8), (8, 3), (3, 8), (8, 20)))
    eigenvalues = np.linalg.eigvals((w_e @ w_v @ w_o @ w_u).T)  # the full V × V circuit, float64
    expected = eigenvalues.sum().real / np.abs(eigenvalues).sum()
    got = jax.jit(induction.ov_copying_score)(*(jnp.asarray(w, jnp.float32) for w in (w_e, w_v, w_o, w_u)))
    assert float(got) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="OV circuit kernels"):
        induction.ov_copying_score(w_e, w_v, w_o, w_u[:, :5])


def test_decoder_ov_scores_per_head_on_every_tree_flavour():
    rng = np.random.default_rng(6)
    vocab, d, heads = 12, 8, 2
    params = {
        "embed": {"embedding": rng.normal(size=(vocab, d))},
        "unembed": {"kernel": rng.normal(size=(d, vocab)), "bias": np.zeros(vocab)},
    }
    for layer in range(2):
        params[f"blocks_{layer}"] = {
            "attn": {
                "to_v": {"kernel": rng.normal(size=(d, d))},
                "to_out_0": {"kernel": rng.normal(size=(d, d)), "bias": np.zeros(d)},
            }
        }
    expected = np.zeros((2, heads))
    for layer in range(2):
        attn = params[f"blocks_{layer}"]["attn"]
        for head in range(heads):
            cols = slice(head * 4, head * 4 + 4)
            circuit = params["embed"]["embedding"] @ attn["to_v"]["kernel"][:, cols]
            circuit = circuit @ attn["to_out_0"]["kernel"][cols] @ params["unembed"]["kernel"]
            lam = np.linalg.eigvals(circuit)
            expected[layer, head] = lam.sum().real / np.abs(lam).sum()
    as_f32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    state = nnx.State(jax.tree.map(nnx.Param, as_f32))
    for tree in ({"params": as_f32}, as_f32, state):
        np.testing.assert_allclose(induction.decoder_ov_scores(tree, heads), expected, atol=1e-4)
    with pytest.raises(ValueError, match="decoder_lm parameters"):
        induction.decoder_ov_scores({"w": np.ones(3)}, heads)
    with pytest.raises(ValueError, match="not divisible by 3"):
        induction.decoder_ov_scores(as_f32, 3)


def test_period_form_scores_a_perfect_head_one_even_with_repeats_inside_the_segment():
    segment = np.array([3, 5, 3, 7, 5, 2])  # tokens repeat inside the segment
    period = len(segment)
    tokens = np.tile(segment, 2)[None]
    length = tokens.shape[1]
    perfect = np.zeros((1, 1, 1, length, length))
    uniform = np.tril(np.ones((length, length))) / np.arange(1, length + 1)[:, None]
    for t in range(length):
        # an ideal induction head attends to the token after the same token one copy back
        perfect[0, 0, 0, t, t - period + 1 if t >= period else 0] = 1.0
    score = induction.prefix_matching_score(jnp.asarray(perfect), jnp.asarray(tokens), period=period)
    np.testing.assert_allclose(np.asarray(score), [[1.0]], rtol=1e-6)
    # the latest-occurrence form counts in-segment repeats too, so the same head scores below 1
    assert float(induction.prefix_matching_score(jnp.asarray(perfect), jnp.asarray(tokens))[0, 0]) < 1.0
    uniform_map = jnp.asarray(uniform[None, None, None])
    uniform_score = induction.prefix_matching_score(uniform_map, jnp.asarray(tokens), period=period)
    expected = np.mean([1.0 / (t + 1) for t in range(period, length)])
    np.testing.assert_allclose(np.asarray(uniform_score), [[expected]], rtol=1e-6)
    with pytest.raises(ValueError, match="period"):
        induction.prefix_matching_score(jnp.asarray(perfect), jnp.asarray(tokens), period=length)


def _hand_built_induction_model(length: int, vocab: int, scale: float = 40.0):
    """A 2-layer attention-only ``decoder_lm`` (d = 64, 4 heads of 16) whose weights implement the
    induction circuit by hand; every other head has zero weights (uniform causal attention, no output).

    Residual dims: 0–15 position one-hot, 16–31 token one-hot, 32–47 "previous token" (written by layer 1),
    48–63 the output token (written by layer 2, the only dims the unembedding reads).
    Layer 1 head 0 (previous-token head): q(pos t)·k(pos s) = scale when s = t − 1; its OV copies the
    token one-hot into the previous-token dims. Layer 2 head 0 (induction head): q(token x_t)·k(previous
    token of s) = scale when x_{s−1} = x_t, so it attends to the position *after* the earlier occurrence;
    its OV copies that position's token into the output dims: W_E W_V W_O W_U is the identity (score 1).
    LayerNorm subtracts the same mean and divides by the same std at every position (each position holds
    three one-hots), which shifts every score of a query row equally and leaves the softmax unchanged up
    to the 1/σ² factor absorbed by ``scale``."""
    from unlearnx.models import decoder_lm

    d, width = 64, 16
    model = decoder_lm(vocab, max_len=length, d_model=d, num_layers=2, num_heads=4, mlp_ratio=0,
                       return_attention=True)  # fmt: skip
    params = jax.tree.map(np.zeros_like, jax.device_get(model.init(jax.random.key(0)))["params"])
    params = jax.tree.map(np.array, params)
    params["ln_f"]["scale"][:] = 1.0
    for layer in range(2):
        params[f"blocks_{layer}"]["ln_1"]["scale"][:] = 1.0
    eye = np.eye(width)
    params["pos_embed"]["embedding"][:length, :length] = np.eye(length)
    params["embed"]["embedding"][:vocab, width : width + vocab] = np.eye(vocab)
    first, second = params["blocks_0"]["attn"], params["blocks_1"]["attn"]
    # previous-token head: query position t → key position t − 1 (position 0 sees only itself)
    first["to_q"]["kernel"][:width, :width] = scale * np.eye(width, k=-1)  # q_t = scale · e_{t−1}
    first["to_k"]["kernel"][:width, :width] = eye
    first["to_v"]["kernel"][width : 2 * width, :width] = eye
    first["to_out_0"]["kernel"][:width, 2 * width : 3 * width] = eye
    # induction head: query token x_t → key whose previous token is x_t; copies the key's token
    second["to_q"]["kernel"][width : 2 * width, :width] = scale * eye
    second["to_k"]["kernel"][2 * width : 3 * width, :width] = eye
    second["to_v"]["kernel"][width : 2 * width, :width] = eye
    second["to_out_0"]["kernel"][:width, 3 * width :] = eye
    params["unembed"]["kernel"][3 * width : 3 * width + vocab, :vocab] = np.eye(vocab) * 10.0
    return model, {"params": jax.tree.map(jnp.asarray, params)}


def test_hand_built_induction_model_scores_one_on_the_probe_and_its_ov_circuit_copies():
    """End to end on a real ``decoder_lm``: the attention it returns is [query, key] with the induction
    head's weight on s + 1 (the token after the earlier occurrence), the probe scores it ≈ 1 and the other
    heads at the uniform-causal chance level, and ``decoder_ov_scores`` reads its OV circuit as +1."""
    length, vocab, period = 16, 16, 8
    model, variables = _hand_built_induction_model(length, vocab)
    rng = np.random.default_rng(0)
    segments = np.stack([rng.permutation(vocab)[:period] for _ in range(4)])  # no repeat inside a segment
    tokens = jnp.asarray(np.tile(segments, (1, 2)), jnp.int32)
    logits, attention = model.apply(variables, tokens)
    attention = np.asarray(attention, np.float64)
    # layer 1 head 0 is a previous-token head, layer 2 head 0 attends from t to t − period + 1
    t = np.arange(1, length)
    assert attention[:, 0, 0, t, t - 1].min() > 0.99
    t = np.arange(period + 1, length)
    assert attention[:, 1, 0, t, t - period + 1].min() > 0.99
    # the first token of the second copy (x_ℓ = x_0) matches key 1 and also key 0, where the previous-token
    # head attended to itself (position 0 has no previous token): half its weight each
    np.testing.assert_allclose(attention[:, 1, 0, period, :2], 0.5, atol=1e-6)
    score = np.asarray(induction.prefix_matching_score(jnp.asarray(attention), tokens, period=period))
    np.testing.assert_allclose(score[1, 0], 1.0 - 0.5 / period, atol=1e-5)  # hand-computed: 15/16
    assert score[0, 0] < 0.01
    chance = induction.chance_prefix_matching(length, period)
    np.testing.assert_allclose(score[:, 1:], chance, rtol=1e-5)  # zero-weight heads: uniform causal
    # the model copies: every scored second-copy token is predicted almost surely except x_{ℓ+1}, predicted
    # from position ℓ, whose split attention gives x_0 and x_1 equal logits: ln 2 over ℓ − 1 targets
    np.testing.assert_allclose(
        float(induction.copying_loss(logits, tokens)), np.log(2) / (period - 1), atol=1e-3
    )
    ov = induction.decoder_ov_scores(variables, 4)
    np.testing.assert_allclose(ov[1, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(ov[0], 0.0, atol=1e-6)  # layer 1 writes where the unembedding never reads

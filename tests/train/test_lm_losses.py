"""next_token_losses against a float64 NumPy reference, and an LM trained through fit(loss=...)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearnx import models, train


def reference_next_token_losses(logits, tokens, mask):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    out = []
    for b in range(tokens.shape[0]):
        total, count = 0.0, 0.0
        for t in range(1, tokens.shape[1]):
            if mask[b, t]:
                total -= log_probs[b, t - 1, tokens[b, t]]
                count += 1
        out.append(total / count if count else 0.0)
    return np.array(out)


@pytest.mark.parametrize("with_mask", [False, True])
def test_next_token_losses_matches_numpy(with_mask):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 11)).astype(np.float32)
    tokens = rng.integers(0, 11, size=(4, 7))
    mask = rng.integers(0, 2, size=(4, 7)) if with_mask else np.ones((4, 7), int)
    mask[3] = 0  # a row without targets contributes 0
    batch = {"x": tokens, "mask": mask} if with_mask else {"x": tokens}
    expected = reference_next_token_losses(logits, tokens, mask if with_mask else np.ones((4, 7), int))
    got = jax.jit(train.next_token_losses)(jnp.asarray(logits), batch)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_fit_trains_a_decoder_on_a_periodic_sequence():
    model = models.decoder_lm(8, max_len=16, d_model=32, num_layers=1, num_heads=2)
    variables = model.init(jax.random.key(0))
    tokens = np.stack([np.roll(np.arange(16) % 8, shift) for shift in range(8)]).astype(np.int32)
    before = float(jnp.mean(train.next_token_losses(model.apply(variables, tokens), {"x": tokens})))
    trained, _ = train.fit(
        model,
        variables,
        {"x": tokens},
        optimizer=optax.adam(1e-2),
        epochs=60,
        batch_size=8,
        rng=jax.random.key(1),
        loss=train.next_token_losses,
        progress=False,
    )
    after = float(jnp.mean(train.next_token_losses(model.apply(trained, tokens), {"x": tokens})))
    assert before > 1.5 and after < 0.1 * before

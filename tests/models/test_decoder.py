"""The decoder LM's returned attention is the attention its forward pass applies (NumPy float64 reference)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import models
from unlearnx.models._decoder import decoder_lm


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _reference(params, tokens, heads, given_attention=None):
    """Pre-LN GPT forward in float64. Mixes values with ``given_attention`` (a returned map) when supplied,
    else with its own causal softmax; returns (logits, its own softmax maps)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    batch, length = tokens.shape
    h = p["embed"]["embedding"][tokens] + p["pos_embed"]["embedding"][:length]
    causal = np.tril(np.ones((length, length), bool))
    own_maps = []
    layer = 0
    while f"blocks_{layer}" in p:
        block = p[f"blocks_{layer}"]
        x = _layer_norm(h, block["ln_1"])
        attn = block["attn"]
        d_head = attn["to_q"]["kernel"].shape[1] // heads

        q, k, v = (
            (x @ attn[name]["kernel"]).reshape(batch, length, heads, d_head).transpose(0, 2, 1, 3)
            for name in ("to_q", "to_k", "to_v")
        )
        scores = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d_head), -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        own_maps.append(weights)
        mixing = weights if given_attention is None else np.asarray(given_attention[:, layer], np.float64)
        mixed = (mixing @ v).transpose(0, 2, 1, 3).reshape(batch, length, heads * d_head)
        h = h + mixed @ attn["to_out_0"]["kernel"] + attn["to_out_0"]["bias"]
        if "mlp" in block:
            mlp = block["mlp"]
            hidden = _gelu_tanh(_layer_norm(h, block["ln_2"]) @ mlp["fc_in"]["kernel"] + mlp["fc_in"]["bias"])
            h = h + hidden @ mlp["fc_out"]["kernel"] + mlp["fc_out"]["bias"]
        layer += 1
    logits = _layer_norm(h, p["ln_f"]) @ p["unembed"]["kernel"] + p["unembed"]["bias"]
    return logits, np.stack(own_maps, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("mlp_ratio", [4, 0])
def test_returned_attention_is_the_applied_attention(mlp_ratio):
    heads = 2
    kwargs = dict(max_len=12, d_model=16, num_layers=2, num_heads=heads, mlp_ratio=mlp_ratio)
    with_maps = decoder_lm(40, return_attention=True, **kwargs)
    plain = decoder_lm(40, **kwargs)
    variables = with_maps.init(jax.random.key(1))
    # larger weights than the 0.02 init so that attention is far from uniform
    params = jax.tree.map(lambda a: a * 8.0 if a.ndim == 2 else a, variables["params"])
    variables = {"params": params}
    tokens = np.random.default_rng(0).integers(0, 40, (3, 11))
    logits, attention = jax.jit(lambda v, t: with_maps.apply(v, t))(variables, jnp.asarray(tokens))
    attention = np.asarray(attention)
    assert attention.shape == (3, 2, heads, 11, 11)
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(attention, k=1) == 0)
    assert attention.std() > 0.05  # not uniform: the comparison below is informative
    # logits recomputed in float64 from the *returned* maps equal the model's logits ...
    from_returned, own = _reference(params, tokens, heads, given_attention=attention)
    np.testing.assert_allclose(np.asarray(logits), from_returned, rtol=2e-4, atol=2e-4)
    # ... and the maps equal an independent softmax of the same forward pass
    np.testing.assert_allclose(attention, own, atol=2e-5)
    np.testing.assert_allclose(
        np.asarray(plain.apply(variables, jnp.asarray(tokens))), np.asarray(logits), rtol=1e-5, atol=1e-4
    )
    # a different map would change the logits: the check above is sensitive to the mixing weights
    shuffled, _ = _reference(params, tokens, heads, given_attention=attention[:, ::-1])
    assert np.abs(shuffled - from_returned).max() > 1e-2


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: models.decoder_lm(50, d_model=30, num_heads=4), "d_model 30 is not divisible by"),
        (lambda: models.decoder_lm(50, num_layers=0), "decoder_lm: num_layers must be >= 1, got 0"),
        (lambda: models.decoder_lm(50, mlp_ratio=-1), "decoder_lm: mlp_ratio must be >= 0, got -1"),
        (lambda: models.text_encoder(50, width=30, num_heads=4), "text_encoder: width 30 is not divisible"),
        (lambda: models.text_encoder(0), "text_encoder: vocab_size must be >= 1, got 0"),
    ],
)
def test_bad_sizes_raise_naming_the_model_and_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()

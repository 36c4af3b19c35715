"""unlearnx.diffusers_io.rece_checkpoint: the official RECE pipeline file to file equals reading the
kernels, erase.last_word_rows + erase.rece by hand and writing them back; a states file without token counts
is refused."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from unlearnx import diffusers_io, erase, tree

D_IN, LENGTH = 6, 5


def _files(folder: str, *, tokens: bool = True) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    tensors = {"conv_in.bias": rng.normal(size=4).astype(np.float32)}
    for block, width in (("down_blocks.0.attentions.0", 4), ("mid_block.attentions.0", 8)):
        for kv in "kv":
            key = f"{block}.transformer_blocks.0.attn2.to_{kv}.weight"
            tensors[key] = rng.normal(size=(width, D_IN)).astype(np.float32)
    unet = os.path.join(folder, "unet.safetensors")
    safetensors.numpy.save_file(tensors, unet)
    states = {
        name: rng.normal(size=(n, LENGTH, D_IN))
        for name, n in (("concept", 1), ("guide", 1), ("preserve", 2), ("initial_preserve", 1))
    }
    counts = {"concept_tokens": np.array([3]), "guide_tokens": np.array([2])} if tokens else {}
    path = os.path.join(folder, "states.npz")
    np.savez(path, **states, **counts)
    return unet, path


def test_rece_checkpoint_equals_the_pipeline_by_hand(tmp_path):
    unet, states_path = _files(str(tmp_path))
    out = str(tmp_path / "edited.safetensors")
    record = diffusers_io.rece_checkpoint(unet, states_path, out, epochs=2, reg=0.2, lamb=0.4)
    states = diffusers_io.load_text_states(states_path, ("concept", "guide", "preserve", "initial_preserve"))
    original = diffusers_io.read_cross_attention(unet, dtype=jnp.float32)
    concept, guide = states["concept"], states["guide"]
    rows, targets = erase.last_word_rows(concept, guide, concept_tokens=3, guide_tokens=2)
    expected, history = erase.rece(
        original,
        concept,
        guide,
        states["preserve"],
        initial_concept_keys=rows,
        initial_guide_keys=targets,
        initial_preserve_keys=states["initial_preserve"],
        epochs=2,
        reg=0.2,
        lamb=0.4,
    )
    written = diffusers_io.read_cross_attention(out)
    for path, kernel in tree.leaves_with_paths(expected):
        np.testing.assert_allclose(dict(tree.leaves_with_paths(written))[path], kernel, rtol=1e-6, atol=1e-6)
    assert record["edited_keys"] == tuple(
        sorted(k for k in safetensors.numpy.load_file(unet) if "attn2" in k)
    )
    assert record["rece_rounds"] == 2 and record["initial_rows"] == rows.shape[0] == LENGTH - 1
    assert record["kernel_relative_change"] == pytest.approx(float(history["distance"][-1]))
    assert record["kv_change_preserve"] > 0 and record["c_prime_distance"] > 0


def test_rece_checkpoint_needs_the_token_counts(tmp_path):
    unet, states_path = _files(str(tmp_path), tokens=False)
    with pytest.raises(ValueError, match="token counts"):
        diffusers_io.rece_checkpoint(unet, states_path, str(tmp_path / "edited.safetensors"))

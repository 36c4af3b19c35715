"""unlearnx.diffusers_io: a tiny UNet file with SD v1.4's key names in, its attn2 to_k/to_v kernels in Flax
layout out, RECE on them, and back: only the edited weights change, byte for byte; text states from .npz."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from safetensors import safe_open

from unlearnx import diffusers_io, erase, tree

D_IN = 12
ATTN2 = {  # a subset of SD v1.4's cross-attention blocks at small widths: (PyTorch prefix, out width)
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2": 8,
    "down_blocks.0.attentions.1.transformer_blocks.0.attn2": 8,
    "mid_block.attentions.0.transformer_blocks.0.attn2": 16,
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2": 16,
}
METADATA = {"format": "pt"}
HYPER = {"epochs": 1, "reg": 0.1, "erase_scale": 1.0, "preserve_scale": 1.0, "lamb": 0.5}


def _flax(prefix: str, name: str) -> str:
    return "params/" + re.sub(r"\.(\d+)", r"_\1", prefix).replace(".", "/") + f"/{name}/kernel"


def _tensors(dtype, seed=0, attn2=ATTN2):
    """SD-named tensors: attn2 to_k/to_v (edited) and others (attn1, attn2 to_q/to_out, conv, biases)."""
    rng = np.random.default_rng(seed)

    def w(*shape, kind=dtype):
        return (rng.normal(size=shape) / np.sqrt(shape[-1])).astype(kind)

    tensors = {}
    for prefix, width in attn2.items():
        tensors[f"{prefix}.to_k.weight"] = w(width, D_IN)
        tensors[f"{prefix}.to_v.weight"] = w(width, D_IN)
        tensors[f"{prefix}.to_q.weight"] = w(width, width)
        tensors[f"{prefix}.to_out.0.weight"] = w(width, width)
        tensors[f"{prefix}.to_out.0.bias"] = w(width)
        attn1 = prefix.replace("attn2", "attn1")
        tensors[f"{attn1}.to_k.weight"] = w(width, width)
        tensors[f"{attn1}.to_v.weight"] = w(width, width)
    tensors["conv_in.weight"] = w(8, 4, 3, 3)
    tensors["time_embedding.linear_1.bias"] = w(32, kind=np.float32)  # a tensor of another dtype
    tensors["down_blocks.0.resnets.0.norm1.weight"] = w(8)
    return tensors


def _write(folder, dtype, name="unet.safetensors", **kwargs):
    path = os.path.join(folder, name)
    tensors = _tensors(dtype, **kwargs)
    safetensors.numpy.save_file(tensors, path, metadata=METADATA)
    return path, tensors


def _keys(seed=1, rows=5):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(n, D_IN)).astype(np.float32) for n in (rows, rows, 3))


def _header_size(path):
    with open(path, "rb") as stream:
        return 8 + int.from_bytes(stream.read(8), "little")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_read_gives_transposed_attn2_kernels_only(tmp_path, dtype):
    path, tensors = _write(tmp_path, dtype)
    params = diffusers_io.read_cross_attention(path)
    leaves = dict(tree.leaves_with_paths(params))
    names = [(prefix, name) for prefix in ATTN2 for name in ("to_k", "to_v")]
    expected = {_flax(prefix, name): f"{prefix}.{name}.weight" for prefix, name in names}
    assert set(leaves) == set(expected)
    for path_str, key in expected.items():
        assert leaves[path_str].dtype == dtype
        np.testing.assert_array_equal(leaves[path_str], tensors[key].T)
    assert all(jax.tree.leaves(tree.select(params, erase.cross_attention_kv)))
    upcast = diffusers_io.read_cross_attention(path, dtype=np.float32)
    assert {leaf.dtype for leaf in jax.tree.leaves(upcast)} == {np.dtype(np.float32)}


def test_sd_v14_checkpoint_at_real_shapes(tmp_path):
    """SD v1.4's 32 cross-attention weights at their real shapes (fp16): the paths and shapes of
    erase.sd_cross_attention_shapes; an fp32 edit of all 32 written back and cast."""
    blocks = [(f"down_blocks.{b}", 2, 320 * 2**b) for b in range(3)] + [("mid_block", 1, 1280)]
    blocks += [(f"up_blocks.{b}", 3, 1280 // 2 ** (b - 1)) for b in range(1, 4)]
    rng = np.random.default_rng(0)
    tensors = {"conv_in.weight": rng.normal(size=(320, 4, 3, 3)).astype(np.float16)}
    for block, count, width in blocks:
        for i in range(count):
            for name in ("to_k", "to_v", "to_q"):
                key = f"{block}.attentions.{i}.transformer_blocks.0.attn2.{name}.weight"
                tensors[key] = (rng.normal(size=(width, 768 if name != "to_q" else width)) / 28).astype(
                    np.float16
                )
    source = os.path.join(tmp_path, "diffusion_pytorch_model.fp16.safetensors")
    safetensors.numpy.save_file(tensors, source, metadata=METADATA)
    params = diffusers_io.read_cross_attention(source)
    shapes = {path: leaf.shape for path, leaf in tree.leaves_with_paths(params)}
    assert shapes == erase.sd_cross_attention_shapes()
    new = jax.tree.map(lambda kernel: (kernel * 1.5).astype(np.float32), params)  # rece is ~15 s on CPU here
    out = os.path.join(tmp_path, "edited.safetensors")
    assert len(diffusers_io.write_cross_attention(source, new, out)) == 32
    _check_edited_file(source, out, tensors, new, np.float16)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_without_edit_is_byte_identical(tmp_path, dtype):
    path, _ = _write(tmp_path, dtype)
    out = os.path.join(tmp_path, "out.safetensors")
    written = diffusers_io.write_cross_attention(path, diffusers_io.read_cross_attention(path), out)
    assert written == tuple(sorted(f"{p}.{n}.weight" for p in ATTN2 for n in ("to_k", "to_v")))
    with open(path, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def _check_edited_file(source, out, tensors, new, dtype):
    """The written file: the source's keys, shapes, dtypes, header and metadata; unedited tensors
    byte-identical; each edited to_k/to_v equal to rece's kernel transposed and cast to ``dtype``."""
    with open(source, "rb") as a, open(out, "rb") as b:
        size = _header_size(source)
        assert a.read(size) == b.read(size)
    with safe_open(out, framework="np") as handle:
        assert handle.metadata() == METADATA
    loaded = safetensors.numpy.load_file(out)
    assert set(loaded) == set(tensors)
    kernels = dict(tree.leaves_with_paths(new))
    edited, expected_edits = 0, sum(1 for key in tensors if re.search(r"attn2\.to_[kv]\.weight$", key))
    for key, original in tensors.items():
        assert (loaded[key].dtype, loaded[key].shape) == (original.dtype, original.shape), key
        prefix, _, rest = key.rpartition(".to_")
        if "attn2" in prefix and rest in ("k.weight", "v.weight"):
            expected = np.asarray(kernels[_flax(prefix, "to_" + rest[0])]).T.astype(dtype)
            assert loaded[key].tobytes() == expected.tobytes(), key
            assert not np.array_equal(loaded[key], original), key  # the edit changed it
            edited += 1
        else:
            assert loaded[key].tobytes() == original.tobytes(), key
    assert edited == expected_edits > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rece_edit_written_back(tmp_path, dtype):
    source, tensors = _write(tmp_path, dtype)
    params = diffusers_io.read_cross_attention(source)
    new, history = erase.rece(params, *_keys(), **HYPER)
    assert history["change"].shape == (2,)
    out = os.path.join(tmp_path, "edited.safetensors")
    diffusers_io.write_cross_attention(source, new, out)
    _check_edited_file(source, out, tensors, new, dtype)


def test_fp32_edit_of_an_fp16_file_is_cast_back_and_tree_flavours(tmp_path):
    source, tensors = _write(tmp_path, np.float16)
    params = diffusers_io.read_cross_attention(source, dtype=np.float32)
    new, _ = erase.rece(params, *_keys(), **HYPER)
    out = os.path.join(tmp_path, "edited.safetensors")
    diffusers_io.write_cross_attention(source, new, out)
    _check_edited_file(source, out, tensors, new, np.float16)
    for flavour in (new["params"], nnx.State(new)):  # no leading "params" level; an NNX State
        again = os.path.join(tmp_path, "again.safetensors")
        diffusers_io.write_cross_attention(source, flavour, again)
        with open(out, "rb") as a, open(again, "rb") as b:
            assert a.read() == b.read()


def test_bf16_kernels(tmp_path):
    source, tensors = _write(tmp_path, jnp.bfloat16)
    try:
        params = diffusers_io.read_cross_attention(source)
    except ValueError as error:  # a safetensors release whose NumPy API cannot decode BF16
        pytest.skip(str(error))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}
    new, _ = erase.rece(params, *_keys(), **HYPER)
    out = os.path.join(tmp_path, "edited.safetensors")
    diffusers_io.write_cross_attention(source, new, out)
    _check_edited_file(source, out, tensors, new, jnp.bfloat16)


def _first(params):
    return next(iter(tree.leaves_with_paths(params)))[0]


def _replace(params, path, value):
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: value if tree.key_path_str(p) == path else leaf, params
    )


def test_read_errors(tmp_path):
    plain = os.path.join(tmp_path, "plain.safetensors")
    safetensors.numpy.save_file({"conv_in.weight": np.ones((2, 2), np.float32)}, plain)
    with pytest.raises(ValueError, match=r"no cross-attention weight.*conv_in\.weight"):
        diffusers_io.read_cross_attention(plain)
    key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    for name, value, message in (
        ("int.safetensors", np.ones((4, 3), np.int32), r"to_k\.weight.*dtype I32"),
        ("three_d.safetensors", np.ones((4, 3, 1), np.float32), r"to_k\.weight.*2-D"),
    ):
        bad = os.path.join(tmp_path, name)
        safetensors.numpy.save_file({key: value}, bad)
        with pytest.raises(ValueError, match=message):
            diffusers_io.read_cross_attention(bad)
    garbage = os.path.join(tmp_path, "garbage.safetensors")
    with open(garbage, "wb") as stream:
        stream.write(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        diffusers_io.read_cross_attention(garbage)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        diffusers_io.read_cross_attention(os.path.join(tmp_path, "missing.safetensors"))
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        diffusers_io.read_cross_attention(plain, dtype=np.int32)


def test_write_errors(tmp_path):
    source, _ = _write(tmp_path, np.float16)
    params = diffusers_io.read_cross_attention(source)
    out = os.path.join(tmp_path, "out.safetensors")
    path = _first(params)
    kernel = dict(tree.leaves_with_paths(params))[path]
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    cases = [
        (_replace(params, path, kernel.T), ValueError, rf"{path}.*{key}.*shape \(12, 8\)"),
        (_replace(params, path, np.full_like(kernel, np.nan)), ValueError, rf"{path}.*non-finite"),
        (_replace(params, path, np.full(kernel.shape, 1e6)), ValueError, rf"{key}.*overflows.*F16"),
        (_replace(params, path, kernel.astype(np.int32)), TypeError, rf"{path}.*floating"),
        ({**params, "extra": np.ones(3)}, ValueError, r"edited_tree\['extra'\] is not a cross-attention"),
    ]
    missing = jax.tree.map(lambda leaf: leaf, params)
    del missing["params"]["mid_block"]
    cases.append((missing, ValueError, r"lacks 2 of the source's 8.*mid_block"))
    for edited, error, message in cases:
        with pytest.raises(error, match=message):
            diffusers_io.write_cross_attention(source, edited, out)
        assert not os.path.exists(out)
    with pytest.raises(ValueError, match="is the source file"):
        diffusers_io.write_cross_attention(source, params, source)
    with pytest.raises(FileNotFoundError, match="folder of .*nowhere"):
        diffusers_io.write_cross_attention(source, params, os.path.join(tmp_path, "nowhere", "o.safetensors"))
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def _npz(tmp_path, **arrays):
    path = os.path.join(tmp_path, "states.npz")
    np.savez(path, **arrays)
    return path


def test_load_text_states(tmp_path):
    rng = np.random.default_rng(0)
    path = _npz(
        tmp_path,
        concept=rng.normal(size=(1, 77, 8)),
        guide=rng.normal(size=(77, 8)).astype(np.float16),
        preserve=rng.normal(size=(2, 77, 8)),
        concept_tokens=np.array([3]),
    )
    rows = diffusers_io.load_text_states(path, dim=8)
    assert {k: (v.shape, v.dtype) for k, v in rows.items()} == {
        "concept": ((77, 8), np.float32),
        "guide": ((77, 8), np.float32),
        "preserve": ((154, 8), np.float32),
    }
    stored = diffusers_io.load_text_states(path, ("concept", "preserve"), flatten=False)
    assert stored["concept"].shape == (1, 77, 8) and stored["preserve"].shape == (2, 77, 8)
    np.testing.assert_array_equal(rows["preserve"], stored["preserve"].reshape(-1, 8))


def test_load_text_states_errors(tmp_path):
    good = np.zeros((77, 8))
    with pytest.raises(ValueError, match=r"no array 'preserve'.*\['concept', 'guide'\]"):
        diffusers_io.load_text_states(_npz(tmp_path, concept=good, guide=good))
    with pytest.raises(ValueError, match=r"array 'guide'.*width 6.*expected array 'concept'"):
        diffusers_io.load_text_states(_npz(tmp_path, concept=good, guide=np.zeros((77, 6)), preserve=good))
    with pytest.raises(ValueError, match=r"array 'concept'.*width 8.*dim=768"):
        diffusers_io.load_text_states(_npz(tmp_path, concept=good, guide=good, preserve=good), dim=768)
    for bad, message in (
        (np.zeros(8), r"array 'concept'.*\[L, d\] or \[N, L, d\].*\(8,\)"),
        (np.zeros((77, 8), np.int32), r"array 'concept'.*floating.*int32"),
        (np.full((77, 8), np.inf), r"array 'concept'.*non-finite"),
    ):
        with pytest.raises(ValueError, match=message):
            diffusers_io.load_text_states(_npz(tmp_path, concept=bad, guide=good, preserve=good))
    npy = os.path.join(tmp_path, "single.npy")
    np.save(npy, good)
    with pytest.raises(ValueError, match="single array"):
        diffusers_io.load_text_states(npy)
    with pytest.raises(ValueError, match="names must be"):
        diffusers_io.load_text_states(_npz(tmp_path, concept=good), "concept")
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        diffusers_io.load_text_states(os.path.join(tmp_path, "nothing.npz"))

"""Stable Diffusion checkpoints in and out for closed-form erasure (RECE/UCE), without PyTorch.

:func:`unlearnx.erase.rece` needs only the UNet's cross-attention key/value kernels and the prompts'
text-encoder states. :func:`read_cross_attention` reads every ``…attn2.to_k.weight`` / ``…attn2.to_v.weight``
of a diffusers ``UNet2DConditionModel`` ``.safetensors`` file (SD v1.4: 16 ``attn2`` blocks, 32 weights
``[320|640|1280, 768]``) with safetensors' NumPy API, transposed to Flax layout ``[in, out]`` at the paths
of diffusers' Flax conversion (``down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight`` →
``params/down_blocks_0/attentions_1/transformer_blocks_0/attn2/to_k/kernel``), which
:data:`unlearnx.erase.cross_attention_kv` selects and :func:`unlearnx.erase.sd_cross_attention_shapes`
lists. :func:`write_cross_attention` writes a byte copy of the source with only those weights replaced
(transposed back, cast to the source dtype): same header, keys, shapes, dtypes and ``__metadata__``, so
diffusers loads it unchanged. The source file is the write-back metadata; nothing else is kept. Kernels may
be F16, F32, F64 or BF16 (BF16 decodes to ``ml_dtypes.bfloat16``, as safetensors 0.8 does); other tensors
are never decoded. :func:`load_text_states` reads the prompts' text-encoder states from an ``.npz``.
:func:`rece_checkpoint` runs the official RECE pipeline from one file to the other.

**Producing the text-states file** (outside unlearnx, e.g. on a machine with PyTorch and ``transformers``).
SD v1.x conditions on the last hidden states of CLIP ViT-L/14's text model, each prompt padded to 77 tokens
with ``<|endoftext|>`` (the SD v1.4 tokenizer's pad token is EOS), without an attention mask::

    import numpy as np, torch
    from transformers import CLIPTextModel, CLIPTokenizer

    repo = "CompVis/stable-diffusion-v1-4"
    tokenizer = CLIPTokenizer.from_pretrained(repo, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(repo, subfolder="text_encoder").eval()

    def states(prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(ids.input_ids).last_hidden_state  # [N, 77, 768]
        return hidden.float().numpy(), ids.attention_mask.sum(-1).numpy()  # states, token counts

    concept, concept_tokens = states(["nudity"])
    guide, guide_tokens = states([" "])
    np.savez("nudity_states.npz", concept=concept, guide=guide, preserve=states([" "])[0],
             initial_preserve=states([""])[0], concept_tokens=concept_tokens, guide_tokens=guide_tokens)

The token counts feed :func:`unlearnx.erase.last_word_rows` (the official pipeline's initial edit);
:func:`rece_checkpoint` runs the whole paper pipeline (read, rows, :func:`unlearnx.erase.rece` with three
rounds, write), which ``python -m experiments rece_erase --preset paper`` calls.

References: diffusers ``UNet2DConditionModel`` parameter naming and its Flax conversion
(``convert_pytorch_state_dict_to_flax``); the safetensors format (an 8-byte little-endian header size, a
JSON header of ``dtype``/``shape``/``data_offsets``, then the data); Gong et al., "Reliable and Efficient
Concept Erasure of Text-to-Image Diffusion Models", ECCV 2024 (arXiv 2407.12383).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from unlearnx import tree as tree_lib
from unlearnx._text_states import check_file, load_text_states
from unlearnx._typing import PyTree

__all__ = ["load_text_states", "read_cross_attention", "rece_checkpoint", "write_cross_attention"]

# A diffusers (or CompVis single-file) cross-attention key/value weight.
_KV_KEY = re.compile(r"(?:^|\.)attn2\.to_[kv]\.weight$")
# The kernel dtypes that can be read, edited and written back (safetensors dtype string -> NumPy dtype).
_FLOAT_DTYPES = {
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "BF16": np.dtype(jnp.bfloat16),  # ml_dtypes.bfloat16
}
_PREFIX = "params/"


def _open(name: str, path: str):
    try:
        return safe_open(path, framework="np")
    except Exception as error:  # safetensors raises its own SafetensorError for malformed files
        raise ValueError(f"{name}: {path!r} is not a readable .safetensors file ({error})") from error


def _flax_path(key: str) -> str:
    """``down_blocks.0.attentions.1.….attn2.to_k.weight`` → ``params/down_blocks_0/attentions_1/…/kernel``
    (an index joins the name before it, as in diffusers' Flax conversion; ``weight`` becomes ``kernel``)."""
    parts: list[str] = []
    for part in key.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    parts[-1] = "kernel"
    return _PREFIX + "/".join(parts)


def _entries(name: str, path: str) -> tuple[dict[str, tuple[str, str, tuple[int, ...]]], dict, list[str]]:
    """``({flax path: (key, dtype string, shape)}, metadata, all keys)`` of the file's attn2 K/V weights."""
    with _open(name, path) as handle:
        keys, metadata = list(handle.keys()), handle.metadata() or {}
        entries: dict[str, tuple[str, str, tuple[int, ...]]] = {}
        for key in keys:
            if not _KV_KEY.search(key):
                continue
            piece = handle.get_slice(key)
            dtype, shape = piece.get_dtype(), tuple(piece.get_shape())
            if len(shape) != 2:
                raise ValueError(f"{name}: {key!r} in {path!r} must be a 2-D [out, in] weight, not {shape}")
            if dtype not in _FLOAT_DTYPES:
                raise ValueError(
                    f"{name}: {key!r} in {path!r} has dtype {dtype}; supported kernel dtypes are "
                    f"{sorted(_FLOAT_DTYPES)}"
                )
            flax = _flax_path(key)
            if flax in entries:
                raise ValueError(f"{name}: keys {entries[flax][0]!r} and {key!r} both map to {flax!r}")
            entries[flax] = (key, dtype, shape)
    if not entries:
        raise ValueError(
            f"{name}: {path!r} holds no cross-attention weight '…attn2.to_k.weight' / '…attn2.to_v.weight' "
            f"(its {len(keys)} keys include {sorted(keys)[:4]}); pass a diffusers UNet2DConditionModel file"
        )
    return entries, metadata, keys


def read_cross_attention(path: str | os.PathLike, *, dtype: Any = None) -> dict:
    """Reads the cross-attention key/value weights of a diffusers SD UNet ``.safetensors`` file, Flax layout.

    Args:
        path: a diffusers ``UNet2DConditionModel`` safetensors file (e.g.
            ``stable-diffusion-v1-4/unet/diffusion_pytorch_model.safetensors``); every key ending in
            ``attn2.to_k.weight`` or ``attn2.to_v.weight`` is read, nothing else is decoded.
        dtype: dtype of the returned kernels; ``None`` (default) keeps each weight's file dtype (F16, F32,
            F64 or BF16). :func:`unlearnx.erase.rece` computes in float32 whatever the kernels' dtype and
            returns the kernels' dtype, and :func:`write_cross_attention` casts back to the file's dtype.

    Returns:
        A nested dict whose leaves are NumPy arrays ``[in, out]`` (the PyTorch ``[out, in]`` weights
        transposed), at paths such as ``params/down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k/
        kernel`` (32 kernels ``[768, 320|640|1280]`` for SD v1.x, the paths and shapes of
        :func:`unlearnx.erase.sd_cross_attention_shapes`): the tree to pass to :func:`unlearnx.erase.rece`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a file safetensors cannot read, no ``attn2`` key/value weight in it, a weight that is not
            2-D or not of a floating dtype listed above, two keys that map to one Flax path, or a weight this
            safetensors cannot decode into NumPy, e.g. BF16 with an old release (the message names the key).
        TypeError: ``dtype`` not a floating dtype.

    Examples:
        >>> import numpy as np, safetensors.numpy, tempfile, os
        >>> from unlearnx import diffusers_io, erase
        >>> file = os.path.join(tempfile.mkdtemp(), "unet.safetensors")
        >>> key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        >>> safetensors.numpy.save_file({key: np.ones((4, 6), np.float16)}, file)
        >>> params = diffusers_io.read_cross_attention(file)
        >>> kernel = params["params"]["mid_block"]["attentions_0"]["transformer_blocks_0"]["attn2"]["to_k"]
        >>> kernel["kernel"].shape, kernel["kernel"].dtype
        ((6, 4), dtype('float16'))

    References:
        diffusers ``UNet2DConditionModel`` naming and its Flax conversion; Gong et al., ECCV 2024 (RECE).
    """
    path = check_file("path", path)
    if dtype is not None:
        try:
            floating = jnp.issubdtype(dtype, jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise TypeError(f"dtype must be a floating dtype or None, got {dtype!r}")
    entries, _, _ = _entries("read_cross_attention", path)
    flat = {}
    with _open("read_cross_attention", path) as handle:
        for flax, (key, file_dtype, shape) in entries.items():
            try:
                weight = handle.get_tensor(key)
            except Exception as error:
                raise ValueError(
                    f"read_cross_attention: cannot decode {key!r} ({file_dtype}, shape {shape}) of {path!r} "
                    f"into NumPy ({error}); BF16 needs a safetensors that decodes it (0.8 does)"
                ) from error
            kernel = np.ascontiguousarray(weight.T)
            flat[flax] = kernel if dtype is None else kernel.astype(dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def _encode(where: str, kernel: Any, dtype: str, shape: tuple[int, ...]) -> bytes:
    """The little-endian bytes of ``kernel.T`` cast to ``dtype``, after shape and finiteness checks."""
    kernel = np.asarray(kernel)
    expected = shape[::-1]
    if kernel.shape != expected:
        raise ValueError(
            f"{where} must have the Flax shape {expected} (the source's [out, in] {shape} transposed), got "
            f"{kernel.shape}"
        )
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise TypeError(f"{where} must be a floating-point array, got dtype {kernel.dtype}")
    if not np.isfinite(kernel.astype(np.float64)).all():
        raise ValueError(f"{where} holds non-finite values")
    with np.errstate(over="ignore"):  # overflow is reported below, naming the key
        weight = np.ascontiguousarray(kernel.T).astype(_FLOAT_DTYPES[dtype])
    if not np.isfinite(weight.astype(np.float64)).all():
        peak = np.abs(kernel.astype(np.float64)).max()
        raise ValueError(f"{where} overflows the source dtype {dtype} (its largest |value| is {peak:g})")
    unsigned = np.dtype(f"<u{weight.dtype.itemsize}")
    return weight.view(f"u{weight.dtype.itemsize}").astype(unsigned).tobytes()


def _edited_bytes(edited_tree: PyTree, entries: dict) -> dict[str, bytes]:
    """``{safetensors key: new bytes}`` for every kernel of ``edited_tree``, which must hold exactly the
    source's attn2 key/value kernels (a leading ``params/`` is optional)."""
    given = {}
    for path, leaf in tree_lib.leaves_with_paths(edited_tree):
        flax = path if path.startswith(_PREFIX) else _PREFIX + path
        if flax not in entries:
            raise ValueError(
                f"write_cross_attention: edited_tree[{path!r}] is not a cross-attention key/value kernel of "
                f"the source (whose paths look like {next(iter(entries))!r}); pass the tree that "
                "read_cross_attention returned, edited"
            )
        given[flax] = (path, leaf)
    missing = [flax for flax in entries if flax not in given]
    if missing:
        raise ValueError(
            f"write_cross_attention: edited_tree lacks {len(missing)} of the source's {len(entries)} "
            f"cross-attention kernels, e.g. {missing[0]!r} (key {entries[missing[0]][0]!r})"
        )
    blobs = {}
    for flax, (key, dtype, shape) in entries.items():
        path, leaf = given[flax]
        blobs[key] = _encode(f"edited_tree[{path!r}] (key {key!r})", leaf, dtype, shape)
    return blobs


def write_cross_attention(
    source_path: str | os.PathLike, edited_tree: PyTree, out_path: str | os.PathLike
) -> tuple[str, ...]:
    """Writes ``source_path`` to ``out_path`` with its cross-attention key/value weights replaced.

    The output is a byte copy of the source (header, ``__metadata__``, tensor order and every other
    tensor unchanged) in which each ``…attn2.to_k.weight`` / ``…attn2.to_v.weight`` holds the matching
    kernel of ``edited_tree`` transposed back to ``[out, in]`` and cast to the source's dtype (round to
    nearest even). It is written to a temporary file beside ``out_path``, checked with safetensors (same
    keys, shapes, dtypes and metadata), then renamed into place.

    Args:
        source_path: the diffusers UNet ``.safetensors`` file :func:`read_cross_attention` read.
        edited_tree: the tree :func:`read_cross_attention` returned, edited (e.g. by
            :func:`unlearnx.erase.rece`): exactly the source's ``attn2`` key/value kernels, Flax layout
            ``[in, out]``, any floating dtype; a plain dict, an NNX ``State`` or a tree without the leading
            ``params`` level.
        out_path: the new file; must not be ``source_path``.

    Returns:
        The safetensors keys that were replaced, sorted.

    Raises:
        FileNotFoundError: ``source_path`` is not a file, or ``out_path``'s folder does not exist.
        ValueError: ``out_path`` naming the source file; a source without ``attn2`` key/value weights or of an
            unsupported kernel dtype (see :func:`read_cross_attention`); a leaf of ``edited_tree`` that is not
            one of the source's kernels, or a source kernel missing from it; an edited kernel whose shape is
            not the source's transposed, that holds NaN or ±inf, or that overflows the source dtype (messages
            name the tree path and the safetensors key).
        TypeError: an edited kernel of a non-floating dtype.

    Examples:
        >>> import jax, numpy as np, safetensors.numpy, tempfile, os
        >>> from unlearnx import diffusers_io
        >>> folder = tempfile.mkdtemp()
        >>> source, out = os.path.join(folder, "unet.safetensors"), os.path.join(folder, "edited.safetensors")
        >>> key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
        >>> weights = {key: np.ones((4, 6), np.float32), "conv_in.bias": np.ones(4)}
        >>> safetensors.numpy.save_file(weights, source)
        >>> params = diffusers_io.read_cross_attention(source)
        >>> edited = jax.tree.map(lambda kernel: 2 * kernel, params)
        >>> diffusers_io.write_cross_attention(source, edited, out)
        ('mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight',)
        >>> safetensors.numpy.load_file(out)[key][0, :3]
        array([2., 2., 2.], dtype=float32)

    References:
        diffusers ``UNet2DConditionModel`` naming; the safetensors format; Gong et al., ECCV 2024 (RECE).
    """
    source = check_file("source_path", source_path)
    try:
        out = os.fspath(out_path)
    except TypeError:
        raise TypeError(f"out_path must be a path (str or os.PathLike), got {out_path!r}") from None
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"out_path: the folder of {out!r} does not exist")
    if os.path.exists(out) and os.path.samefile(source, out):
        raise ValueError(f"write_cross_attention: out_path {out!r} is the source file; write to a new file")
    entries, metadata, keys = _entries("write_cross_attention", source)
    blobs = _edited_bytes(edited_tree, entries)
    temporary = f"{out}.tmp-{os.getpid()}"
    try:
        _patched_copy(source, temporary, blobs)
        with _open("write_cross_attention", temporary) as written:  # the header is the source's, unchanged
            if list(written.keys()) != keys or (written.metadata() or {}) != metadata:  # pragma: no cover
                raise ValueError(f"write_cross_attention: the copy of {source!r} lost keys or metadata")
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return tuple(sorted(blobs))


def _patched_copy(source: str, target: str, blobs: dict[str, bytes]) -> None:
    """Copies ``source`` to ``target`` and overwrites each key's data bytes (the format's 8-byte
    little-endian header size, its JSON header, then the data at ``data_offsets``) with ``blobs[key]``."""
    with open(source, "rb") as stream:
        size = struct.unpack("<Q", stream.read(8))[0]
        header = json.loads(stream.read(size))
    shutil.copyfile(source, target)
    with open(target, "r+b") as stream:
        for key, blob in blobs.items():
            begin, end = header[key]["data_offsets"]
            if end - begin != len(blob):  # pragma: no cover - shapes and dtypes were checked
                raise ValueError(f"write_cross_attention: {key!r} spans {end - begin} bytes, not {len(blob)}")
            stream.seek(8 + size + begin)
            stream.write(blob)


from unlearnx._rece_checkpoint import rece_checkpoint  # noqa: E402  (it reads and writes with this module)

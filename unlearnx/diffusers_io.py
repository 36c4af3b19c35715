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

from unlearnx import erase
from unlearnx import tree as tree_lib
from unlearnx._text_states import check_file, load_text_states
from unlearnx.eval.erasure import kv_output_change

PyTree = Any

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

    Example:
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
        one of the source's kernels, or a source kernel missing from it; an edited kernel whose shape is not
        the source's transposed, that holds NaN or ±inf, or that overflows the source dtype (messages name
        the tree path and the safetensors key).
      TypeError: an edited kernel of a non-floating dtype.

    Example:
      >>> import jax, numpy as np, safetensors.numpy, tempfile, os
      >>> from unlearnx import diffusers_io
      >>> folder = tempfile.mkdtemp()
      >>> source, out = os.path.join(folder, "unet.safetensors"), os.path.join(folder, "edited.safetensors")
      >>> key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
      >>> safetensors.numpy.save_file({key: np.ones((4, 6), np.float32), "conv_in.bias": np.ones(4)}, source)
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


_STATES = ("concept", "guide", "preserve", "initial_preserve")


def _official_keys(states_path: str | os.PathLike) -> tuple[tuple[Any, Any, Any], dict[str, Any]]:
    """``((concept, guide, preserve), initial)``: the rows :func:`unlearnx.erase.rece` takes in the official
    pipeline, from the states file; ``initial`` holds its ``initial_*_keys`` (the concept's and the guide's
    rows from the last word token on, :func:`unlearnx.erase.last_word_rows`, and ``initial_preserve``)."""
    states = load_text_states(states_path, _STATES, flatten=False)
    with np.load(check_file("states_path", states_path)) as archive:
        missing = [name for name in ("concept_tokens", "guide_tokens") if name not in archive]
        if missing:
            raise ValueError(f"rece_checkpoint: {os.fspath(states_path)!r} lacks the token counts {missing}")
        tokens = {f"{name}_tokens": int(archive[f"{name}_tokens"][0]) for name in ("concept", "guide")}
    concept, guide = states["concept"][0], states["guide"][0]
    preserve, initial_preserve = (states[name].reshape(-1, concept.shape[-1]) for name in _STATES[2:])
    rows, targets = erase.last_word_rows(concept, guide, **tokens)
    initial = {"initial_concept_keys": rows, "initial_guide_keys": targets}
    return (concept, guide, preserve), {**initial, "initial_preserve_keys": initial_preserve}


def rece_checkpoint(
    unet_path: str | os.PathLike,
    states_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    epochs: int = 3,
    reg: float = 0.1,
    **scales: float,
) -> dict[str, Any]:
    r"""Erases a concept from a Stable Diffusion v1.x UNet file by the official RECE pipeline, file to file.

    The cross-attention key/value kernels K of ``unet_path`` (:func:`read_cross_attention`, float32, Flax
    layout ``[in, out]``) first take the UCE edit of the concept's rows from its last word token on, C₀,
    towards the guide's aligned rows C_G₀ (:func:`unlearnx.erase.last_word_rows`), preserving the rows C_P₀
    of ``initial_preserve``:

    .. math::

      K \leftarrow K + G_0^{-1} α C_0^⊤ (C_{G,0} K - C_0 K), \qquad
      G_0 = λ I + α C_0^⊤ C_0 + β C_{P,0}^⊤ C_{P,0};

    then each of ``epochs`` rounds derives c′ = (λ_reg I + Σ K′K′ᵀ)⁻¹ (Σ K′Kᵀ) c from every row c of the
    concept prompt and erases it the same way towards the guide's rows, preserving ``preserve``'s
    (:func:`unlearnx.erase.rece`). :func:`write_cross_attention` writes the result to ``out_path``.

    Args:
      unet_path: a diffusers ``UNet2DConditionModel`` ``.safetensors`` file, e.g. SD v1.4's UNet.
      states_path: an ``.npz`` of CLIP states ``concept``, ``guide`` (one prompt each), ``preserve`` and
        ``initial_preserve``, each ``[N, L, d]``, and the token counts ``concept_tokens`` / ``guide_tokens``
        (how to make it: the module docstring).
      out_path: the edited file; must not be ``unet_path``.
      epochs: RECE rounds after the initial edit (≥ 0; the paper: 3).
      reg: λ_reg > 0 of the embedding derivation.
      **scales: α, β, λ of the initial edit (``erase_scale``, ``preserve_scale``, ``lamb``) and of each
        round (``round_erase_scale``, …), passed to :func:`unlearnx.erase.rece` (its defaults otherwise).

    Returns:
      The edit's record: ``edited_keys`` (the replaced safetensors keys, sorted), ``rece_rounds``,
      ``initial_rows`` (rows of the initial edit), ``kernel_relative_change`` (‖K′ − K‖ / ‖K‖ over the
      kernels), ``kv_change_preserve`` (ΔKV on the preserve prompts, :func:`unlearnx.eval.kv_output_change`)
      and ``c_prime_distance`` (‖c′ − c‖ / ‖c‖ of the c′ derived against the final edit).

    Raises:
      FileNotFoundError: ``unet_path`` or ``states_path`` is not a file, or ``out_path``'s folder is missing.
      ValueError: a UNet file without cross-attention kernels, a states file without one of the arrays above
        (the messages name the file), bad hyper-parameters (:func:`unlearnx.erase.rece`), or ``out_path``
        naming ``unet_path``.
      TypeError: a keyword in ``scales`` that :func:`unlearnx.erase.rece` does not take.

    Example:
      >>> import numpy as np, safetensors.numpy, tempfile, os
      >>> from unlearnx import diffusers_io
      >>> folder, rng = tempfile.mkdtemp(), np.random.default_rng(0)
      >>> unet, states = os.path.join(folder, "unet.safetensors"), os.path.join(folder, "states.npz")
      >>> block = "mid_block.attentions.0.transformer_blocks.0.attn2"
      >>> safetensors.numpy.save_file({f"{block}.to_{kv}.weight": rng.normal(size=(6, 8)).astype(np.float16)
      ...                              for kv in "kv"}, unet)
      >>> prompts = {name: rng.normal(size=(1, 5, 8)) for name in ("concept", "guide", "initial_preserve")}
      >>> np.savez(states, **prompts, preserve=prompts["guide"], concept_tokens=[3], guide_tokens=[2])
      >>> record = diffusers_io.rece_checkpoint(unet, states, os.path.join(folder, "edited.safetensors"))
      >>> record["rece_rounds"], record["initial_rows"], len(record["edited_keys"])
      (3, 4, 2)

    References:
      Gong et al., "Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models", ECCV 2024.
    """
    original = read_cross_attention(unet_path, dtype=jnp.float32)
    rows, initial = _official_keys(states_path)
    edited, history = erase.rece(original, *rows, epochs=epochs, reg=reg, **initial, **scales)
    concept, _, preserve = rows
    keys = write_cross_attention(unet_path, edited, out_path)
    c_prime = erase.derive_embedding(edited, original, concept, reg=reg)  # only the K/V kernels are read
    return {
        "edited_keys": keys,
        "rece_rounds": epochs,
        "initial_rows": int(initial["initial_concept_keys"].shape[0]),
        "kernel_relative_change": float(history["distance"][-1]),
        "kv_change_preserve": kv_output_change(original, edited, preserve),
        "c_prime_distance": float(np.linalg.norm(np.asarray(c_prime) - concept) / np.linalg.norm(concept)),
    }

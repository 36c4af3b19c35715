"""The prompts' text-encoder states for closed-form erasure, read from an ``.npz``
(:mod:`unlearnx.diffusers_io` documents how to produce the file and re-exports :func:`load_text_states`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from unlearnx import _validation as checks

__all__ = ["check_file", "load_text_states"]


def check_file(name: str, path: Any) -> str:
    """``path`` as a string, naming ``name`` when it is not a path or not a file."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {path!r}") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file {path!r}")
    return path


def load_text_states(
    path: str | os.PathLike,
    names: tuple[str, ...] = ("concept", "guide", "preserve"),
    *,
    dim: int | None = None,
    flatten: bool = True,
) -> dict[str, np.ndarray]:
    """Reads precomputed text-encoder states (the keys of closed-form erasure) from an ``.npz`` file.

    How to produce the file (CLIP ViT-L/14 last hidden states, padded to 77 tokens with EOS): the module
    docstring.

    Args:
      path: an ``.npz`` file (``numpy.savez``) holding one array per name, each ``[L, d]`` (one prompt's
        token states) or ``[N, L, d]`` (N prompts), e.g. ``[1, 77, 768]`` for one SD v1.x prompt.
      names: the arrays to read (e.g. the concept, the guide and the preserve prompts'); other arrays in
        the file are ignored.
      dim: the state width every array must have (768 for SD v1.x, 1024 for SD 2.x); ``None``: the arrays
        must only agree with each other.
      flatten: ``True`` (default) returns each array as ``[rows, d]`` token rows (``[N·L, d]``), the form
        :func:`unlearnx.erase.rece` takes (several prompts' rows stacked); ``False`` keeps the stored
        shape (for :func:`unlearnx.erase.last_word_rows`, which takes one prompt's ``[L, d]``).

    Returns:
      ``{name: float32 array}`` for each of ``names``.

    Raises:
      FileNotFoundError: ``path`` is not a file.
      ValueError: a file that is not an ``.npz``, an empty ``names``, a missing array (the message lists
        those present), an array that is not 2-D or 3-D, is empty, not floating, non-finite, or whose last
        dimension differs from ``dim`` or from the other arrays' (messages name the array and its shape).

    Example:
      >>> import numpy as np, tempfile, os
      >>> from unlearnx import diffusers_io
      >>> file = os.path.join(tempfile.mkdtemp(), "states.npz")
      >>> np.savez(file, concept=np.ones((1, 77, 8)), guide=np.zeros((77, 8)), preserve=np.zeros((2, 77, 8)))
      >>> {k: v.shape for k, v in diffusers_io.load_text_states(file, dim=8).items()}
      {'concept': (77, 8), 'guide': (77, 8), 'preserve': (154, 8)}

    References:
      Radford et al., CLIP (2021) as SD v1.x's text encoder; Gong et al., ECCV 2024 (RECE).
    """
    path = check_file("path", path)
    if dim is not None:
        dim = checks.static_int("dim", dim, low=1)
    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty tuple of array names, got {names!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"load_text_states: {path!r} is not a readable .npz file ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"load_text_states: {path!r} holds a single array, not an .npz of named arrays")
    with archive:
        missing = [name for name in names if name not in archive.files]
        if missing:
            raise ValueError(
                f"load_text_states: {path!r} has no array {missing[0]!r} (missing: {missing}; it holds "
                f"{sorted(archive.files)})"
            )
        states = {name: archive[name] for name in names}
    _check_states(path, states, dim)
    return {
        name: np.asarray(state.reshape(-1, state.shape[-1]) if flatten else state, np.float32)
        for name, state in states.items()
    }


def _check_states(path: str, states: dict[str, np.ndarray], dim: int | None) -> None:
    """Each state is a non-empty finite floating ``[L, d]`` / ``[N, L, d]`` array of one width d (= dim)."""
    width, first = dim, None
    for name, state in states.items():
        where = f"load_text_states: array {name!r} of {path!r}"
        if state.ndim not in (2, 3) or state.size == 0:
            raise ValueError(f"{where} must be a non-empty [L, d] or [N, L, d] array, not {state.shape}")
        if not np.issubdtype(state.dtype, np.floating):
            raise ValueError(f"{where} must hold floating-point states, got dtype {state.dtype}")
        if width is not None and state.shape[-1] != width:
            source = f"dim={dim}" if first is None else f"array {first!r}'s width {width}"
            raise ValueError(f"{where} has width {state.shape[-1]} (shape {state.shape}), expected {source}")
        if width is None:
            width, first = state.shape[-1], name
        if not np.isfinite(state).all():
            raise ValueError(f"{where} holds non-finite values")

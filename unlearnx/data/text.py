"""Byte-level text corpora: the Python standard library's own sources, and TFDS text data sets.

``python_stdlib`` is a real text corpus present on every machine: the ``.py`` files under
``sysconfig.get_paths()["stdlib"]``, without the test packages (any directory named ``test``, ``tests`` or
``idle_test``), ``site-packages``, the build's ``config-*`` directory and the machine-generated
``_sysconfigdata_*`` module. Files are read as bytes (tokens 0–255, vocabulary 256) in sorted relative-path
order; a file whose bytes equal an earlier file's is dropped. A file is held out as ``"test"`` when the
first 8 bytes of SHA-256(relative path), read as a big-endian integer, modulo 10,000 fall below 500
(≈ 5% of files, stable across machines and Python versions); the rest is ``"train"``. The corpus changes
between Python versions, so the version and a SHA-256 of the whole (deduplicated) corpus are recorded.

``tfds_text:<name>`` (e.g. ``tfds_text:lm1b``) reads the ``text`` feature of a TFDS data set prepared in
ArrayRecord format (``tfds build <name> --file_format=array_record``) and UTF-8 encodes every example;
the image path of :func:`unlearnx.data.load` (``tfds:``) expects ``image``/``label`` features, so text
goes through here. The whole split is read into memory, which suits corpora of up to a few GB per host.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

__all__ = ["NAMES", "STDLIB", "TFDS_TEXT_PREFIX", "TextCorpus", "load", "stdlib_files"]

STDLIB = "python_stdlib"
TFDS_TEXT_PREFIX = "tfds_text:"
NAMES = (STDLIB, f"{TFDS_TEXT_PREFIX}<name>")
VOCAB_SIZE = 256
SPLITS = ("train", "test", "all")
HELD_OUT_PER_10K = 500
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """A byte-level text corpus split, held in memory.

    Documents are concatenated without separators; ``offsets`` marks their boundaries.

    Attributes:
        tokens: Read-only ``uint8 [n]`` bytes of every document in order (token ids 0–255).
        offsets: Read-only ``int64 [num_docs + 1]``: document i is ``tokens[offsets[i]:offsets[i+1]]``.
        names: Document names (relative file paths for ``python_stdlib``, example indices for TFDS).
        vocab_size: 256.
        name: Corpus name, e.g. ``"python_stdlib"``.
        split: ``"train"``, ``"test"`` or ``"all"`` (or the TFDS split string).
        metadata: Provenance: ``python_version``, ``content_sha256`` of the whole corpus (all splits) and,
            for the stdlib, its ``root`` and the number of ``duplicates_dropped``.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    names: tuple[str, ...]
    vocab_size: int
    name: str
    split: str
    metadata: dict[str, str | int]

    def __len__(self) -> int:
        """Returns the number of tokens."""
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return len(self.names)

    def document(self, index: int) -> bytes:
        """Document ``index`` as bytes."""
        return self.tokens[self.offsets[index] : self.offsets[index + 1]].tobytes()


def _held_out(relative_path: str) -> bool:
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < HELD_OUT_PER_10K


def stdlib_files(root: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of every corpus file under the stdlib ``root``, sorted by relative path."""
    base = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not base.is_dir():
        raise FileNotFoundError(f"{STDLIB}: the standard library directory {base} does not exist")
    found = []
    for directory, subdirs, files in os.walk(base):
        subdirs[:] = [d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith("config-")]
        for file in files:
            if file.endswith(".py") and not file.startswith("_sysconfigdata_"):
                path = Path(directory) / file
                found.append((path.relative_to(base).as_posix(), path))
    return sorted(found)


def _encode(documents: list[bytes], names: list[str], name: str, split: str, metadata: dict) -> TextCorpus:
    lengths = np.fromiter((len(d) for d in documents), np.int64, len(documents))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.frombuffer(b"".join(documents), np.uint8).copy()
    tokens.setflags(write=False)
    offsets.setflags(write=False)
    return TextCorpus(tokens, offsets, tuple(names), VOCAB_SIZE, name, split, metadata)


@functools.lru_cache(maxsize=4)
def _stdlib(split: str, root: str | None) -> TextCorpus:
    seen: set[bytes] = set()
    documents: list[bytes] = []
    names: list[str] = []
    whole = hashlib.sha256()
    duplicates = 0
    for relative, path in stdlib_files(root):
        content = path.read_bytes()
        digest = hashlib.sha256(content).digest()
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        whole.update(relative.encode() + b"\0" + digest)
        if split == "all" or (split == "test") == _held_out(relative):
            documents.append(content)
            names.append(relative)
    if not documents:
        raise ValueError(f"{STDLIB}: no .py files found for split {split!r} under {root}")
    metadata = {
        "python_version": sys.version.split()[0],
        "content_sha256": whole.hexdigest(),
        "root": str(root or sysconfig.get_paths()["stdlib"]),
        "duplicates_dropped": duplicates,
    }
    return _encode(documents, names, STDLIB, split, metadata)


@functools.lru_cache(maxsize=4)
def _tfds_text(name: str, split: str, data_dir: str | None, feature: str) -> TextCorpus:
    import tensorflow_datasets as tfds  # Lazy: importing TFDS takes a while.

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:
        raise FileNotFoundError(
            f"TFDS text data set {name!r} (split {split!r}) is not prepared in "
            f"{data_dir or 'the default TFDS data_dir'}; on a machine with network access run "
            f"`tfds build {name} --file_format=array_record` and copy the directory here"
        ) from err
    documents = []
    for index in range(len(source)):
        example = source[index]
        if feature not in example:
            raise ValueError(f"TFDS data set {name!r} has no {feature!r} feature: {sorted(example)}")
        text = example[feature]
        documents.append(text.encode() if isinstance(text, str) else bytes(text))
    whole = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in documents)).hexdigest()
    metadata = {"python_version": sys.version.split()[0], "content_sha256": whole, "tfds_name": name}
    names = [str(i) for i in range(len(documents))]
    return _encode(documents, names, TFDS_TEXT_PREFIX + name, split, metadata)


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    feature: str = "text",
) -> TextCorpus:
    """Loads a byte-level text corpus split (cached; the arrays are read-only).

    Args:
        name: ``"python_stdlib"`` or ``"tfds_text:<tfds name>"``.
        split: ``"train"``, ``"test"`` or ``"all"`` for the stdlib (``data_dir`` overrides its root,
            for tests); any TFDS split string for TFDS.
        data_dir: The stdlib root to read instead of this interpreter's, or the TFDS data directory.
        feature: The TFDS text feature.

    Returns:
        The :class:`TextCorpus`.

    Raises:
        ValueError: If the name or split is unknown, or the split holds no files.
        FileNotFoundError: If the data is not on this machine.
    """
    directory = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    if name == STDLIB:
        if split not in SPLITS:
            raise ValueError(f"{STDLIB}: unknown split {split!r}; valid splits are {list(SPLITS)}")
        return _stdlib(split, directory)
    if name.startswith(TFDS_TEXT_PREFIX) and len(name) > len(TFDS_TEXT_PREFIX):
        return _tfds_text(name.removeprefix(TFDS_TEXT_PREFIX), split, directory, feature)
    raise ValueError(f"unknown text corpus {name!r}; known names are {list(NAMES)}")

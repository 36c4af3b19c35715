"""Loading named datasets into :class:`~unlearnx.data.dataset.Dataset` objects, with caching."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from unlearnx.data import digits, mnist, text
from unlearnx.data.dataset import Dataset
from unlearnx.data.tfds_source import load_tfds_split

TFDS_PREFIX = "tfds:"
KNOWN_NAMES = ("digits", "fashion_mnist", "mnist", f"{TFDS_PREFIX}<name>", *text.NAMES)
_DEFAULT_DIRS = {"fashion_mnist": mnist.FASHION_MNIST_DIR}


def _resolve_dir(name: str, data_dir: str | os.PathLike[str] | None) -> str | None:
    if data_dir is None:
        default = _DEFAULT_DIRS.get(name)
        return None if default is None else str(default)
    return str(Path(data_dir).expanduser().resolve())


@functools.lru_cache(maxsize=8)
def _cached_arrays(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Parses a dataset split once; returns read-only ``(x, y, num_classes)``."""
    if name == "digits":
        x, y = digits.load_digits_split(split)
        num_classes = digits.NUM_CLASSES
    elif name in ("fashion_mnist", "mnist"):
        if data_dir is None:
            raise FileNotFoundError(
                f"{name}: no default location; pass data_dir= pointing at a directory with the "
                "four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz)."
            )
        x, y = mnist.load_idx_split(name, split, Path(data_dir))
        num_classes = mnist.NUM_CLASSES
    else:
        x, y, num_classes = load_tfds_split(name.removeprefix(TFDS_PREFIX), split, data_dir)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, num_classes


class DatasetInfo(NamedTuple):
    """What a split looks like, known without reading it; returned by :func:`describe`.

    Attributes:
        input_shape: the shape of one example, e.g. ``(28, 28, 1)``.
        num_classes: the number of classes.
        size: the number of examples in the split.

    Examples:
        >>> from unlearnx import data
        >>> data.DatasetInfo((8, 8, 1), 10, 1437).size
        1437
    """

    input_shape: tuple[int, ...]
    num_classes: int
    size: int


# The shapes and sizes of the image datasets the presets use (the digits split is 80/20, stratified).
_INFO = {
    "digits": ((8, 8, 1), 10, {"train": 1437, "test": 360, "all": 1797}),
    "fashion_mnist": ((28, 28, 1), 10, {"train": 60_000, "test": 10_000}),
    "mnist": ((28, 28, 1), 10, {"train": 60_000, "test": 10_000}),
    "tfds:mnist": ((28, 28, 1), 10, {"train": 60_000, "test": 10_000}),
    "tfds:fashion_mnist": ((28, 28, 1), 10, {"train": 60_000, "test": 10_000}),
    "tfds:cifar10": ((32, 32, 3), 10, {"train": 50_000, "test": 10_000}),
    "tfds:cifar100": ((32, 32, 3), 100, {"train": 50_000, "test": 10_000}),
}


def describe(name: str, split: str = "train") -> DatasetInfo:
    """The shape, class count and size of ``name``'s ``split`` without loading it (for planning a run).
    TFDS slices of one split (``"train[:90%]"``, ``"train[45000:]"``) are sized like TFDS sizes them.

    Args:
        name: a dataset name known to :func:`load` (images only), e.g. ``"digits"`` or ``"tfds:cifar10"``.
        split: a split name, or for TFDS a slice of one.

    Returns:
        A :class:`DatasetInfo`.

    Raises:
        ValueError: for a dataset or split this table does not know (load it to find out).

    Examples:
        >>> from unlearnx import data
        >>> data.describe("tfds:cifar10", "train[:90%]")
        DatasetInfo(input_shape=(32, 32, 3), num_classes=10, size=45000)
    """
    if name not in _INFO:
        raise ValueError(f"describe: no stored description of dataset {name!r}; known: {', '.join(_INFO)}")
    shape, classes, sizes = _INFO[name]
    match = re.fullmatch(r"(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?", split)
    if match is None or match[1] not in sizes:
        raise ValueError(f"describe: {name!r} has no split {split!r}; splits: {', '.join(sizes)}")
    total = sizes[match[1]]

    def bound(text: str, percent: str, default: int) -> int:
        if not text:
            return default
        value = int(text) * total // 100 if percent else int(text)
        return value + total if value < 0 else value

    start, stop = bound(match[2] or "", match[3] or "", 0), bound(match[4] or "", match[5] or "", total)
    return DatasetInfo(shape, classes, max(0, min(stop, total) - start))


def load(
    name: str, split: str = "train", *, data_dir: str | os.PathLike[str] | None = None
) -> Dataset | text.TextCorpus:
    """Loads a labelled image dataset into memory.

    Supported names:

    * ``"digits"``: scikit-learn's 8x8 digits (1797 images, ``[N, 8, 8, 1]``). Splits
      ``"train"`` (80%), ``"test"`` (20%), stratified with a fixed seed, and ``"all"``.
    * ``"fashion_mnist"`` / ``"mnist"``: the four (optionally gzipped) IDX files in ``data_dir``
      (``[N, 28, 28, 1]``). Fashion-MNIST defaults to ``/usr/share/datasets/fashion-mnist``
      (Debian package ``dataset-fashion-mnist``); MNIST has no default. Splits ``"train"``
      and ``"test"``.
    * ``"tfds:<name>"``, e.g. ``"tfds:cifar100"``: a TFDS image classification dataset that
      has been prepared (in ArrayRecord format) in ``data_dir``; any TFDS split string works.
    * ``"python_stdlib"`` / ``"tfds_text:<name>"``: byte-level text, returned as a
      :class:`~unlearnx.data.text.TextCorpus` (see :func:`unlearnx.data.text.load`).

    Parsed arrays are cached per ``(name, split, data_dir)``, so repeated loads are cheap. The
    returned arrays are shared with the cache and therefore read-only; copy them to modify.

    Args:
        name: Dataset name, see above.
        split: Split name.
        data_dir: Directory to read from; see above for the defaults.

    Returns:
        The dataset, with images scaled to ``[0, 1]`` and ``name`` set to ``name``.

    Raises:
        ValueError: If the name or split is unknown, or the files are corrupt.
        FileNotFoundError: If the data is not on this machine; the message says how to get it.

    Examples:
        >>> from unlearnx import data
        >>> digits = data.load("digits", "test")  # embedded, no download
        >>> digits.x.shape, digits.num_classes, float(digits.x.max())
        ((360, 8, 8, 1), 10, 1.0)
    """
    if name == text.STDLIB or name.startswith(text.TFDS_TEXT_PREFIX):  # text: a TextCorpus, not a Dataset
        return text.load(name, split, data_dir=data_dir)
    if name in ("digits", "fashion_mnist", "mnist"):
        valid = digits.SPLITS if name == "digits" else mnist.SPLITS
        if split not in valid:
            raise ValueError(f"{name}: unknown split {split!r}; valid splits are {list(valid)}.")
        if name == "digits":
            data_dir = None
    elif not (name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX)):
        raise ValueError(f"Unknown dataset {name!r}; known names are {list(KNOWN_NAMES)}.")
    x, y, num_classes = _cached_arrays(name, split, _resolve_dir(name, data_dir))
    return Dataset(x=x, y=y, num_classes=num_classes, name=name)

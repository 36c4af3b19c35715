"""MNIST-style datasets stored as four IDX files in a directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unlearnx.data.idx import read_idx

SPLITS = ("train", "test")
NUM_CLASSES = 10
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_PREFIX = {"train": "train", "test": "t10k"}


def _missing_message(name: str, data_dir: Path, what: str) -> str:
    hint = (
        "install the Debian package with `apt-get install dataset-fashion-mnist`, or "
        if name == "fashion_mnist"
        else ""
    )
    return (
        f"{name}: {what}. To get the data, {hint}pass data_dir= pointing at a directory that "
        "holds the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally gzipped, with a .gz "
        f"suffix). Looked in {data_dir}."
    )


def _find(name: str, data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(_missing_message(name, data_dir, f"{stem}[.gz] not found"))


def load_idx_split(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of an MNIST-style dataset.

    Args:
        name: Dataset name, used in messages (``"mnist"`` or ``"fashion_mnist"``).
        split: ``"train"`` or ``"test"``.
        data_dir: Directory holding the IDX files.

    Returns:
        ``(x, y)`` with ``x`` float32 ``[N, 28, 28, 1]`` in ``[0, 1]`` (any ``H, W`` is accepted)
        and ``y`` int32 ``[N]``.

    Raises:
        FileNotFoundError: If the directory or a file is missing.
        ValueError: If the split is unknown or the files are corrupt or inconsistent.
    """
    if split not in _PREFIX:
        raise ValueError(f"{name}: unknown split {split!r}; valid splits are {list(SPLITS)}.")
    if not data_dir.is_dir():
        raise FileNotFoundError(_missing_message(name, data_dir, "data directory not found"))
    prefix = _PREFIX[split]
    images_path = _find(name, data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(name, data_dir, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected a 3-D image array, got shape {images.shape}.")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected a 1-D label array, got shape {labels.shape}.")
    if len(images) != len(labels):
        raise ValueError(
            f"{name} {split}: {len(images)} images in {images_path.name} but "
            f"{len(labels)} labels in {labels_path.name}."
        )
    x = images[..., None].astype(np.float32)
    x /= 255.0
    return x, labels.astype(np.int32)

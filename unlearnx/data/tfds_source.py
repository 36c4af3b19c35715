"""Image classification datasets read from prepared TensorFlow Datasets (TFDS) directories.

Reading goes through ``tfds.data_source``, which needs the dataset to have been prepared in a
random-access file format (ArrayRecord). Nothing is ever downloaded from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _not_prepared_message(name: str, split: str, data_dir: str | None) -> str:
    where = data_dir if data_dir is not None else "the default TFDS data_dir"
    flag = f" --data_dir={data_dir}" if data_dir is not None else ""
    return (
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}. On a machine with "
        f"network access run `tfds build {name} --file_format=array_record{flag}` (or "
        f"`tfds.builder({name!r}, data_dir=..., file_format='array_record')"
        ".download_and_prepare()`) and copy the resulting directory here."
    )


def _num_classes(info: Any, name: str) -> int:
    features = info.features
    if "label" not in features or not hasattr(features["label"], "num_classes"):
        raise ValueError(f"TFDS dataset {name!r} has no ClassLabel feature named 'label'.")
    return int(features["label"].num_classes)


def _read_all(source: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    if n == 0:
        raise ValueError(f"TFDS dataset {name!r}: the split is empty.")
    first = source[0]
    if "image" not in first or "label" not in first:
        raise ValueError(
            f"TFDS dataset {name!r}: examples need 'image' and 'label' keys, got {sorted(first)}."
        )
    shape = np.shape(first["image"])
    if len(shape) != 3:
        raise ValueError(f"TFDS dataset {name!r}: expected [H, W, C] images, got shape {shape}.")
    images = np.empty((n, *shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    for i in range(n):
        example = first if i == 0 else source[i]
        image = np.asarray(example["image"])
        if image.shape != shape:
            raise ValueError(
                f"TFDS dataset {name!r}: images differ in shape ({shape} vs {image.shape} at "
                f"index {i}); only fixed-size images are supported."
            )
        images[i] = image
        labels[i] = example["label"]
    x = images.astype(np.float32)
    x /= 255.0
    return x, labels.astype(np.int32)


def load_tfds_split(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Reads a whole split of a prepared TFDS image classification dataset into memory.

    Args:
        name: TFDS dataset name, e.g. ``"cifar100"``.
        split: TFDS split specification, e.g. ``"train"`` or ``"test[:10%]"``.
        data_dir: TFDS data directory, or None for the TFDS default.

    Returns:
        ``(x, y, num_classes)``: float32 images ``[N, H, W, C]`` in ``[0, 1]``, int32 labels
        ``[N]`` and the size of the ``label`` feature.

    Raises:
        FileNotFoundError: If the dataset is not prepared in ``data_dir``.
        ValueError: If the dataset is unknown or not an image classification dataset with
            fixed-size ``image`` and ClassLabel ``label`` features.
    """
    import tensorflow_datasets as tfds  # Lazy: importing TFDS takes a while.

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise
    except Exception as err:
        # A missing dataset surfaces as various errors (e.g. NotImplementedError about the file
        # format, because without metadata TFDS assumes TFRecord); check what actually happened.
        if not tfds.builder(name, data_dir=data_dir).is_prepared():
            raise FileNotFoundError(_not_prepared_message(name, split, data_dir)) from err
        raise
    num_classes = _num_classes(source.dataset_info, name)
    x, y = _read_all(source, name)
    return x, y, num_classes

"""Tests for unlearnx.data.load and the Dataset container."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from unlearnx import data
from unlearnx.data import Dataset, load
from unlearnx.data import sources as sources_module
from unlearnx.data.idx import parse_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _fresh_cache():
    sources_module._cached_arrays.cache_clear()
    yield
    sources_module._cached_arrays.cache_clear()


# ----------------------------------------------------------------------------- Dataset


def _tiny(n: int = 6, num_classes: int = 3) -> Dataset:
    x = np.linspace(0, 1, n * 4, dtype=np.float32).reshape(n, 2, 2, 1)
    y = np.arange(n) % num_classes
    return Dataset(x=x, y=y, num_classes=num_classes, name="tiny")


def test_dataset_basics():
    ds = _tiny()
    assert len(ds) == 6
    assert ds.y.dtype == np.int32 and ds.x.dtype == np.float32
    arrays = ds.arrays()
    assert set(arrays) == {"x", "y"} and arrays["x"] is ds.x and arrays["y"] is ds.y
    sub = ds.subset([4, 0])
    assert np.array_equal(sub.y, [1, 0]) and np.array_equal(sub.x, ds.x[[4, 0]])
    assert sub.num_classes == 3 and sub.name == "tiny"
    assert len(ds.subset(ds.y == 2)) == 2
    assert len(ds.subset([])) == 0
    with pytest.raises(ValueError, match="Boolean mask"):
        ds.subset([True, False])
    with pytest.raises(ValueError, match="integers"):
        ds.subset([0.5])


@pytest.mark.parametrize(
    ("x", "y", "num_classes", "match"),
    [
        (np.zeros((3, 2, 2, 1)), np.zeros(2, int), 2, "same length"),
        (np.zeros((2, 2, 2, 1)), np.array([0, 2]), 2, r"\[0, 2\)"),
        (np.zeros((2, 2, 2, 1)), np.array([-1, 0]), 2, r"\[0, 2\)"),
        (np.zeros((2, 2, 2)), np.zeros(2, int), 2, r"\[N, H, W, C\]"),
        (np.zeros((2, 2, 2, 1)), np.zeros(2), 2, "integers"),
        (np.zeros((2, 2, 2, 1)), np.zeros(2, int), 0, "positive"),
    ],
)
def test_dataset_validation(x, y, num_classes, match):
    with pytest.raises(ValueError, match=match):
        Dataset(x=x, y=y, num_classes=num_classes, name="bad")


# ----------------------------------------------------------------------------- names


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="digits.*fashion_mnist.*mnist.*tfds:"):
        load("cifar10")
    with pytest.raises(ValueError, match="Unknown dataset"):
        load("tfds:")


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_range():
    ds = load("digits", "all")
    assert ds.x.shape == (1797, 8, 8, 1)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.num_classes == 10 and ds.name == "digits"


def test_digits_stratified_split():
    train, test, full = load("digits", "train"), load("digits", "test"), load("digits", "all")
    assert len(train) + len(test) == len(full) == 1797
    assert len(test) == 360
    full_counts = np.bincount(full.y, minlength=10)
    test_counts = np.bincount(test.y, minlength=10)
    # Stratified: each class is split 80/20 up to rounding.
    assert np.all(np.abs(test_counts - 0.2 * full_counts) <= 1)
    assert np.array_equal(np.bincount(train.y, minlength=10) + test_counts, full_counts)

    # Train and test together hold exactly the examples of the full set (as a multiset).
    def rows(*parts):
        flat = np.concatenate([np.concatenate([p.x.reshape(len(p), -1), p.y[:, None]], 1) for p in parts])
        return flat[np.lexsort(flat.T[::-1])]

    np.testing.assert_array_equal(rows(train, test), rows(full))


def test_digits_deterministic_and_cached():
    a = load("digits", "train")
    sources_module._cached_arrays.cache_clear()
    b = load("digits", "train")
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    c = load("digits", "train")
    assert c.x is b.x  # served from the cache
    assert not c.x.flags.writeable and not c.y.flags.writeable
    with pytest.raises(ValueError):
        c.x[0, 0, 0, 0] = 1.0


def test_digits_bad_split():
    with pytest.raises(ValueError, match=r"'train', 'test', 'all'"):
        load("digits", "validation")


# ----------------------------------------------------------------------------- IDX files


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory: Path, *, gz: bool, n_train: int = 5, n_test: int = 3):
    rng = np.random.default_rng(0)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = directory / f"{prefix}-{kind}-ubyte"
            data = _idx_bytes(array)
            if gz:
                path = path.with_name(path.name + ".gz")
                data = gzip.compress(data)
            path.write_bytes(data)
        written[prefix] = (images, labels)
    return written


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    written = _write_mnist(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load("mnist", split, data_dir=tmp_path)
        images, labels = written[prefix]
        assert ds.x.shape == (len(labels), 28, 28, 1) and ds.x.dtype == np.float32
        assert ds.name == "mnist" and ds.num_classes == 10
        np.testing.assert_array_equal(np.rint(ds.x[..., 0] * 255).astype(np.uint8), images)
        np.testing.assert_array_equal(ds.y, labels)
        assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0


def test_idx_parser_direct():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(array)), array)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "dtype code 0x0d"),
        (lambda b: b[:-1], "declares shape"),
        (lambda b: b + b"\x00", "declares shape"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_idx_corrupt_files(tmp_path, mutate, match):
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        load("mnist", "train", data_dir=tmp_path)


def test_idx_truncated_gzip(tmp_path):
    _write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="corrupt gzip"):
        load("mnist", "train", data_dir=tmp_path)


def test_idx_count_mismatch(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="5 images .* but 4 labels"):
        load("mnist", "train", data_dir=tmp_path)


def test_idx_wrong_rank(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((5, 784), np.uint8)))
    with pytest.raises(ValueError, match="3-D"):
        load("mnist", "train", data_dir=tmp_path)


def test_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load("fashion_mnist", data_dir=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load("fashion_mnist", "test", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="data_dir="):
        load("mnist")
    with pytest.raises(ValueError, match=r"'train', 'test'"):
        load("mnist", "all", data_dir=tmp_path)


@pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists()
    and not (FASHION_DIR / "train-images-idx3-ubyte").exists(),
    reason=f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    train, test = load("fashion_mnist", "train"), load("fashion_mnist", "test")
    assert train.x.shape == (60000, 28, 28, 1) and test.x.shape == (10000, 28, 28, 1)
    assert train.num_classes == test.num_classes == 10
    assert np.array_equal(np.bincount(train.y, minlength=10), np.full(10, 6000))
    assert np.array_equal(np.bincount(test.y, minlength=10), np.full(10, 1000))
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    assert load("fashion_mnist", "train").x is train.x


# ----------------------------------------------------------------------------- TFDS


def test_tfds_mock_cifar10():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=9):
        ds = load("tfds:cifar10", "train")
        source = tfds.data_source("cifar10", split="train")
        raw_images = np.stack([source[i]["image"] for i in range(len(source))])
        raw_labels = np.array([source[i]["label"] for i in range(len(source))])
    assert ds.name == "tfds:cifar10" and ds.num_classes == 10
    assert ds.x.shape == (9, 32, 32, 3) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int32 and ds.y.shape == (9,)
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    np.testing.assert_array_equal(np.rint(ds.x * 255).astype(np.uint8), raw_images)
    np.testing.assert_array_equal(ds.y, raw_labels)
    assert not ds.x.flags.writeable


def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="tfds build cifar10"):
        load("tfds:cifar10", "train", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["digits", "fashion_mnist"])
def test_describe_matches_the_loaded_data(name):
    for split in ("train", "test"):
        try:
            loaded = data.load(name, split)
        except FileNotFoundError:
            pytest.skip(f"{name} is not installed here")
        info = data.describe(name, split)
        assert (info.input_shape, info.num_classes, info.size) == (
            loaded.x.shape[1:],
            loaded.num_classes,
            len(loaded.x),
        )


def test_describe_sizes_tfds_slices_by_hand():
    sizes = {"train[:90%]": 45_000, "train[90%:]": 5_000, "train[45000:]": 5_000, "train[:-5000]": 45_000}
    for split, size in sizes.items():
        assert data.describe("tfds:cifar100", split) == ((32, 32, 3), 100, size)


def test_describe_names_unknown_datasets_and_splits():
    with pytest.raises(ValueError, match="no stored description of dataset 'tfds:imagenet2012'"):
        data.describe("tfds:imagenet2012")
    with pytest.raises(ValueError, match="no split 'validation'"):
        data.describe("tfds:cifar100", "validation")

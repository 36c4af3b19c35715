"""unlearnx.data.crop_and_flip: every output is a (possibly mirrored) window of the padded input."""

import numpy as np
import pytest

from unlearnx.data import crop_and_flip


def test_outputs_are_windows_of_the_padded_image():
    rng = np.random.default_rng(0)
    images = rng.random((16, 5, 6, 2)).astype(np.float32)
    out = crop_and_flip({"x": images, "y": np.arange(16)}, np.random.default_rng(1), pad=2)
    assert out["x"].shape == images.shape and np.array_equal(out["y"], np.arange(16))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    flipped = 0
    for i in range(16):
        windows = [
            (padded[i, t : t + 5, s : s + 6], mirror)
            for t in range(5)
            for s in range(5)
            for mirror in (False, True)
        ]
        matches = [m for w, m in windows if np.array_equal(w[:, ::-1] if m else w, out["x"][i])]
        assert matches, f"image {i} is not a window of its padded input"
        flipped += matches[0]
    assert 0 < flipped < 16  # both outcomes occur


def test_no_padding_no_flip_is_identity_up_to_mirroring():
    images = np.random.default_rng(0).random((8, 4, 4, 1))
    out = crop_and_flip({"x": images}, np.random.default_rng(0), pad=0)["x"]
    for original, augmented in zip(images, out, strict=True):
        assert np.array_equal(original, augmented) or np.array_equal(original[:, ::-1], augmented)


def test_same_generator_state_same_output_and_errors():
    images = np.random.default_rng(0).random((4, 8, 8, 3))
    a = crop_and_flip({"x": images}, np.random.default_rng(5))["x"]
    b = crop_and_flip({"x": images}, np.random.default_rng(5))["x"]
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        crop_and_flip({"x": images[0]}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="pad must be non-negative"):
        crop_and_flip({"x": images}, np.random.default_rng(0), pad=-1)

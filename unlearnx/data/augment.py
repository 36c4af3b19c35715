"""Host-side image augmentation with an explicit NumPy generator (deterministic, resumable)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["crop_and_flip"]


def crop_and_flip(
    batch: Mapping[str, np.ndarray], rng: np.random.Generator, *, pad: int = 4
) -> dict[str, np.ndarray]:
    """The standard CIFAR augmentation of ``batch["x"]`` (``[B, H, W, C]``): zero-pad by ``pad`` pixels,
    take a random H×W crop, and flip it horizontally with probability 1/2. Other fields pass through.

    Args:
        batch: a mapping with images ``"x"`` ``[B, H, W, C]`` (other keys, e.g. ``"y"``, are kept).
        rng: the NumPy generator that draws the crops and flips (advanced in place).
        pad: the zero padding on each side, ≥ 0 (0 leaves only the flips).

    Returns:
        A new dict like ``batch`` with ``"x"`` replaced by the augmented images, same shape and dtype.

    Raises:
        ValueError: ``x`` is not 4-D or ``pad`` is negative.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> x = np.arange(3.0).reshape(1, 1, 3, 1)  # one 1×3 image
        >>> [data.crop_and_flip({"x": x}, np.random.default_rng(seed), pad=0)["x"].ravel().tolist()
        ...  for seed in (1, 2)]  # pad 0: the crop is the image, kept or mirrored
        [[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]

    References:
        He, Zhang, Ren and Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016 (§4.2).
    """
    images = np.asarray(batch["x"])
    if images.ndim != 4:
        raise ValueError(f"crop_and_flip needs x of shape [B, H, W, C], got {images.shape}")
    if pad < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    size, height, width = images.shape[:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    tops = rng.integers(0, 2 * pad + 1, size)
    lefts = rng.integers(0, 2 * pad + 1, size)
    rows = tops[:, None] + np.arange(height)[None, :]
    cols = lefts[:, None] + np.arange(width)[None, :]
    flips = rng.random(size) < 0.5
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    crops = padded[np.arange(size)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return {**batch, "x": crops}

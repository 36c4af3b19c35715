"""In-memory labelled image dataset container."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set held in host memory.

    Arrays are converted (without copying when already of the right dtype) to ``float32`` images
    and ``int32`` labels. Pixel values are expected, but not checked, to lie in ``[0, 1]``.
    Arrays produced by :func:`unlearnx.data.load` are read-only because they are shared with an
    internal cache.

    Attributes:
        x: Images, ``float32`` of shape ``[N, H, W, C]``, scaled to ``[0, 1]``.
        y: Integer class labels, ``int32`` of shape ``[N]``, each in ``[0, num_classes)``.
        num_classes: Number of classes in the label space (not necessarily all present).
        name: Human-readable name of the dataset, e.g. ``"digits"``.

    Raises:
        ValueError: arrays of the wrong rank or unequal length, non-integer labels, or a label outside
            ``[0, num_classes)``.

    Examples:
        >>> import numpy as np
        >>> from unlearnx import data
        >>> dataset = data.Dataset(np.zeros((3, 2, 2, 1)), np.array([0, 2, 1]), num_classes=3, name="toy")
        >>> len(dataset), dataset.subset([1, 2]).y.tolist(), dataset.x.dtype
        (3, [2, 1], dtype('float32'))
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        if x.ndim != 4:
            raise ValueError(f"Dataset {self.name!r}: x must have shape [N, H, W, C], got {x.shape}.")
        if y.ndim != 1:
            raise ValueError(f"Dataset {self.name!r}: y must have shape [N], got {y.shape}.")
        if len(x) != len(y):
            raise ValueError(
                f"Dataset {self.name!r}: x and y must have the same length, "
                f"got {len(x)} images and {len(y)} labels."
            )
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"Dataset {self.name!r}: y must hold integers, got dtype {y.dtype}.")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int | np.integer):
            raise ValueError(f"Dataset {self.name!r}: num_classes must be an int.")
        if self.num_classes < 1:
            raise ValueError(f"Dataset {self.name!r}: num_classes must be positive, got {self.num_classes}.")
        if y.size:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"Dataset {self.name!r}: labels must lie in [0, {self.num_classes}), "
                    f"found values in [{lo}, {hi}]."
                )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int32, copy=False))
        object.__setattr__(self, "num_classes", int(self.num_classes))

    def __len__(self) -> int:
        """Returns the number of examples."""
        return len(self.y)

    def arrays(self) -> dict[str, np.ndarray]:
        """Returns the examples as a ``{"x": images, "y": labels}`` mapping."""
        return {"x": self.x, "y": self.y}

    def subset(self, indices: npt.ArrayLike) -> Dataset:
        """Selects examples by position.

        Args:
            indices: Integer positions (any order, repeats allowed) or a boolean mask of length
                ``len(self)``.

        Returns:
            A new dataset with the selected examples, same ``num_classes`` and ``name``.

        Raises:
            ValueError: If ``indices`` is neither a 1-D integer array nor a boolean mask of the
                right length.
            IndexError: If an integer position is out of range.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}.")
        if idx.dtype == np.bool_:
            if len(idx) != len(self):
                raise ValueError(f"Boolean mask has length {len(idx)}, dataset has {len(self)} examples.")
        elif idx.size == 0:
            idx = idx.astype(np.intp)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers or a boolean mask, got dtype {idx.dtype}.")
        return Dataset(x=self.x[idx], y=self.y[idx], num_classes=self.num_classes, name=self.name)

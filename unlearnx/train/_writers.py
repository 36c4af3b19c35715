"""Metric records written twice: JSON lines (one object per record) and TensorBoard event files."""

from __future__ import annotations

import json
import numbers
import os
from typing import Any

import jax
import numpy as np

from unlearnx import parallel

__all__ = ["MetricLogger"]


def plain(value: Any) -> Any:
    """``value`` with NumPy/JAX arrays and scalars (also inside dicts, lists, tuples) as plain Python numbers
    and lists, so a record is JSON-able and checkpointable."""
    if isinstance(value, np.generic | jax.Array | np.ndarray):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


class MetricLogger:
    """Appends one JSON object per record to ``path`` and the numeric scalars to TensorBoard event files.

    Each record names its loop (``phase``) and its ``step``; TensorBoard gets ``phase/key`` scalars at that
    step, written by ``tensorboardX`` into ``tensorboard_dir`` (default: a ``tensorboard`` folder beside
    ``path``; ``False`` for none). Only process 0 writes.

    Args:
        path: the JSONL file (``None``: log nothing).
        tensorboard_dir: where the event files go.

    Examples:
        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "train_log.jsonl")
        >>> logger = MetricLogger(path, tensorboard_dir=False)  # JSONL only
        >>> logger.log(phase="train", step=100, loss=np.float32(0.25))
        >>> logger.log(phase="train", step=200, loss=np.float32(0.125))
        >>> logger.rewind("train", 100)  # a run resumed from step 100 drops the later record
        >>> logger.close()
        >>> open(path).read().splitlines()
        ['{"phase": "train", "step": 100, "loss": 0.25}']
    """

    def __init__(
        self, path: str | os.PathLike | None, tensorboard_dir: str | os.PathLike | bool | None = None
    ):
        self.path = None if path is None else os.path.abspath(os.fspath(path))
        self._tensorboard_dir = None
        self._writer = None
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if tensorboard_dir is None:
            tensorboard_dir = os.path.join(os.path.dirname(self.path), "tensorboard")
        if tensorboard_dir is not False:
            self._tensorboard_dir = os.fspath(tensorboard_dir)

    def _active(self) -> bool:
        return self.path is not None and parallel.is_main_process()

    def log(self, **record: Any) -> None:
        """Writes one record (NumPy/JAX values become plain JSON numbers or lists)."""
        if not self._active():
            return
        clean = plain(record)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self._tensorboard_dir is None or "step" not in clean:
            return
        if self._writer is None:
            from tensorboardX import SummaryWriter  # lazy: only runs that log pay for the import

            self._writer = SummaryWriter(self._tensorboard_dir)
        prefix = clean.get("phase", "train")
        for key, value in clean.items():
            if (
                key not in ("phase", "step")
                and isinstance(value, numbers.Real)
                and not isinstance(value, bool)
            ):
                self._writer.add_scalar(f"{prefix}/{key}", value, clean["step"])
        self._writer.flush()

    def rewind(self, phase: str, step: int) -> None:
        """Drops the JSONL records of ``phase`` past ``step`` (a resumed loop is about to log them again)."""
        if not self._active() or not os.path.exists(self.path):
            return
        with open(self.path) as handle:
            lines = handle.read().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if not (record.get("phase") == phase and record.get("step", 0) > step):
                kept.append(line)
        temporary = self.path + ".tmp"
        with open(temporary, "w") as handle:
            handle.write("".join(line + "\n" for line in kept))
        os.replace(temporary, self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

"""Atomic, resumable checkpoints of any pytree with orbax's ``CheckpointManager``.

A training loop saves its state (parameters, optimizer state, counters) at the end of each epoch; a rerun
restores the latest step into the same structure and continues, which, with deterministic data order and
step-folded RNG, ends in exactly the state an uninterrupted run reaches.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any

__all__ = ["Checkpointer"]


class Checkpointer:
    """A directory of numbered checkpoints of one pytree structure.

    Args:
      directory: where the numbered step folders live (created if missing).
      max_to_keep: how many of the newest checkpoints to keep.

    Example::

      ckpt = Checkpointer("runs/x/checkpoints/train")
      start = 0
      if ckpt.latest_step() is not None:
          start = ckpt.latest_step()
          state = ckpt.restore(state)
      ...
      ckpt.save(epoch + 1, state)
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when the directory holds no checkpoint."""
        return self._manager.latest_step()

    def save(self, step: int, tree: PyTree) -> None:
        """Saves ``tree`` as ``step`` and waits until it is durably written (the write is atomic)."""
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore(self, like: PyTree, step: int | None = None) -> PyTree:
        """Restores ``step`` (default: the latest) into the structure, shapes and dtypes of ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

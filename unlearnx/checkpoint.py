"""Atomic, resumable checkpoints of any pytree (plus a JSON record) with orbax's ``CheckpointManager``.

A training loop saves its whole state (parameters, optimizer state, RNG, counters) together with a small
JSON document (its metric history) when orbax's save-decision policy says so; a rerun restores the newest
step into the same structure and continues, which, with deterministic data order and step-folded RNG, ends
in exactly the state an uninterrupted run reaches. Orbax writes each step to a temporary folder and renames
it when complete, so a process killed mid-write leaves the previous step intact. Each finished step also gets
a SHA-256 digest of every file in it; :meth:`Checkpointer.restore_latest` verifies it and falls back, with a
warning naming the damaged file, to the newest step that is intact (an intact step of another state
structure raises instead: it is not damage, and it is never deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from unlearnx._typing import PyTree

__all__ = ["Checkpointer", "interval_policy"]

_DIGEST = "unlearnx_digest.json"


def _file_digests(directory: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` but the digest file itself."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative.startswith(_DIGEST):  # the digest and its temporary file
                continue
            with open(path, "rb") as handle:
                digests[relative] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def interval_policy(
    *, seconds: float | None = None, steps: int | None = None
) -> policies.SaveDecisionPolicy | None:
    """An orbax save-decision policy: at most every ``seconds`` of wall time and/or every ``steps`` steps.

    ``seconds=0`` saves whenever the caller offers a save point; both ``None`` gives ``None`` (only forced
    saves: the final step and preemption). With ``seconds``, orbax's continuous policy also saves at the
    first point offered when the directory holds no checkpoint yet.

    Args:
        seconds: the least wall time between two saves (``None``: no time condition).
        steps: save at the steps that are multiples of ``steps`` (``None``: no step condition).

    Returns:
        An orbax ``SaveDecisionPolicy`` (any of the two conditions saves), or ``None``.

    Raises:
        ValueError: if ``seconds`` is negative or ``steps`` is not a positive int.

    Examples:
        >>> type(interval_policy(steps=100)).__name__
        'FixedIntervalPolicy'
        >>> type(interval_policy(seconds=600, steps=100)).__name__
        'AnySavePolicy'
        >>> interval_policy() is None
        True
    """
    chosen = []
    if seconds is not None:
        if not seconds >= 0:
            raise ValueError(f"interval_policy: seconds must be >= 0, got {seconds!r}")
        chosen.append(policies.ContinuousCheckpointingPolicy(minimum_interval_secs=seconds))
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"interval_policy: steps must be a positive int, got {steps!r}")
        chosen.append(policies.FixedIntervalPolicy(steps))
    if not chosen:
        return None
    return chosen[0] if len(chosen) == 1 else policies.AnySavePolicy(chosen)


class Checkpointer:
    """A directory of numbered checkpoints of one pytree structure, each with an optional JSON record.

    Args:
        directory: where the numbered step folders live (created if missing).
        max_to_keep: how many of the newest checkpoints to keep.
        policy: orbax ``SaveDecisionPolicy`` consulted by :meth:`should_save` (see :func:`interval_policy`);
            ``None`` never asks for a save, so only forced saves happen.

    Raises:
        ValueError: if ``max_to_keep`` < 1.

    Examples:
        Three saves with ``max_to_keep=2`` keep steps 2 and 3; a restore reads the newest into the structure
        of ``like``:

        >>> import tempfile, jax.numpy as jnp
        >>> with Checkpointer(tempfile.mkdtemp(), max_to_keep=2) as ckpt:
        ...     for step in (1, 2, 3):
        ...         ckpt.save(step, {"w": jnp.full(2, float(step))}, {"epoch": step})
        ...     tree, record = ckpt.restore({"w": jnp.zeros(2)})
        ...     steps = ckpt.all_steps()
        >>> steps, tree["w"].tolist(), record
        ([2, 3], [3.0, 3.0], {'epoch': 3})

        In a training loop, ``policy=interval_policy(seconds=60)`` and ``if ckpt.should_save(step):
        ckpt.save(step, state, history)``; :meth:`restore_latest` resumes from the newest intact step.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 2,
        policy: policies.SaveDecisionPolicy | None = None,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self._asks = policy is not None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, save_decision_policy=policy
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when the directory holds no checkpoint."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every saved step, oldest first."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether the policy asks for a save at ``step`` (never, without a policy)."""
        return self._asks and self._manager.should_save(step)

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, tree: PyTree, record: Any = None) -> None:
        """Saves ``tree`` (and the JSON-able ``record``) as ``step``, waits until it is durably written, then
        writes the digest of its files (process 0)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), record=ocp.args.JsonSave(record))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            path = os.path.join(self._step_dir(step), _DIGEST)
            digests = _file_digests(self._step_dir(step))
            with open(path + ".tmp", "w") as handle:
                json.dump(digests, handle, sort_keys=True)
            os.replace(path + ".tmp", path)

    def verify(self, step: int) -> str | None:
        """``None`` when ``step``'s files match their digest, else what is wrong (naming the file)."""
        directory = self._step_dir(step)
        try:
            with open(os.path.join(directory, _DIGEST)) as handle:
                want = json.load(handle)
        except (OSError, json.JSONDecodeError):
            return f"{os.path.join(directory, _DIGEST)} is missing or unreadable (the save did not finish)"
        have = _file_digests(directory)
        for relative in sorted(set(want) | set(have)):
            if want.get(relative) != have.get(relative):
                state = (
                    "missing" if relative not in have else "unexpected" if relative not in want else "changed"
                )
                return f"{os.path.join(directory, relative)} is {state}"
        return None

    def restore_latest(self, like: PyTree) -> tuple[int, PyTree, Any] | None:
        """``(step, tree, record)`` of the newest intact step, or ``None`` when there is none.

        Steps that fail their digest are deleted with a warning naming the damaged file, so training
        resumes from the newest good step (or from scratch) instead of from bad data. An intact step that does
        not fit ``like`` (another structure, shape or dtype: written by another version of the code or another
        configuration) is not damage: it raises, and nothing is deleted.

        Raises:
            ValueError: the newest intact step does not restore into ``like``.
        """
        for step in reversed(self.all_steps()):
            problem = self.verify(step)
            if problem is None:
                try:
                    tree, record = self.restore(like, step)
                except Exception as error:
                    raise ValueError(
                        f"checkpoint step {step} in {self.directory} is intact (its files match their "
                        f"digest) but does not fit the state to restore into ({type(error).__name__}: "
                        f"{error}); it was written by another version of the code or another configuration: "
                        "resume with those, or move the directory away to start afresh (nothing was deleted)"
                    ) from error
                return step, tree, record
            warnings.warn(
                f"checkpoint step {step} in {self.directory} is damaged ({problem}); deleting it and "
                "falling back to an earlier step",
                RuntimeWarning,
                stacklevel=2,
            )
            self._manager.delete(step)
        return None

    def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, Any]:
        """Restores ``step`` (default: the latest) into the structure, shapes, dtypes and shardings of
        ``like``; returns ``(tree, record)``.

        Raises:
            FileNotFoundError: if there is no checkpoint to restore.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored["state"], restored["record"]

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

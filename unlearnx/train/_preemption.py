"""One stop mechanism for preemption, users and tests: a request is honoured by :func:`unlearnx.train.loop`
at the next step, which checkpoints and raises :class:`Preempted`.

Requests come from SIGTERM (what a TPU VM or a batch scheduler sends before it takes the machine; see
:func:`install_sigterm_handler`), from :func:`request_stop` (e.g. a user's own signal handler or a timer),
or from :func:`stop_at` (stop once the loop named ``name`` has run ``step`` steps: how the tests and
``python -m experiments --interrupt NAME:STEP`` simulate a preemption at an exact point). On several
processes the step to stop at is agreed through JAX's preemption sync point, so every host saves the same
step.
"""

from __future__ import annotations

import signal
import threading

import jax

__all__ = [
    "Preempted",
    "clear_stop",
    "install_sigterm_handler",
    "request_stop",
    "stop_at",
    "stop_requested",
]

_requested = threading.Event()
_stop_points: dict[str, int] = {}


class Preempted(RuntimeError):
    """Raised by :func:`unlearnx.train.loop` after it checkpointed because a stop was requested.

    Attributes:
        name: the loop that stopped.
        step: the step it saved.
        directory: the checkpoint directory a rerun resumes from.

    Examples:
        >>> error = Preempted("fit", 120, "runs/mine/ckpt")
        >>> str(error), error.step
        ("'fit' stopped after step 120; checkpoint in runs/mine/ckpt", 120)
    """

    def __init__(self, name: str, step: int, directory: str | None):
        where = f"; checkpoint in {directory}" if directory else " (no checkpoint directory: progress lost)"
        super().__init__(f"{name!r} stopped after step {step}{where}")
        self.name, self.step, self.directory = name, step, directory


def request_stop() -> None:
    """Asks every running :func:`unlearnx.train.loop` to checkpoint and raise :class:`Preempted`.

    The request stays until :func:`clear_stop`; SIGTERM makes the same request after
    :func:`install_sigterm_handler`.

    Returns:
        ``None``.

    Examples:
        >>> request_stop()
        >>> stop_requested("fit", 0), stop_requested("other", 7)  # every loop stops
        (True, True)
        >>> clear_stop()
    """
    _requested.set()


def stop_at(name: str, step: int) -> None:
    """Asks the loop named ``name`` to checkpoint and stop once it has run ``step`` steps.

    Args:
        name: the loop's name (``loop(..., name=)``).
        step: stop once this many steps have run.

    Returns:
        ``None``.

    Raises:
        ValueError: if ``name`` is empty or ``step`` is not a non-negative int.

    Examples:
        >>> stop_at("fit", 100)
        >>> stop_requested("fit", 99), stop_requested("fit", 100), stop_requested("other", 100)
        (False, True, False)
        >>> clear_stop()
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"stop_at: name must be a non-empty string, got {name!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"stop_at: step must be a non-negative int, got {step!r}")
    _stop_points[name] = step


def clear_stop() -> None:
    """Forgets every pending request (after a handled :class:`Preempted`, before training again).

    Returns:
        ``None``.

    Examples:
        >>> request_stop()
        >>> clear_stop()
        >>> stop_requested("fit", 0)
        False
    """
    _requested.clear()
    _stop_points.clear()


def install_sigterm_handler() -> None:
    """Makes SIGTERM a stop request (call once, from the main thread, at program start).

    On several processes JAX's own preemption notifier (started by ``jax.distributed.initialize``) handles
    SIGTERM and :func:`stop_requested` consults its sync point, so this does nothing there.

    Returns:
        ``None``.

    Examples:
        >>> import signal
        >>> previous = signal.getsignal(signal.SIGTERM)
        >>> install_sigterm_handler()
        >>> handler = signal.getsignal(signal.SIGTERM)  # SIGTERM now calls request_stop
        >>> handler(signal.SIGTERM, None)
        >>> stop_requested("fit", 0)
        True
        >>> clear_stop()
        >>> _ = signal.signal(signal.SIGTERM, previous)
    """
    if jax.process_count() > 1:
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: request_stop())


def stop_requested(name: str, step: int) -> bool:
    """Whether the loop ``name`` should stop after ``step`` steps (agreed across processes).

    Args:
        name: the loop's name.
        step: the steps it has run.

    Returns:
        ``True`` after :func:`request_stop` (or SIGTERM), at or past a :func:`stop_at` point of ``name``, or
        at a multi-host job's preemption sync point.

    Examples:
        >>> stop_requested("fit", 10)
        False
    """
    local = _requested.is_set() or (name in _stop_points and step >= _stop_points[name])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        try:
            local = local or multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is not running in this job
            pass
    return local

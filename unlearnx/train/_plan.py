"""A study's cost before it runs: its training loops as :class:`Phase` objects, each compiled once on
abstract shapes by :func:`~unlearnx.train.step_cost`, summed into one table and one JSON-able record."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from unlearnx import models
from unlearnx.train._cost import (
    DEFAULT_UTILISATION,
    REFERENCE_DEVICES,
    StepCost,
    device_peak_flops,
    step_cost,
)
from unlearnx.train._step import TrainState, example_losses, make_train_step

__all__ = ["Phase", "plan", "supervised_phase"]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training loop of a study: ``repeats`` identical loops (seeds, methods, classes) of ``steps``
    steps of ``step(state, batch)``, with ``state`` and one global ``batch`` as abstract shapes
    (``jax.ShapeDtypeStruct`` leaves) or arrays; ``batch_axis`` and ``shard_params`` as the loop runs them.

    Attributes:
        name: the loop's name in :func:`plan`'s table.
        step: ``step(state, batch)``, as :func:`unlearnx.train.loop` calls it.
        state: the state, abstract or concrete.
        batch: one global batch, abstract or concrete.
        steps: steps of one loop.
        repeats: identical loops.
        batch_axis: the example axis of the batch.
        shard_params: whether the loop shards parameters (``loop(..., shard_params=)``).
        loop_trips: iterations of a ``lax.scan`` in the step (microbatches): XLA counts a loop body once.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> phase = Phase("sum", lambda s, b: s + b["x"].sum(), jax.ShapeDtypeStruct((), jnp.float32),
        ...               {"x": jax.ShapeDtypeStruct((8, 2), jnp.float32)}, steps=100)
        >>> phase.repeats, phase.batch["x"].shape
        (1, (8, 2))
    """

    name: str
    step: Callable[[Any, Mapping[str, Any]], Any]
    state: Any
    batch: Mapping[str, Any]
    steps: int
    repeats: int = 1
    batch_axis: int = 0
    shard_params: bool = False
    loop_trips: int = 1  # iterations of a lax.scan in the step (microbatches): XLA counts a loop body once


def supervised_phase(
    name: str,
    model: models.Model,
    optimizer: optax.GradientTransformation,
    input_shape: Sequence[int],
    batch_size: int,
    steps: int,
    *,
    repeats: int = 1,
    loss: Callable = example_losses,
    input_dtype: Any = jnp.float32,
    target_shape: Sequence[int] = (),
) -> Phase:
    """The :class:`Phase` of a :func:`~unlearnx.train.fit` run of ``model`` (its state from
    ``jax.eval_shape``: nothing is initialised).

    Args:
        name: the loop's name in the table.
        model: a :class:`unlearnx.models.Model`.
        optimizer: the optax transformation the run uses.
        input_shape: one example's input shape.
        batch_size: the global batch size.
        steps: optimizer steps of one run.
        repeats: identical runs (seeds, methods, classes).
        loss: :func:`~unlearnx.train.example_losses` (a batch with integer labels ``"y"`` of
            ``target_shape``) or another per-example loss of ``make_train_step`` (inputs only).
        input_dtype: the input's dtype (``jnp.int32`` for tokens).
        target_shape: one example's label shape.

    Returns:
        The :class:`Phase`.

    Examples:
        >>> import optax
        >>> from unlearnx import models
        >>> phase = supervised_phase("mlp", models.mlp((4,), 3, hidden=(8,)), optax.sgd(0.1), (4,), 32, 500)
        >>> phase.batch["x"].shape, phase.batch["y"].shape, phase.steps
        ((32, 4), (32,), 500)
    """

    def create():
        return TrainState.create(model.init(jax.random.key(0)), optimizer, jax.random.key(1))

    batch = {"x": jax.ShapeDtypeStruct((batch_size, *input_shape), input_dtype)}
    if loss is example_losses:
        batch["y"] = jax.ShapeDtypeStruct((batch_size, *target_shape), jnp.int32)
    step = make_train_step(model, optimizer, loss=loss)
    return Phase(name, step, jax.eval_shape(create), batch, steps, repeats)


def _cost(phase: Phase) -> StepCost:
    cost = step_cost(phase.step, phase.state, phase.batch, phase.steps, name=phase.name,
                     batch_axis=phase.batch_axis, shard_params=phase.shard_params)  # fmt: skip
    return cost._replace(flops_per_step=cost.flops_per_step * phase.loop_trips)


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f}"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def plan(phases: Sequence[Phase]) -> tuple[str, dict[str, Any]]:
    """Prices every phase on the current devices: a Markdown table and a JSON-able record.

    Each phase's step is compiled once for the current mesh (:func:`~unlearnx.train.step_cost`, one
    compilation per CPU core at a time: XLA's HLO passes are single-threaded, so with LLVM's optimisation
    off the GraNet ResNet-50 preset plans in 98 s instead of 126 s on 2 cores); the
    table gives devices, parameters, XLA's FLOPs per step, steps, the hours of all its repeats on the
    detected devices and on one chip of each :data:`~unlearnx.train.REFERENCE_DEVICES`, at
    :data:`~unlearnx.train.DEFAULT_UTILISATION` of the bf16 peak, and XLA's memory per device.

    Args:
        phases: the study's loops.

    Returns:
        ``(markdown, record)``; ``record`` holds each phase's :class:`~unlearnx.train.StepCost` fields, its
        repeats and hours, and ``total_hours`` per device kind.

    Examples:
        >>> import optax
        >>> from unlearnx import models, train
        >>> model = models.mlp((8,), 3, hidden=(16,))
        >>> phase = train.supervised_phase("fit", model, optax.adam(1e-3), (8,), 32, 100)
        >>> text, record = train.plan([phase])
        >>> record["phases"][0]["steps"]
        100
    """
    detected, detected_peak = device_peak_flops()
    peaks = {"detected": (detected_peak, None), **{name: (p, 1) for name, p in REFERENCE_DEVICES.items()}}
    record: dict[str, Any] = {
        "detected_device": detected,
        "devices": jax.device_count(),
        "utilisation": DEFAULT_UTILISATION,
        "phases": [],
    }
    totals = dict.fromkeys(peaks, 0.0)
    header = ["loop", "× runs", "devices", "params", "GFLOP/step", "steps", f"h on {jax.device_count()} × "
              f"{detected}", *(f"h on 1 {name}" for name in REFERENCE_DEVICES), "GiB/device"]  # fmt: skip
    lines = [_row(*header), _row(*["---"] * len(header))]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # XLA compiles without the GIL
        costs = list(pool.map(_cost, phases))
    for phase, cost in zip(phases, costs, strict=True):
        hours = {k: phase.repeats * cost.hours(peak, chips=chips) for k, (peak, chips) in peaks.items()}
        totals = {k: totals[k] + hours[k] for k in totals}
        lines.append(_row(phase.name, phase.repeats, cost.devices, f"{cost.params:,}",
                          f"{cost.flops_per_step / 1e9:.3g}", f"{cost.steps:,}",
                          *(f"{h:.3g}" for h in hours.values()), _gib(cost.peak_bytes)))  # fmt: skip
        entry = {**cost._asdict(), "repeats": phase.repeats, "peak_bytes": cost.peak_bytes, "hours": hours}
        record["phases"].append(entry)
    peak = max((entry["peak_bytes"] for entry in record["phases"]), default=0)
    lines.append(_row("**total**", *[""] * 5, *(f"**{h:.3g}**" for h in totals.values()), _gib(peak)))
    record["total_hours"] = totals
    note = (
        f"\nHours assume {DEFAULT_UTILISATION:.0%} of the bf16 peak (TPU v4 275, H100 989 TFLOP/s; "
        f"{detected}: {detected_peak / 1e12:.3g} TFLOP/s); memory is XLA's per-device inputs + outputs + "
        "temporaries of one step.\n"
    )
    return "\n".join(lines) + "\n" + note, record

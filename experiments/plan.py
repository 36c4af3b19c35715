"""``--plan``: a preset's cost before it runs. Each experiment's ``plan(config)`` lists its training loops as
:class:`Phase` objects (step function, state and one global batch as abstract shapes, step count); each is
compiled for the real mesh without touching data, and the table gives devices, parameters, XLA's FLOPs per
step, steps, estimated hours on the detected device and on one TPU v4 chip / one H100, and memory per
device. Every run records the same figures in ``plan.json`` before it trains."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from experiments import report
from unlearnx import models, train

__all__ = ["Phase", "costs", "supervised_phase", "table"]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training loop of an experiment: ``repeats`` identical loops (seeds, methods, classes) of
    ``steps`` steps of ``step(state, batch)`` on ``state``/``batch`` shapes."""

    name: str
    step: Callable[[Any, Mapping[str, Any]], Any]
    state: Any
    batch: Mapping[str, Any]
    steps: int
    repeats: int = 1
    batch_axis: int = 0


def supervised_phase(
    name: str,
    model: models.Model,
    optimizer: optax.GradientTransformation,
    input_shape: Sequence[int],
    batch_size: int,
    steps: int,
    *,
    repeats: int = 1,
    loss: Callable = train.example_losses,
    input_dtype: Any = jnp.float32,
    target_shape: Sequence[int] = (),
) -> Phase:
    """The :class:`Phase` of a :func:`unlearnx.train.fit` run, with its state built by ``jax.eval_shape``."""

    def create():
        return train.TrainState.create(model.init(jax.random.key(0)), optimizer, jax.random.key(1))

    batch = {"x": jax.ShapeDtypeStruct((batch_size, *input_shape), input_dtype)}
    if loss is train.example_losses:
        batch["y"] = jax.ShapeDtypeStruct((batch_size, *target_shape), jnp.int32)
    return Phase(
        name,
        train.make_train_step(model, optimizer, loss=loss),
        jax.eval_shape(create),
        batch,
        steps,
        repeats,
    )


def costs(phases: Sequence[Phase]) -> list[tuple[Phase, train.StepCost]]:
    """Each phase compiled for the current mesh."""
    return [
        (
            phase,
            train.step_cost(
                phase.step,
                phase.state,
                phase.batch,
                phase.steps,
                name=phase.name,
                batch_axis=phase.batch_axis,
            ),
        )
        for phase in phases
    ]


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f}"


def table(priced: Sequence[tuple[Phase, train.StepCost]]) -> tuple[str, dict[str, Any]]:
    """The plan as Markdown and as a JSON-able record (per phase and totals)."""
    detected, detected_peak = train.device_peak_flops()
    references = train.REFERENCE_DEVICES
    header = [
        "loop",
        "× runs",
        "devices",
        "params",
        "GFLOP/step",
        "steps",
        f"h on {jax.device_count()} × {detected}",
        *(f"h on 1 {name}" for name in references),
        "GiB/device",
    ]
    rows, record = (
        [],
        {
            "detected_device": detected,
            "devices": jax.device_count(),
            "utilisation": train.DEFAULT_UTILISATION,
            "phases": [],
        },
    )
    totals = {"detected": 0.0, **dict.fromkeys(references, 0.0)}
    for phase, cost in priced:
        hours = {"detected": phase.repeats * cost.hours(detected_peak)}
        hours.update({name: phase.repeats * cost.hours(peak, chips=1) for name, peak in references.items()})
        for key, value in hours.items():
            totals[key] += value
        rows.append(
            [
                phase.name,
                phase.repeats,
                cost.devices,
                f"{cost.params:,}",
                f"{cost.flops_per_step / 1e9:.3g}",
                f"{cost.steps:,}",
                *(f"{hours[k]:.3g}" for k in totals),
                _gib(cost.peak_bytes),
            ]
        )
        record["phases"].append(
            {**cost._asdict(), "repeats": phase.repeats, "peak_bytes": cost.peak_bytes, "hours": hours}
        )
    rows.append(
        [
            "**total**",
            "",
            "",
            "",
            "",
            "",
            *(f"**{totals[k]:.3g}**" for k in totals),
            _gib(max((c.peak_bytes for _, c in priced), default=0)),
        ]
    )
    record["total_hours"] = totals
    note = (
        f"\nHours assume {train.DEFAULT_UTILISATION:.0%} of the bf16 peak (TPU v4 275, H100 989 TFLOP/s; "
        f"{detected}: {detected_peak / 1e12:.3g} TFLOP/s); memory is XLA's per-device inputs + outputs + "
        "temporaries of one step.\n"
    )
    return report.markdown_table(header, rows) + note, record

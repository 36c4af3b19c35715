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

from experiments import report, runner
from unlearnx import data, models, train

__all__ = ["PLANS", "Phase", "costs", "supervised_phase", "table"]


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


# --------------------------------------------------------------------------- the experiments' loops


def _classifier(config: Any, model_name: str, info: data.DatasetInfo, width: int) -> models.Model:
    channels = tuple(getattr(config, "channels", ()))
    return runner.build_model(model_name, info.input_shape, info.num_classes, width, channels)


def _ssd_forget(config: Any) -> list[Phase]:
    """The six trained phases; the unlearning sets are sized from the class count (D_f ≈ N / C)."""
    from experiments import ssd_forget

    info = data.describe(config.dataset, "train")
    model = _classifier(config, config.model, info, config.width)
    forget = info.size // info.num_classes
    retain = info.size - forget
    sizes = {
        "original": info.size, "retrain": retain, "finetune": retain, "neggrad+": info.size,
        "amnesiac": info.size, "bad_teacher": int(config.bad_teacher_fraction * retain) + forget,
    }  # fmt: skip
    runs = len(config.seeds) * len(config.forget_classes)
    phases = []
    for phase, (epochs_field, lr_field, optimizer, batch_field) in ssd_forget.PHASES.items():
        batch_size = getattr(config, batch_field)
        per_epoch = max(sizes[phase] // batch_size, 1)
        milestones = config.lr_milestones if optimizer is None else ()
        opt = ssd_forget.make_optimizer(optimizer or config.optimizer, getattr(config, lr_field),
                                    steps_per_epoch=per_epoch, milestones=milestones,
                                    weight_decay=config.weight_decay)  # fmt: skip
        repeats = len(config.seeds) if phase == "original" else runs
        steps = getattr(config, epochs_field) * per_epoch
        phases.append(
            supervised_phase(phase, model, opt, info.input_shape, batch_size, steps, repeats=repeats)
        )
    return phases


def _granet_sparse(config: Any) -> list[Phase]:
    """One loop per (method, sparsity, seed); dense once per seed."""
    from experiments import granet_sparse

    info = data.describe(config.dataset, config.train_split)
    model = _classifier(config, config.model, info, config.width)
    schedule = granet_sparse.Schedule.of(config, info.size)
    phases = []
    for method in config.methods:
        sparsities = (0.0,) if method == "dense" else config.sparsities
        optimizer = granet_sparse.make_optimizer(config, schedule, method, sparsities[0], 0)
        repeats = len(config.seeds) * len(sparsities)
        phases.append(supervised_phase(method, model, optimizer, info.input_shape, config.batch_size,
                                       schedule.total_steps, repeats=repeats))  # fmt: skip
    return phases


def _powerlaw_rehearsal(config: Any) -> list[Phase]:
    """Every task phase of every (method, seed) sequence: the task's examples plus B replayed ones, Adam
    (the penalties' element-wise terms are left out of the FLOPs)."""
    info = data.describe(config.dataset, config.train_split)
    model = _classifier(config, config.model, info, config.width)
    task = info.size if config.train_examples is None else min(info.size, config.train_examples)
    steps = config.epochs * ((task + config.budget) // config.batch_size) * config.num_tasks
    optimizer = optax.adam(config.lr)
    repeats = len(config.methods) * len(config.seeds)
    return [supervised_phase("task phases", model, optimizer, info.input_shape, config.batch_size, steps,
                             repeats=repeats)]  # fmt: skip


#: ``plan(config)`` per experiment: the loops ``--plan`` prices.
PLANS: dict[str, Callable[[Any], list[Phase]]] = {
    "ssd_forget": _ssd_forget,
    "granet_sparse": _granet_sparse,
    "powerlaw_rehearsal": _powerlaw_rehearsal,
}

"""``--plan``: the training loops of each experiment's config as :class:`unlearnx.train.Phase` objects,
priced by :func:`unlearnx.train.plan` without reading data (``data.describe`` gives the shapes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from experiments import runner
from unlearnx import data, models
from unlearnx.train import Phase, supervised_phase

__all__ = ["PLANS"]


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

"""The phases of one SSD seed, shared by :mod:`experiments.ssd_forget`'s per-class table and class sweep:
the data and model of a seed, a forget class's splits, a trained phase (checkpointed, resumable), the
METRICS of an edited model, the importances and the SSD-family edits.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import zlib
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax

from experiments import report, runner, ssd_importance
from experiments.runner import timed
from experiments.ssd_importance import dampen
from unlearnx import data, eval, models, train, unlearn

if TYPE_CHECKING:
    from experiments.ssd_forget import Config

#: Training phases: (epochs field, learning-rate field, optimizer or None for the config's, batch-size field).
#: The config's optimizer also takes its LR milestones; the unlearning baselines run without them.
PHASES = {
    "original": ("epochs", "lr", None, "batch_size"),
    "retrain": ("epochs", "lr", None, "batch_size"),
    "finetune": ("finetune_epochs", "finetune_lr", "sgd", "batch_size"),
    "neggrad+": ("neggrad_epochs", "neggrad_lr", "sgd", "batch_size"),
    "amnesiac": ("amnesiac_epochs", "amnesiac_lr", "adam", "batch_size"),
    "bad_teacher": ("bad_teacher_epochs", "bad_teacher_lr", "adam", "bad_teacher_batch_size"),
}
#: SSD-family methods: (estimator, α field or None for the ASSD percentile, λ or None for the config's).
SSD_METHODS = {
    "ssd": ("batch_sq", "alpha", None),
    "assd": ("batch_sq", None, 1.0),
    "assd_empirical": ("empirical", None, 1.0),
    "lfssd": ("batch_abs", "lfssd_alpha", None),
}
METRICS = ("retain_test_acc", "forget_test_acc", "forget_train_acc", "entropy_mia", "loss_mia")


@functools.cache
def make_optimizer(name: str, lr: float, *, steps_per_epoch: int = 1, milestones=(), weight_decay=0.0):
    """Adam, or SGD with momentum 0.9 and weight decay; LR × 0.2 at each milestone epoch. Cached so
    phases with the same settings share one compiled step."""
    boundaries = {m * steps_per_epoch: 0.2 for m in milestones}
    schedule = optax.piecewise_constant_schedule(lr, boundaries) if milestones else lr
    if name == "adam":
        return optax.adam(schedule)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=0.9))
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def phase_optimizer(config: Config, phase: str, examples: int) -> tuple[Any, int, int]:
    """``(optimizer, epochs, batch size)`` of the training phase ``phase`` (PHASES) on ``examples`` examples;
    the LR milestones count the epochs of that many steps (``fit`` drops the short last batch, unless the set
    is smaller than one batch)."""
    epochs_field, lr_field, optimizer, batch_field = PHASES[phase]
    batch_size = getattr(config, batch_field)
    optimizer = make_optimizer(
        optimizer or config.optimizer,
        getattr(config, lr_field),
        steps_per_epoch=max(examples // batch_size, 1),
        milestones=config.lr_milestones if optimizer is None else (),
        weight_decay=config.weight_decay,
    )
    return optimizer, getattr(config, epochs_field), batch_size


@dataclasses.dataclass(frozen=True)
class Seed:
    """What every phase of one seed shares: data, model, keys, and where it checkpoints and logs."""

    config: Config
    seed: int
    run_dir: str
    logger: train.MetricLogger
    train_set: data.Dataset
    test_set: data.Dataset
    model: models.Model
    keys: dict[str, jax.Array]
    train: dict[str, np.ndarray]  # train_set's arrays
    # The original model's I_D of the order-free estimator (the empirical Fisher does not depend on how D
    # is ordered or batched, and D is the whole training set for every forget class): computed once.
    full_cache: dict[str, tuple] = dataclasses.field(default_factory=dict)


def setup(config: Config, seed: int, run_dir: str, logger: train.MetricLogger) -> Seed:
    train_set = data.load(config.dataset, "train", data_dir=config.data_dir)
    test_set = data.load(config.dataset, "test", data_dir=config.data_dir)
    model = runner.build_model(
        config.model, tuple(train_set.x.shape[1:]), train_set.num_classes, config.width, config.channels
    )
    names = ("init", "retrain", "teacher", "steps")
    keys = dict(zip(names, jax.random.split(jax.random.key(seed), len(names)), strict=True))
    return Seed(config, seed, run_dir, logger, train_set, test_set, model, keys, train_set.arrays())


@dataclasses.dataclass(frozen=True)
class Split:
    """One forget class: D_f, D_r, the test set and its forget/retain parts, and the D used for I_D."""

    cls: int
    forget: dict
    retain: dict
    test: dict
    forget_test: dict
    retain_test: dict
    importance_data: dict


def split_class(run: Seed, cls: int) -> Split:
    forget, retain = (s.arrays() for s in data.forget_retain_split(run.train_set, cls))
    forget_test, retain_test = (s.arrays() for s in data.forget_retain_split(run.test_set, cls))
    full = ssd_importance.importance_data(run.train, retain, forget, run.config.importance_order)
    return Split(cls, forget, retain, run.test_set.arrays(), forget_test, retain_test, full)


def fit(run: Seed, phase: str, variables, arrays, cls: int | None = None) -> tuple[Any, float, int]:
    """Trains ``phase`` (settings from PHASES) as the loop ``seed<s>/[class<c>/]<phase>``, checkpointed
    under ``checkpoints/`` + that name, so a rerun resumes it or, once finished, skips it.

    Returns ``(variables, seconds, example passes)``; the seconds sum the loop's per-epoch wall times,
    which its checkpoints keep, so a resumed phase still counts the epochs run before the interruption.
    """
    config = run.config
    optimizer, epochs, batch_size = phase_optimizer(config, phase, len(arrays["x"]))
    loop = f"seed{run.seed}/{phase}" if cls is None else f"seed{run.seed}/class{cls}/{phase}"
    variables, history = train.fit(
        run.model,
        variables,
        arrays,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        rng=jax.random.fold_in(run.keys["steps"], zlib.crc32(phase.encode())),
        seed=run.seed,
        checkpoint_dir=os.path.join(run.run_dir, "checkpoints", loop),
        checkpoint_seconds=config.checkpoint_seconds,
        augment=data.crop_and_flip if config.augment else None,
        logger=run.logger,
        desc=loop,
        progress=config.progress,
    )
    return variables, sum(record["seconds"] for record in history), epochs * len(arrays["x"])


def evaluate(run: Seed, variables, split: Split) -> dict[str, float]:
    """The METRICS of one edited model; :func:`report.diverged` when it has diverged (non-finite outputs)."""
    sets = ("retain", "forget", "test", "forget_test", "retain_test")
    logits = {name: train.predict(run.model, variables, getattr(split, name)["x"]) for name in sets}
    if not all(np.isfinite(values).all() for values in logits.values()):
        return report.diverged(METRICS)
    return {
        "retain_test_acc": eval.accuracy(logits["retain_test"], split.retain_test["y"]),
        "forget_test_acc": eval.accuracy(logits["forget_test"], split.forget_test["y"]),
        "forget_train_acc": eval.accuracy(logits["forget"], split.forget["y"]),
        "entropy_mia": eval.entropy_mia(
            eval.entropy(logits["retain"]), eval.entropy(logits["test"]), eval.entropy(logits["forget"])
        ),
        "loss_mia": eval.loss_mia(
            eval.cross_entropy(logits["forget"], split.forget["y"]),
            eval.cross_entropy(logits["forget_test"], split.forget_test["y"]),
            seed=run.seed,
        ),
    }


def compute_importances(run: Seed, variables, split: Split, estimators: tuple[str, ...]) -> dict[str, tuple]:
    """``{estimator: (I_f, I_D, seconds for I_f, seconds for I_D)}`` of ``variables`` (the seed's original
    model) on ``split``; the empirical I_D is computed once per seed (``run.full_cache``) and its seconds
    are those of that one pass."""
    options = {"batch_size": run.config.importance_batch_size, "chunk_size": run.config.empirical_chunk_size}
    sets = (split.forget, split.importance_data)
    out = {}
    for name in estimators:
        cached = run.full_cache.get(name)
        out[name] = ssd_importance.importances(run.model, variables, *sets, name, full=cached, **options)
        if name == "empirical":
            run.full_cache[name] = (out[name][1], out[name][3])
    return out


def ssd_edits(run: Seed, original, split: Split, importances, methods=tuple(SSD_METHODS)) -> dict:
    """``methods`` (SSD_METHODS) applied to ``original`` with the cached ``importances`` (per estimator,
    as :func:`compute_importances` gives them): ``{method: (variables, α, seconds of the dampening)}``."""
    config = run.config
    fraction = len(split.forget["y"]) / len(run.train["y"])
    edits = {}
    for method in methods:
        estimator, alpha_field, lam = SSD_METHODS[method]
        forget_imp, full_imp = importances[estimator][:2]
        alpha = None if alpha_field is None else getattr(config, alpha_field)
        if alpha is None:  # ASSD: the percentile of I_f / I_D over the trainable parameters
            alpha = float(unlearn.assd_alpha(forget_imp, full_imp, fraction))
        lam = config.lam if lam is None else lam
        dampen(original, forget_imp, full_imp, alpha=alpha, lam=lam)  # compile outside the timing
        edited, seconds = timed(dampen, original, forget_imp, full_imp, alpha=alpha, lam=lam)
        edits[method] = (edited, alpha, seconds)
    return edits


def baselines(run: Seed, original, split: Split) -> dict[str, tuple[Any, float, int]]:
    """The trained baselines forgetting ``split.cls``: ``{phase: (variables, seconds, passes)}``; the bad
    teacher's seconds include building its distillation set."""
    config, retain, forget, classes = run.config, split.retain, split.forget, run.train_set.num_classes
    sets = {
        "retrain": retain,
        "finetune": retain,
        "neggrad+": unlearn.ascent_mixture(retain, forget, forget_weight=config.neggrad_forget_weight),
        "amnesiac": unlearn.relabel_mixture(retain, forget, num_classes=classes, seed=run.seed),
    }
    started = time.perf_counter()
    n_retain = len(retain["y"])
    chosen = np.random.default_rng(run.seed).permutation(n_retain)[
        : int(config.bad_teacher_fraction * n_retain)
    ]
    retain_x = retain["x"][np.sort(chosen)]
    incompetent = run.model.init(run.keys["teacher"])
    sets["bad_teacher"] = unlearn.bad_teacher_set(
        retain_x,
        forget["x"],
        train.predict(run.model, original, retain_x),
        train.predict(run.model, incompetent, forget["x"]),
    )
    teacher_seconds = time.perf_counter() - started
    trained = {}
    for phase, arrays in sets.items():
        start = run.model.init(run.keys["retrain"]) if phase == "retrain" else original
        trained[phase] = fit(run, phase, start, arrays, split.cls)
    variables, seconds, passes = trained["bad_teacher"]
    trained["bad_teacher"] = (variables, seconds + teacher_seconds, passes)
    return trained

"""Full-class forgetting with Selective Synaptic Dampening against the standard baselines.

Reproduces the shape of Foster et al. (AAAI 2024), Table 1: a classifier is trained on all classes once per
seed, each class in ``forget_classes`` is forgotten from it in turn, and every method is scored on
retain/forget accuracy, membership inference and cost.

Methods: original, retrain from scratch on D_r (a real re-initialisation), finetune on D_r, NegGrad+,
amnesiac (random wrong labels), bad teacher, SSD (α, λ), SSD with the ASSD percentile α, ASSD on the exact
empirical Fisher, and label-free LFSSD. The α sweep re-dampens with cached importances; the class sweep
forgets every class in turn with the importance-only methods.

Presets: ``smoke`` (seconds, for tests), ``quick`` (digits + MLP, 3 seeds, ~1-2 min on 2 CPU cores),
``fashion`` (Fashion-MNIST + BatchNorm CNN), ``paper`` (CIFAR-100 + ResNet-18 from TFDS forgetting baby,
lamp, mushroom, rocket and sea, the paper's α = 10, λ = 1, importance batch 64 and a 200-epoch oracle with LR
drops at 60/120/160).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import zlib
from typing import Any

import jax
import numpy as np
import optax

from experiments import report, runner, ssd_importance
from experiments.runner import timed
from experiments.ssd_importance import dampen
from unlearnx import data, eval, models, train, unlearn

NAME = "ssd_forget"

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
METHODS = (*PHASES, *SSD_METHODS)
METRICS = ("retain_test_acc", "forget_test_acc", "forget_train_acc", "entropy_mia", "loss_mia")
CLASS_SWEEP_METHODS = ("ssd", "assd", "assd_empirical")


@dataclasses.dataclass(frozen=True)
class Config:
    """One SSD full-class forgetting study. The reference's baseline learning rates (finetune SGD 0.02 × 5
    epochs, amnesiac 1e-4 × 3, bad teacher Adam 1e-4 × 1) assume ~400 steps per epoch on CIFAR; digits has
    ~20, so the quick preset uses 10× the learning rate."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "mlp"
    width: int = 256  # MLP hidden width, CNN dense width, ResNet base width
    channels: tuple[int, ...] = (32, 64)  # CNN stages
    forget_classes: tuple[int, ...] = (3,)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_milestones: tuple[int, ...] = ()
    weight_decay: float = 0.0
    augment: bool = False  # random crop (pad 4) + horizontal flip while training, as the reference on CIFAR
    importance_batch_size: int = 64
    importance_order: str = "reference"
    alpha: float = 10.0
    lam: float = 1.0
    lfssd_alpha: float | None = None  # None: the ASSD percentile of LFSSD's own importance ratios
    finetune_epochs: int = 5
    finetune_lr: float = 0.02
    neggrad_epochs: int = 2
    neggrad_lr: float = 0.01
    neggrad_forget_weight: float = 1.0
    amnesiac_epochs: int = 3
    amnesiac_lr: float = 1e-3
    bad_teacher_epochs: int = 1
    bad_teacher_lr: float = 1e-3
    bad_teacher_fraction: float = 0.3
    bad_teacher_batch_size: int = 256
    empirical_chunk_size: int = 64
    class_sweep: bool = True
    checkpoint_seconds: float = 30.0
    alpha_sweep: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    progress: bool = True


# Presets are data: one line per group of settings.
PRESETS: dict[str, Config] = {
    "smoke": Config(
        seeds=(0,), epochs=3, width=64, finetune_epochs=1, neggrad_epochs=1, amnesiac_epochs=1,
        alpha_sweep=(1.0, 10.0), progress=False),
    "quick": Config(),
    # A CNN step on Fashion-MNIST costs ~25× an MLP step on digits. The class sweep (every class forgotten in
    # turn by the importance-only methods, with the bound table) is on: training took ~15 min on 2 quiet
    # cores; under load 5-18 the sweep took ~2 min per class after a ~17 min first class (the one empirical
    # I_D pass over the 60k examples), and training ~50 min.
    "fashion": Config(
        dataset="fashion_mnist", model="cnn", channels=(16, 32), width=64, forget_classes=(0,), seeds=(0,),
        epochs=5, batch_size=128, class_sweep=True,
        finetune_epochs=2, neggrad_epochs=1, amnesiac_epochs=1, amnesiac_lr=1e-4, bad_teacher_lr=1e-4,
    ),
    "paper": Config(
        dataset="tfds:cifar100", model="resnet18", width=64, seeds=(0, 1, 2), class_sweep=False,
        forget_classes=(2, 40, 51, 69, 71),  # baby, lamp, mushroom, rocket, sea
        epochs=200, batch_size=128, optimizer="sgd", lr=0.1, lr_milestones=(60, 120, 160), weight_decay=5e-4,
        augment=True, importance_batch_size=64,
        finetune_epochs=5, finetune_lr=0.02, neggrad_epochs=1, amnesiac_epochs=3, amnesiac_lr=1e-4,
        bad_teacher_lr=1e-4,
    ),
}  # fmt: skip


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
class _Seed:
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


def _setup(config: Config, seed: int, run_dir: str, logger: train.MetricLogger) -> _Seed:
    train_set = data.load(config.dataset, "train", data_dir=config.data_dir)
    test_set = data.load(config.dataset, "test", data_dir=config.data_dir)
    model = runner.build_model(
        config.model, tuple(train_set.x.shape[1:]), train_set.num_classes, config.width, config.channels
    )
    names = ("init", "retrain", "teacher", "steps")
    keys = dict(zip(names, jax.random.split(jax.random.key(seed), len(names)), strict=True))
    return _Seed(config, seed, run_dir, logger, train_set, test_set, model, keys, train_set.arrays())


@dataclasses.dataclass(frozen=True)
class _Split:
    """One forget class: D_f, D_r, the test set and its forget/retain parts, and the D used for I_D."""

    cls: int
    forget: dict
    retain: dict
    test: dict
    forget_test: dict
    retain_test: dict
    importance_data: dict


def _split(run: _Seed, cls: int) -> _Split:
    forget, retain = (s.arrays() for s in data.forget_retain_split(run.train_set, cls))
    forget_test, retain_test = (s.arrays() for s in data.forget_retain_split(run.test_set, cls))
    full = ssd_importance.importance_data(run.train, retain, forget, run.config.importance_order)
    return _Split(cls, forget, retain, run.test_set.arrays(), forget_test, retain_test, full)


def _fit(run: _Seed, phase: str, variables, arrays, cls: int | None = None) -> tuple[Any, float, int]:
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


def _evaluate(run: _Seed, variables, split: _Split) -> dict[str, float]:
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


def _importances(run: _Seed, variables, split: _Split, estimators: tuple[str, ...]) -> dict[str, tuple]:
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


def _ssd_edits(run: _Seed, original, split: _Split, importances, methods=tuple(SSD_METHODS)) -> dict:
    """``methods`` (SSD_METHODS) applied to ``original`` with the cached ``importances`` (per estimator,
    as :func:`_importances` gives them): ``{method: (variables, α, seconds of the dampening)}``."""
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


def _baselines(run: _Seed, original, split: _Split) -> dict[str, tuple[Any, float, int]]:
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
        trained[phase] = _fit(run, phase, start, arrays, split.cls)
    variables, seconds, passes = trained["bad_teacher"]
    trained["bad_teacher"] = (variables, seconds + teacher_seconds, passes)
    return trained


def _alpha_sweep(run: _Seed, original, split: _Split, forget_imp, full_imp) -> dict[str, list[float]]:
    """Forget/retain test accuracy of SSD at each α of ``config.alpha_sweep`` (+inf: diverged)."""
    sweep = {"forget_test_acc": [], "retain_test_acc": []}
    for alpha in run.config.alpha_sweep:
        swept = dampen(original, forget_imp, full_imp, alpha=alpha, lam=run.config.lam)
        for key, arrays in (("forget_test_acc", split.forget_test), ("retain_test_acc", split.retain_test)):
            accuracy = eval.accuracy(train.predict(run.model, swept, arrays["x"]), arrays["y"])
            sweep[key].append(float("inf") if np.isnan(accuracy) else accuracy)  # NaN: non-finite logits
    return sweep


def forget_class(run: _Seed, original, original_seconds: float, cls: int) -> dict[str, Any]:
    """Every method forgetting class ``cls`` from ``original``: metrics, seconds, passes, α, α sweep."""
    split = _split(run, cls)
    n_train, n_forget = len(run.train["y"]), len(split.forget["y"])
    results = {"original": (original, original_seconds, run.config.epochs * n_train)}
    results.update(_baselines(run, original, split))
    importances = _importances(run, original, split, ("batch_sq", "empirical", "batch_abs"))
    edits = _ssd_edits(run, original, split, importances)
    seconds = {}
    for method, (edited, _, dampen_seconds) in edits.items():
        forget_seconds, full_seconds = importances[SSD_METHODS[method][0]][2:]
        results[method] = (edited, forget_seconds + full_seconds + dampen_seconds, n_train + n_forget)
        seconds[f"{method} (I_D cached)"] = forget_seconds + dampen_seconds
    return {
        "metrics": {method: _evaluate(run, results[method][0], split) for method in METHODS},
        "seconds": {method: result[1] for method, result in results.items()} | seconds,
        "passes": {method: result[2] for method, result in results.items()} | {"ssd (I_D cached)": n_forget},
        "alpha": {method: edit[1] for method, edit in edits.items()},
        "alpha_sweep": _alpha_sweep(run, original, split, *importances["batch_sq"][:2]),
        "sizes": {"train": n_train, "retain": len(split.retain["y"]), "forget": n_forget},
    }


def class_sweep(run: _Seed, original) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Every class forgotten in turn from the same original model by the importance-only methods:
    ``({method: {"forget_test_acc": [...], "retain_test_acc": [...]}}, bounds)`` indexed by class, where
    ``bounds`` holds per class |D|/|D_f| (``ratio_bound``), :func:`max_ratio` per estimator, and per method
    its α and the fraction of trainable parameters it selects (I_f > α·I_D)."""
    test = run.test_set.arrays()
    out = {method: {"forget_test_acc": [], "retain_test_acc": []} for method in CLASS_SWEEP_METHODS}
    bounds: dict[str, Any] = {
        "ratio_bound": [],
        "max_ratio": {"batch_sq": [], "empirical": []},
        "alpha": {method: [] for method in CLASS_SWEEP_METHODS},
        "selected_fraction": {method: [] for method in CLASS_SWEEP_METHODS},
    }
    for cls in range(run.train_set.num_classes):
        split = _split(run, cls)
        importances = _importances(run, original, split, ("batch_sq", "empirical"))
        edits = _ssd_edits(run, original, split, importances, CLASS_SWEEP_METHODS)
        bounds["ratio_bound"].append(len(run.train["y"]) / len(split.forget["y"]))
        for estimator, values in bounds["max_ratio"].items():
            values.append(ssd_importance.max_ratio(*importances[estimator][:2]))
        for method, (_, alpha, _) in edits.items():
            forget_imp, full_imp = importances[SSD_METHODS[method][0]][:2]
            bounds["alpha"][method].append(alpha)
            fraction = ssd_importance.selected_fraction(forget_imp, full_imp, alpha)
            bounds["selected_fraction"][method].append(fraction)
        for method, (edited, _, _) in edits.items():
            logits = train.predict(run.model, edited, test["x"])
            correct = np.argmax(logits, 1) == test["y"]
            in_class, ok = test["y"] == cls, report.finite(logits)
            out[method]["forget_test_acc"].append(float(correct[in_class].mean()) if ok else float("inf"))
            out[method]["retain_test_acc"].append(float(correct[~in_class].mean()) if ok else float("inf"))
    return out, bounds


def run_seed(config: Config, seed: int, run_dir: str, logger: train.MetricLogger) -> dict[str, Any]:
    """Trains the original model once (the loop ``seed<s>/original``), then forgets each of
    ``config.forget_classes`` from it; a diverged original (non-finite parameters) ends the run."""
    run = _setup(config, seed, run_dir, logger)
    original, original_seconds, _ = _fit(run, "original", run.model.init(run.keys["init"]), run.train)
    if not report.finite(original):
        raise FloatingPointError(f"seed {seed}: the original model diverged (non-finite parameters)")
    classes = {str(cls): forget_class(run, original, original_seconds, cls) for cls in config.forget_classes}
    started = time.perf_counter()
    sweep, bounds = class_sweep(run, original) if config.class_sweep else (None, None)
    sweep_seconds = time.perf_counter() - started if config.class_sweep else None
    return {"classes": classes, "class_sweep": sweep, "class_bounds": bounds, "sweep_seconds": sweep_seconds}


def main(config: Config, run_dir: str) -> dict[str, Any]:
    """Runs every seed, then writes ``metrics.json``, ``timing.json``, ``report.md`` and the plots.

    ``metrics.json`` holds only quantities that the seed determines, so a run resumed from its
    checkpoints (every training phase is one :func:`unlearnx.train.loop`; the rest is recomputed from
    the trained models) reproduces it byte for byte; wall-clock times go to ``timing.json``.
    """
    from experiments import ssd_report  # imported here: the report imports this module's method lists

    if not config.forget_classes:
        raise ValueError("forget_classes is empty")
    logger = train.MetricLogger(os.path.join(run_dir, "train_log.jsonl"))
    try:
        per_seed = {str(seed): run_seed(config, seed, run_dir, logger) for seed in config.seeds}
    finally:
        logger.close()
    metrics, timing = ssd_report.summarise(config, per_seed)
    runner.write_outputs(run_dir, metrics, timing, ssd_report.report(config, metrics, timing))
    ssd_report.plot(config, metrics, run_dir)
    return metrics

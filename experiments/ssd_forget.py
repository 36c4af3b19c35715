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
import os
import time
from typing import Any

import numpy as np

from experiments import report, runner, ssd_importance
from experiments.ssd_importance import dampen
from experiments.ssd_phases import (
    PHASES,
    SSD_METHODS,
    Seed,
    Split,
    baselines,
    compute_importances,
    evaluate,
    fit,
    setup,
    split_class,
    ssd_edits,
)
from unlearnx import eval, train

NAME = "ssd_forget"

METHODS = (*PHASES, *SSD_METHODS)
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


def _alpha_sweep(run: Seed, original, split: Split, forget_imp, full_imp) -> dict[str, list[float]]:
    """Forget/retain test accuracy of SSD at each α of ``config.alpha_sweep`` (+inf: diverged)."""
    sweep = {"forget_test_acc": [], "retain_test_acc": []}
    for alpha in run.config.alpha_sweep:
        swept = dampen(original, forget_imp, full_imp, alpha=alpha, lam=run.config.lam)
        for key, arrays in (("forget_test_acc", split.forget_test), ("retain_test_acc", split.retain_test)):
            accuracy = eval.accuracy(train.predict(run.model, swept, arrays["x"]), arrays["y"])
            sweep[key].append(float("inf") if np.isnan(accuracy) else accuracy)  # NaN: non-finite logits
    return sweep


def forget_class(run: Seed, original, original_seconds: float, cls: int) -> dict[str, Any]:
    """Every method forgetting class ``cls`` from ``original``: metrics, seconds, passes, α, α sweep."""
    split = split_class(run, cls)
    n_train, n_forget = len(run.train["y"]), len(split.forget["y"])
    results = {"original": (original, original_seconds, run.config.epochs * n_train)}
    results.update(baselines(run, original, split))
    importances = compute_importances(run, original, split, ("batch_sq", "empirical", "batch_abs"))
    edits = ssd_edits(run, original, split, importances)
    seconds = {}
    for method, (edited, _, dampen_seconds) in edits.items():
        forget_seconds, full_seconds = importances[SSD_METHODS[method][0]][2:]
        results[method] = (edited, forget_seconds + full_seconds + dampen_seconds, n_train + n_forget)
        seconds[f"{method} (I_D cached)"] = forget_seconds + dampen_seconds
    return {
        "metrics": {method: evaluate(run, results[method][0], split) for method in METHODS},
        "seconds": {method: result[1] for method, result in results.items()} | seconds,
        "passes": {method: result[2] for method, result in results.items()} | {"ssd (I_D cached)": n_forget},
        "alpha": {method: edit[1] for method, edit in edits.items()},
        "alpha_sweep": _alpha_sweep(run, original, split, *importances["batch_sq"][:2]),
        "sizes": {"train": n_train, "retain": len(split.retain["y"]), "forget": n_forget},
    }


def class_sweep(run: Seed, original) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
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
        split = split_class(run, cls)
        importances = compute_importances(run, original, split, ("batch_sq", "empirical"))
        edits = ssd_edits(run, original, split, importances, CLASS_SWEEP_METHODS)
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
    run = setup(config, seed, run_dir, logger)
    original, original_seconds, _ = fit(run, "original", run.model.init(run.keys["init"]), run.train)
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

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

from experiments import runner, ssd_report
from unlearnx import data, eval, fisher, models, parallel, train, unlearn
from unlearnx.checkpoint import Checkpointer

NAME = "ssd_forget"


@dataclasses.dataclass(frozen=True)
class Config:
    """One SSD full-class forgetting study.

    Learning rates of the short baselines are scaled for small data sets in the CPU presets: the
    reference's values (finetune SGD 0.02 × 5 epochs, amnesiac 1e-4 × 3, bad teacher Adam 1e-4 × 1) assume
    ~400 steps per epoch on CIFAR, while digits has ~20, so the quick preset uses 10× the learning rate.
    """

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


PRESETS: dict[str, Config] = {
    "smoke": Config(
        seeds=(0,),
        epochs=3,
        width=64,
        finetune_epochs=1,
        neggrad_epochs=1,
        amnesiac_epochs=1,
        alpha_sweep=(1.0, 10.0),
        progress=False,
    ),
    "quick": Config(),
    # ~15 min on 2 CPU cores (a CNN step on Fashion-MNIST costs ~25× an MLP step on digits).
    "fashion": Config(
        class_sweep=False,
        dataset="fashion_mnist",
        model="cnn",
        channels=(16, 32),
        width=64,
        forget_classes=(0,),
        epochs=5,
        batch_size=128,
        finetune_epochs=2,
        neggrad_epochs=1,
        amnesiac_epochs=1,
        amnesiac_lr=1e-4,
        bad_teacher_lr=1e-4,
        seeds=(0,),
    ),
    "paper": Config(
        class_sweep=False,
        dataset="tfds:cifar100",
        model="resnet18",
        width=64,
        forget_classes=(2, 40, 51, 69, 71),  # baby, lamp, mushroom, rocket, sea
        seeds=(0, 1, 2),
        epochs=200,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        lr_milestones=(60, 120, 160),
        weight_decay=5e-4,
        augment=True,
        importance_batch_size=64,
        finetune_epochs=5,
        finetune_lr=0.02,
        neggrad_epochs=1,
        amnesiac_epochs=3,
        amnesiac_lr=1e-4,
        bad_teacher_lr=1e-4,
    ),
}

METHODS = ssd_report.METHODS


@functools.cache
def _optimizer(name: str, lr: float, *, steps_per_epoch: int = 1, milestones=(), weight_decay=0.0):
    """Adam, or SGD with momentum 0.9 and weight decay; LR × 0.2 at each milestone epoch. Cached so
    phases with the same settings share one compiled step."""
    schedule = (
        optax.piecewise_constant_schedule(lr, {m * steps_per_epoch: 0.2 for m in milestones})
        if milestones
        else lr
    )
    if name == "adam":
        return optax.adam(schedule)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=0.9))
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


@dataclasses.dataclass(frozen=True)
class _Split:
    """One forget class: D_f, D_r, their test counterparts, and the D used for I_D."""

    cls: int
    forget: dict
    retain: dict
    forget_test: dict
    retain_test: dict
    importance_data: dict


class _Study:
    """The data, model, training and evaluation shared by every method and class of one seed."""

    def __init__(self, config: Config, seed: int, run_dir: str):
        self.config, self.seed = config, seed
        self.checkpoints = os.path.join(run_dir, "checkpoints", f"seed{seed}")
        self.logger = train.MetricLogger(os.path.join(run_dir, "train_log.jsonl"))
        train_set = data.load(config.dataset, "train", data_dir=config.data_dir)
        self.test_set = data.load(config.dataset, "test", data_dir=config.data_dir)
        self.train_set, self.train, self.test = train_set, train_set.arrays(), self.test_set.arrays()
        self.num_classes = train_set.num_classes
        self.model = runner.build_model(
            config.model, tuple(train_set.x.shape[1:]), self.num_classes, config.width, config.channels
        )
        names = ("init", "retrain", "teacher", "steps")
        self.keys = dict(zip(names, jax.random.split(jax.random.key(seed), len(names)), strict=True))
        self.resumed: list[str] = []

    def split(self, cls: int) -> _Split:
        forget, retain = (s.arrays() for s in data.forget_retain_split(self.train_set, cls))
        forget_test, retain_test = (s.arrays() for s in data.forget_retain_split(self.test_set, cls))
        full = _importance_data(self.train, retain, forget, self.config.importance_order)
        return _Split(cls, forget, retain, forget_test, retain_test, full)

    def fit(
        self,
        variables,
        arrays,
        *,
        phase,
        epochs,
        lr,
        optimizer="adam",
        batch_size=None,
        checkpoint=None,
        interrupt=None,
    ):
        """``train.fit`` with this study's settings; ``checkpoint`` names a checkpoint folder (resumable)."""
        batch_size = batch_size or self.config.batch_size
        # fit drops the short last batch (unless the set is smaller than one batch).
        steps = max(len(arrays["x"]) // batch_size, 1)
        milestones = self.config.lr_milestones if phase in ("original", "retrain") else ()
        opt = _optimizer(
            optimizer, lr, steps_per_epoch=steps, milestones=milestones, weight_decay=self.config.weight_decay
        )
        hook = None
        if interrupt is not None and interrupt[0] == phase:

            def hook(epoch, state, saved, stop_at=interrupt[1]):
                if saved and epoch >= stop_at:
                    raise KeyboardInterrupt(f"simulated interruption of {phase!r} after epoch {epoch}")

        checkpoint_dir = None if checkpoint is None else os.path.join(self.checkpoints, checkpoint)
        if checkpoint_dir is not None and Checkpointer(checkpoint_dir).latest_step() is not None:
            self.resumed.append(checkpoint)  # its wall time will cover only the epochs run after resuming
        return train.fit(
            self.model,
            variables,
            arrays,
            optimizer=opt,
            epochs=epochs,
            batch_size=batch_size,
            rng=jax.random.fold_in(self.keys["steps"], zlib.crc32(phase.encode())),
            seed=self.seed,
            checkpoint_dir=checkpoint_dir,
            checkpoint_seconds=self.config.checkpoint_seconds,
            on_epoch_end=hook,
            augment=data.crop_and_flip if self.config.augment else None,
            logger=self.logger,
            desc=f"seed {self.seed} {checkpoint or phase}",
            progress=self.config.progress,
        )

    def evaluate(self, variables, split: _Split) -> dict[str, float]:
        """The METRICS of one edited model; all NaN when it has diverged (non-finite outputs)."""
        logits = {
            name: train.predict(self.model, variables, arrays["x"])
            for name, arrays in (
                ("retain", split.retain),
                ("forget", split.forget),
                ("test", self.test),
                ("forget_test", split.forget_test),
                ("retain_test", split.retain_test),
            )
        }
        if not all(np.isfinite(values).all() for values in logits.values()):
            return dict.fromkeys(ssd_report.METRICS, float("nan"))
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
                seed=self.seed,
            ),
        }

    def importances(self, variables, split: _Split, *, estimator: str, label_free: bool = False):
        """(I_f, I_D, seconds for I_f, seconds for I_D) over all ``variables``: eval mode, unshuffled,
        data-parallel over all devices.

        Importances cover the batch statistics too (SSD's default selector never touches them), so the
        loss depends on the model alone and compiles once per model and estimator, not once per seed.
        A warm-up pass over D_f (untimed) compiles before the timed passes.
        """
        loss_fn = _importance_loss(self.model, label_free)
        chunk = self.config.empirical_chunk_size if estimator == "empirical" else None
        mesh = parallel.data_mesh()

        def run(arrays):
            batches = (
                parallel.shard_batch(parallel.process_share(batch), mesh)
                for batch in data.batches(arrays, self.config.importance_batch_size)
            )
            return _timed(fisher.diagonal, loss_fn, variables, batches, estimator=estimator, chunk_size=chunk)

        run(split.forget)
        (forget_importance, forget_seconds), (full_importance, full_seconds) = map(
            run, (split.forget, split.importance_data)
        )
        return forget_importance, full_importance, forget_seconds, full_seconds


def _importance_data(train_set, retain, forget, order: str) -> dict[str, np.ndarray]:
    """D for I_D. ``"reference"``: the SSD reference's unshuffled ConcatDataset(retain, forget), with the
    retain set grouped class by class, so batches are nearly single-class; ``"dataset"``: the data set's
    own order. The order matters for ``batch_sq``/``batch_abs``: mixed-class batch gradients cancel,
    which shrinks I_D and makes more parameters pass the α test."""
    if order == "dataset":
        return train_set
    if order != "reference":
        raise ValueError(f"importance_order must be 'reference' or 'dataset', got {order!r}")
    by_class = np.argsort(retain["y"], kind="stable")
    return {key: np.concatenate([retain[key][by_class], forget[key]]) for key in ("x", "y")}


@functools.cache
def _importance_loss(model: models.Model, label_free: bool):
    """Per-example loss over full variables: cross-entropy, or LFSSD's ‖f(x)‖² when ``label_free``."""

    def logits_fn(variables, batch):
        return model.apply(variables, batch["x"])

    if label_free:
        return fisher.output_norm_loss(logits_fn)
    return lambda variables, batch: train.example_losses(logits_fn(variables, batch), batch)


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = jax.block_until_ready(fn(*args, **kwargs))
    return result, time.perf_counter() - started


@jax.jit
def dampen(variables, forget_importance, full_importance, alpha, lam):
    """SSD on model variables (batch statistics untouched) with traced α and λ: one compilation serves
    every method, class, seed and sweep point."""
    return unlearn.ssd(variables, forget_importance, full_importance, alpha=alpha, lam=lam)


#: SSD-family methods: (estimator, α or None for the ASSD percentile, λ or None for the config's λ).
SSD_METHODS = {
    "ssd": ("batch_sq", "alpha", None),
    "assd": ("batch_sq", None, 1.0),
    "assd_empirical": ("empirical", None, 1.0),
    "lfssd": ("batch_abs", "lfssd_alpha", None),
}


def forget_class(
    study: _Study, original, original_seconds: float, cls: int, interrupt=None
) -> dict[str, Any]:
    """Every method forgetting class ``cls`` from ``original``: metrics, seconds, passes, α, α sweep."""
    config, split = study.config, study.split(cls)
    n_train, n_retain, n_forget = len(study.train["y"]), len(split.retain["y"]), len(split.forget["y"])
    variables = {"original": original}
    seconds = {"original": original_seconds}
    passes = {"original": config.epochs * n_train}

    def train_phase(phase, start, arrays, epochs, lr, optimizer="adam", batch_size=None, checkpoint=None):
        variables[phase], seconds[phase] = _timed(
            study.fit,
            start,
            arrays,
            phase=phase,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            batch_size=batch_size,
            checkpoint=checkpoint,
            interrupt=interrupt,
        )
        passes[phase] = epochs * len(arrays["x"])

    train_phase(
        "retrain",
        study.model.init(study.keys["retrain"]),
        split.retain,
        config.epochs,
        config.lr,
        config.optimizer,
        checkpoint=f"class{cls}/retrain",
    )
    train_phase("finetune", original, split.retain, config.finetune_epochs, config.finetune_lr, "sgd")
    mixture = unlearn.ascent_mixture(split.retain, split.forget, forget_weight=config.neggrad_forget_weight)
    train_phase("neggrad+", original, mixture, config.neggrad_epochs, config.neggrad_lr, "sgd")
    relabelled = unlearn.relabel_mixture(
        split.retain, split.forget, num_classes=study.num_classes, seed=study.seed
    )
    train_phase("amnesiac", original, relabelled, config.amnesiac_epochs, config.amnesiac_lr)

    started = time.perf_counter()
    chosen = np.random.default_rng(study.seed).permutation(n_retain)[
        : int(config.bad_teacher_fraction * n_retain)
    ]
    retain_x = split.retain["x"][np.sort(chosen)]
    incompetent = study.model.init(study.keys["teacher"])
    teacher_set = unlearn.bad_teacher_set(
        retain_x,
        split.forget["x"],
        train.predict(study.model, original, retain_x),
        train.predict(study.model, incompetent, split.forget["x"]),
    )
    teacher_seconds = time.perf_counter() - started
    train_phase(
        "bad_teacher",
        original,
        teacher_set,
        config.bad_teacher_epochs,
        config.bad_teacher_lr,
        batch_size=config.bad_teacher_batch_size,
    )
    seconds["bad_teacher"] += teacher_seconds

    importances = {
        estimator: study.importances(
            original, split, estimator=estimator, label_free=estimator == "batch_abs"
        )
        for estimator in ("batch_sq", "empirical", "batch_abs")
    }
    chosen_alpha = {}
    for method, (estimator, alpha_field, lam) in SSD_METHODS.items():
        forget_imp, full_imp, forget_s, full_s = importances[estimator]
        alpha = None if alpha_field is None else getattr(config, alpha_field)
        lam = config.lam if lam is None else lam
        if alpha is None:  # ASSD: the percentile of I_f / I_D over the trainable parameters
            alpha = float(unlearn.assd_alpha(forget_imp, full_imp, n_forget / n_train))
        chosen_alpha[method] = alpha
        dampen(original, forget_imp, full_imp, alpha, lam)  # compile outside the timing
        variables[method], dampen_s = _timed(dampen, original, forget_imp, full_imp, alpha, lam)
        seconds[method] = forget_s + full_s + dampen_s
        seconds[f"{method} (I_D cached)"] = forget_s + dampen_s
        passes[method] = n_train + n_forget
    passes["ssd (I_D cached)"] = n_forget

    forget_imp, full_imp = importances["batch_sq"][:2]
    sweep = {"forget_test_acc": [], "retain_test_acc": []}
    for alpha in config.alpha_sweep:
        swept = dampen(original, forget_imp, full_imp, alpha, config.lam)
        for key, arrays in (("forget_test_acc", split.forget_test), ("retain_test_acc", split.retain_test)):
            sweep[key].append(eval.accuracy(train.predict(study.model, swept, arrays["x"]), arrays["y"]))
    return {
        "metrics": {method: study.evaluate(variables[method], split) for method in METHODS},
        "seconds": seconds,
        "passes": passes,
        "alpha": chosen_alpha,
        "alpha_sweep": sweep,
        "sizes": {"train": n_train, "retain": n_retain, "forget": n_forget},
    }


CLASS_SWEEP_METHODS = ("ssd", "assd", "assd_empirical")


def class_sweep(study: _Study, original) -> dict[str, dict[str, list[float]]]:
    """Every class forgotten in turn from the same original model by the importance-only methods:
    ``{method: {"forget_test_acc": [...], "retain_test_acc": [...]}}`` indexed by class."""
    config = study.config
    out = {m: {"forget_test_acc": [], "retain_test_acc": []} for m in CLASS_SWEEP_METHODS}
    for cls in range(study.num_classes):
        split = study.split(cls)
        fraction = len(split.forget["y"]) / len(study.train["y"])
        importances = {
            estimator: study.importances(original, split, estimator=estimator)[:2]
            for estimator in ("batch_sq", "empirical")
        }
        for method in CLASS_SWEEP_METHODS:
            forget_imp, full_imp = importances[SSD_METHODS[method][0]]
            alpha, lam = config.alpha, config.lam
            if method != "ssd":
                alpha, lam = unlearn.assd_alpha(forget_imp, full_imp, fraction), 1.0
            edited = dampen(original, forget_imp, full_imp, alpha, lam)
            correct = np.argmax(train.predict(study.model, edited, study.test["x"]), 1) == study.test["y"]
            in_class = study.test["y"] == cls
            out[method]["forget_test_acc"].append(float(correct[in_class].mean()))
            out[method]["retain_test_acc"].append(float(correct[~in_class].mean()))
    return out


def run_seed(config: Config, seed: int, run_dir: str, interrupt=None) -> dict[str, Any]:
    """Trains the original model once, then forgets each of ``config.forget_classes`` from it."""
    study = _Study(config, seed, run_dir)
    original, original_seconds = _timed(
        study.fit,
        study.model.init(study.keys["init"]),
        study.train,
        phase="original",
        epochs=config.epochs,
        lr=config.lr,
        optimizer=config.optimizer,
        checkpoint="original",
        interrupt=interrupt,
    )
    classes = {
        str(cls): forget_class(study, original, original_seconds, cls, interrupt)
        for cls in config.forget_classes
    }
    return {
        "classes": classes,
        "class_sweep": class_sweep(study, original) if config.class_sweep else None,
        "resumed": study.resumed,
    }


def main(config: Config, run_dir: str, *, interrupt: tuple[str, int] | None = None) -> dict[str, Any]:
    """Runs every seed, then writes ``metrics.json``, ``timing.json``, ``report.md`` and the plots.

    ``metrics.json`` holds only quantities that the seed determines (so a resumed run reproduces it);
    wall-clock times go to ``timing.json``. ``interrupt=(phase, epoch)`` simulates a crash after that
    phase's checkpoint, for testing ``--resume``.
    """
    if not config.forget_classes:
        raise ValueError("forget_classes is empty")
    per_seed = {str(seed): run_seed(config, seed, run_dir, interrupt) for seed in config.seeds}
    metrics, timing = ssd_report.summarise(config, per_seed)
    runner.write_outputs(run_dir, metrics, timing, ssd_report.report(config, metrics, timing))
    ssd_report.plot(config, metrics, run_dir)
    return metrics

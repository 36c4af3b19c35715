"""Sparse training with GraNet against its baselines: accuracy, final sparsity and training FLOPs.

Reproduces the shape of Liu et al. (NeurIPS 2021), Table 2: every method trains the same initialisation
(per seed) to each target sparsity, with the spec's optimizer — SGD, momentum 0.9, Nesterov, weight decay —
wrapped by the sparse transform, and the learning rate × 0.1 at 50% and 75% of training (the paper's epochs
80 and 120 of 160).

Methods: dense; static sparse (a fixed ERK mask); SET and RigL (ERK masks, drop and regrow every ΔT steps
until 75% of training); GMP (global cubic magnitude pruning from dense, t₀ = 0, t_f = 50% of training);
GraNet dense-to-sparse (s_i = 0) and sparse-to-sparse (s_i = 0.5) with the same pruning window and
regeneration every ΔT steps to the end. The kernels (every tensor of rank ≥ 2, first layer and classifier
included) are sparsified, as GraNet does on CIFAR; biases and BatchNorm stay dense.

Presets (``PRESETS``): ``smoke`` (tests); ``quick`` (digits + MLP 256-256, sparsities 0.8–0.98, seeds 0, 1,
30 epochs of 22 steps, ΔT = 13: 25 pruning events and 50 GraNet updates, the last 10 steps before the end
so regrown weights train; the paper's CIFAR schedule has 28 and 56 at ΔT = 1000); ``fashion`` (BN-CNN);
``paper`` / ``paper_cifar100`` (ResNet-50) and ``paper_vgg19`` / ``paper_vgg19_cifar100`` (VGG-19-BN): CIFAR
from TFDS on 45k training images, 160 epochs of batch 128, LR 0.1, weight decay 5e-4, crop + flip,
ΔT = 1000, pruning until epoch 80, sparsities 0.9/0.95/0.98, 3 seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import numpy as np
import optax

from experiments import granet_report, report, runner
from unlearnx import data, eval, sparse, train, tree

NAME = "granet_sparse"
DESCRIPTIONS = {
    "dense": "dense",
    "static": "static sparse (fixed ERK mask)",
    "set": "SET (ERK, random regrowth)",
    "rigl": "RigL (ERK, gradient regrowth)",
    "gmp": "GMP (global cubic pruning from dense, no regrowth)",
    "granet_d2s": "GraNet dense-to-sparse (s_i = 0)",
    "granet_s2s": "GraNet sparse-to-sparse (s_i = 0.5)",
}
METHODS = tuple(DESCRIPTIONS)


@dataclasses.dataclass(frozen=True)
class Config:
    """One sparse-training comparison. Step counts are optimizer steps; ``prune_end``, ``dst_end`` and
    ``lr_drops`` are fractions of training (total_steps = epochs × ⌊n / batch_size⌋, as ``train.fit`` drops
    the short last batch)."""

    dataset: str = "digits"
    data_dir: str | None = None
    train_split: str = "train"
    model: str = "mlp"
    width: int = 256  # MLP hidden width, CNN dense width, ResNet base width
    channels: tuple[int, ...] = (16, 32)  # CNN stages
    methods: tuple[str, ...] = METHODS
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98)
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    lr_drops: tuple[float, ...] = (0.5, 0.75)  # × 0.1 at each
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False  # random crop (pad 4) + horizontal flip, as the reference on CIFAR
    frequency: int = 13  # ΔT: steps between mask updates, for every dynamic method
    prune_end: float = 0.5  # GraNet / GMP t_f
    dst_end: float = 0.75  # RigL / SET T_end
    granet_initial_sparsity: float = 0.5  # s_i of sparse-to-sparse GraNet
    drop_fraction: float = 0.5  # GraNet's death rate p₀ (cosine to 0.005 over training)
    dst_drop_fraction: float = 0.3  # RigL / SET α (cosine to 0 at T_end)
    distribution: str = "erk"
    plot_sparsity: float = 0.9  # the sparsity whose schedules the sparsity-over-training plot shows
    # Least wall time between end-of-epoch checkpoints (0: every epoch). None: a run checkpoints only at its
    # end and on a stop request (SIGTERM); a run killed outright then restarts. Finished runs are kept anyway.
    checkpoint_seconds: float | None = None
    progress: bool = True


PRESETS: dict[str, Config] = {
    "smoke": Config(sparsities=(0.9, 0.98), seeds=(0,), epochs=3, width=32, frequency=8, progress=False),
    "quick": Config(),
    "fashion": Config(
        dataset="fashion_mnist", model="cnn", channels=(16, 32), width=64, sparsities=(0.9, 0.98), seeds=(0,),
        epochs=5, batch_size=128, frequency=40, checkpoint_seconds=60.0,
    ),
    "paper": Config(
        dataset="tfds:cifar10", train_split="train[:90%]", model="resnet50", width=64,
        sparsities=(0.9, 0.95, 0.98), seeds=(0, 1, 2), epochs=160, batch_size=128, augment=True,
        frequency=1000, checkpoint_seconds=300.0,
    ),
}  # fmt: skip
PRESETS["paper_cifar100"] = dataclasses.replace(PRESETS["paper"], dataset="tfds:cifar100")
PRESETS["paper_vgg19"] = dataclasses.replace(PRESETS["paper"], model="vgg19")
PRESETS["paper_vgg19_cifar100"] = dataclasses.replace(PRESETS["paper_cifar100"], model="vgg19")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's step counts, shared by every method."""

    steps_per_epoch: int
    total_steps: int
    prune_end_step: int
    dst_end_step: int
    lr_boundaries: tuple[int, ...]

    @classmethod
    def of(cls, config: Config, n_train: int) -> Schedule:
        steps_per_epoch = max(n_train // config.batch_size, 1)
        total = config.epochs * steps_per_epoch
        return cls(
            steps_per_epoch,
            total,
            round(config.prune_end * total),
            round(config.dst_end * total),
            tuple(round(f * total) for f in config.lr_drops),
        )


@functools.cache
def _inner(config: Config, schedule: Schedule) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov) with weight decay on every parameter; cached so dense compiles once."""
    learning_rate = optax.piecewise_constant_schedule(config.lr, dict.fromkeys(schedule.lr_boundaries, 0.1))
    return optax.named_chain(
        ("weight_decay", optax.add_decayed_weights(config.weight_decay)),
        ("sgd", optax.sgd(learning_rate, momentum=config.momentum, nesterov=True)),
    )


def make_optimizer(config: Config, schedule: Schedule, method: str, sparsity: float, seed: int):
    """The inner optimizer wrapped by ``method``'s sparse transform (``dense``: unwrapped)."""
    inner = _inner(config, schedule)
    common = {"distribution": config.distribution, "seed": seed}
    pruning = {"begin_step": 0, "end_step": schedule.prune_end_step, "frequency": config.frequency}
    dynamic = {"end_step": schedule.dst_end_step, "frequency": config.frequency}
    if method == "dense":
        return inner
    if method == "static":
        return sparse.static_sparse(inner, sparsity=sparsity, **common)
    if method in ("set", "rigl"):
        build = sparse.set_sparse if method == "set" else sparse.rigl
        return build(inner, sparsity=sparsity, drop_fraction=config.dst_drop_fraction, **dynamic, **common)
    if method == "gmp":
        return sparse.gmp(inner, final_sparsity=sparsity, initial_sparsity=0.0, **pruning, **common)
    if method in ("granet_d2s", "granet_s2s"):
        return sparse.granet(
            inner,
            final_sparsity=sparsity,
            initial_sparsity=0.0 if method == "granet_d2s" else config.granet_initial_sparsity,
            total_steps=schedule.total_steps,
            drop_fraction=config.drop_fraction,
            **pruning,
            **common,
        )
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def selected_paths(params) -> dict[str, int]:
    """Path -> size of the tensors the transforms sparsify by default (rank ≥ 2: kernels)."""
    sizes = {path: int(np.size(leaf)) for path, leaf in tree.leaves_with_paths(params)}
    return {path: sizes[path] for path, _ in tree.leaves_with_paths(sparse.uniform_sparsities(params, 0.0))}


def zero_stats(values, paths) -> tuple[float, dict[str, float], int]:
    """(overall fraction of exact zeros / False entries over ``paths``, per-path fractions, zero count)."""
    stats = tree.tree_stats(jax.device_get(values), where=lambda path: path in paths)
    layers = {path: leaf["sparsity"] for path, leaf in stats["per_leaf"].items()}
    return stats["sparsity"], layers, stats["zeros"]


def _mask_agreement(masks, params, paths) -> dict[str, int]:
    """Counts over ``paths`` of inactive weights that are non-zero and of active weights that are zero."""
    masks, params = (dict(tree.leaves_with_paths(jax.device_get(t))) for t in (masks, params))
    inactive = sum(int(np.count_nonzero(~masks[p] & (params[p] != 0))) for p in paths)
    active = sum(int(np.count_nonzero(masks[p] & (params[p] == 0))) for p in paths)
    return {"inactive_nonzeros": inactive, "active_zeros": active}


def run_label(method: str, sparsity: float, seed: int) -> str:
    return f"{method}-seed{seed}" if method == "dense" else f"{method}-s{sparsity:g}-seed{seed}"


@dataclasses.dataclass(frozen=True)
class Study:
    """What every run of one study shares: data, model, schedule, the sparsified paths and the log."""

    config: Config
    run_dir: str
    train_arrays: dict[str, np.ndarray]
    test_arrays: dict[str, np.ndarray]
    model: Any
    schedule: Schedule
    paths: dict[str, int]
    logger: train.MetricLogger


def load_study(config: Config, run_dir: str) -> Study:
    """Loads the data and builds the model, the schedule and the run's metric log."""
    train_set = data.load(config.dataset, config.train_split, data_dir=config.data_dir)
    test_set = data.load(config.dataset, "test", data_dir=config.data_dir)
    model = runner.build_model(
        config.model, tuple(train_set.x.shape[1:]), train_set.num_classes, config.width, config.channels
    )
    return Study(
        config,
        run_dir,
        train_set.arrays(),
        test_set.arrays(),
        model,
        Schedule.of(config, len(train_set)),
        selected_paths(jax.eval_shape(model.init, jax.random.key(0))["params"]),
        train.MetricLogger(os.path.join(run_dir, "train_log.jsonl")),
    )


def checkpoint_dir(run_dir: str, label: str) -> str:
    """Where the training loop of run ``label`` checkpoints (removed once the run's results are kept)."""
    return os.path.join(run_dir, "checkpoints", label)


def train_run(study: Study, method: str, sparsity: float, seed: int) -> dict[str, Any]:
    """Trains one (method, sparsity, seed) through :func:`unlearnx.train.fit` (loop name: its
    :func:`run_label`) and measures it.

    Each epoch's record carries the mask sparsity after that epoch; the last one also the per-layer mask
    sparsity, the mask's zero count and the mask/parameter agreement. The records are checkpointed with the
    state, so a resumed run ends with the same sparsity curve."""
    config, paths, label = study.config, study.paths, run_label(method, sparsity, seed)
    init_key, step_key = jax.random.split(jax.random.key(seed))
    variables = study.model.init(init_key)
    optimizer = make_optimizer(config, study.schedule, method, sparsity, seed)
    is_sparse = method != "dense"
    initial = zero_stats(sparse.masks(optimizer.init(variables["params"])), paths)[0] if is_sparse else 0.0

    def on_epoch_end(epoch, state) -> dict[str, Any]:
        if not is_sparse:
            return {"mask_sparsity": 0.0}
        masks = sparse.masks(state.opt_state)
        overall, layers, zeros = zero_stats(masks, paths)
        if epoch < config.epochs:
            return {"mask_sparsity": overall}
        agreement = _mask_agreement(masks, state.variables["params"], paths)
        return {"mask_sparsity": overall, "layer_mask_sparsity": layers, "mask_zeros": zeros, **agreement}

    final, history = train.fit(
        study.model,
        variables,
        study.train_arrays,
        optimizer=optimizer,
        epochs=config.epochs,
        batch_size=config.batch_size,
        rng=step_key,
        seed=seed,
        checkpoint_dir=checkpoint_dir(study.run_dir, label),
        checkpoint_seconds=config.checkpoint_seconds,
        logger=study.logger,
        on_epoch_end=on_epoch_end,
        augment=data.crop_and_flip if config.augment else None,
        desc=label,
        progress=config.progress,
    )
    curve = [initial, *(record["mask_sparsity"] for record in history)]
    return _measure(study, method, sparsity, seed, final, curve, history[-1])


def _measure(
    study: Study, method: str, sparsity: float, seed: int, final, curve: list[float], last: dict[str, Any]
) -> dict[str, Any]:
    """One run's result from its final variables, its sparsity curve (the initial mask's sparsity, then
    one entry per epoch) and its last epoch record."""
    paths = study.paths
    param_sparsity, param_layers, param_zeros = zero_stats(final["params"], paths)
    logits = train.predict(study.model, final, study.test_arrays["x"])
    finite = report.finite(final, logits)
    return {
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "test_acc": eval.accuracy(logits, study.test_arrays["y"]) if finite else None,
        "diverged": not finite,
        "mask_sparsity": curve[-1],
        "mask_zeros": last.get("mask_zeros", 0),
        "param_sparsity": param_sparsity,
        "param_zeros": param_zeros,
        # Must be 0: a weight outside the mask that is not exactly zero.
        "inactive_nonzeros": last.get("inactive_nonzeros", 0),
        # Active weights that are exactly 0 (regrown at zero and not moved since, e.g. zero gradient).
        "active_zeros": last.get("active_zeros", 0),
        "layer_mask_sparsity": last.get("layer_mask_sparsity", dict.fromkeys(paths, 0.0)),
        "layer_param_sparsity": param_layers,
        "sparsity_curve": curve,
        # Mean density over training, trapezoid over epochs: cost ∝ active weights.
        "train_flops": float(
            np.mean([1.0 - (a + b) / 2 for a, b in zip(curve[:-1], curve[1:], strict=True)])
        ),
    }


def cached_run(study: Study, method: str, sparsity: float, seed: int) -> tuple[dict[str, Any], float, bool]:
    """``(result, seconds, resumed)`` of one run: read from ``results/<label>.json`` if a previous attempt
    finished it, else trained (resuming its checkpoint, if any) and stored there, and its checkpoints
    removed (:func:`experiments.runner.kept_result`)."""
    label = run_label(method, sparsity, seed)
    path = os.path.join(study.run_dir, "results", f"{label}.json")
    work = functools.partial(train_run, study, method, sparsity, seed)
    return runner.kept_result(path, work, checkpoints=checkpoint_dir(study.run_dir, label))


def main(config: Config, run_dir: str) -> dict[str, Any]:
    """Trains every (method, sparsity, seed) — dense once per seed — then writes ``metrics.json``,
    ``timing.json``, ``report.md`` and the plots, and prints the report.

    Each finished run is kept in ``results/<label>.json``, so ``--resume`` skips it; an unfinished run
    resumes from its last checkpoint (``checkpoints/<label>``: every ``checkpoint_seconds``, at the end,
    and on a stop request such as SIGTERM). ``metrics.json`` holds only what the seeds determine; wall
    times (compilation included) go to ``timing.json``.
    """
    unknown = set(config.methods) - set(METHODS)
    if unknown or not config.methods or not config.sparsities or not config.seeds or config.epochs < 1:
        raise ValueError(
            f"need methods from {METHODS}, at least one sparsity and seed, and epochs >= 1; got methods "
            f"{config.methods}, sparsities {config.sparsities}, seeds {config.seeds}, epochs {config.epochs}"
        )
    study = load_study(config, run_dir)
    runs, seconds, resumed = {}, {}, []
    try:
        for seed in config.seeds:
            for method in config.methods:
                for sparsity in (0.0,) if method == "dense" else config.sparsities:
                    label = run_label(method, sparsity, seed)
                    runs[label], seconds[label], was_stored = cached_run(study, method, sparsity, seed)
                    if was_stored:
                        resumed.append(label)
    finally:
        study.logger.close()
    metrics = granet_report.summarise(config, runs, study.schedule, study.paths)
    timing = {"per_run": seconds, "total": float(sum(seconds.values())), "resumed_runs": resumed}
    runner.write_outputs(
        run_dir, metrics, timing, granet_report.report(config, metrics, timing, DESCRIPTIONS)
    )
    granet_report.plot(config, metrics, run_dir)
    return metrics

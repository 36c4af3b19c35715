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

Presets:

- ``smoke``: seconds, for tests.
- ``quick``: digits + MLP 256-256, all methods × sparsities (0.8, 0.9, 0.95, 0.98), seeds 0 and 1, 30
  epochs of 22 steps (batch 64). ΔT = 13 steps gives 25 pruning events up to t_f = step 330 and 50 GraNet
  mask updates in all (the paper's CIFAR schedule: 28 and 56, ΔT = 1000 of 56,160 steps), the last one 10
  steps before the end, so weights regrown at zero get trained (ΔT = 12 would put an update on the final
  step). A few minutes on 2 CPU cores: the mask updates' full sorts and one compilation per run dominate.
- ``fashion``: Fashion-MNIST + BatchNorm CNN (16, 32 channels, dense 64), sparsities 0.9 and 0.98, one seed,
  5 epochs of 468 steps (batch 128), ΔT = 40 (29 pruning events, 58 GraNet mask updates). 13 runs of 2–3
  min each: expect 30–45 min on 2 CPU cores (an epoch took 30–40 s on 2 shared cores).
- ``paper`` / ``paper_cifar100`` (CIFAR ResNet-50) and ``paper_vgg19`` / ``paper_vgg19_cifar100`` (CIFAR
  VGG-19-BN): CIFAR-10 / CIFAR-100 from TFDS on 45k training images (the reference's ``valid_split = 0.1``),
  160 epochs, batch 128, LR 0.1, weight decay 5e-4, crop + flip augmentation, ΔT = 1000, pruning ends at
  epoch 80, sparsities 0.9/0.95/0.98, 3 seeds, checkpointed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from typing import Any

import jax
import numpy as np
import optax

from experiments import granet_report, runner
from unlearnx import data, eval, sparse, train, tree
from unlearnx.checkpoint import Checkpointer

NAME = "granet_sparse"
METHODS = granet_report.METHODS


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
    checkpoint_seconds: float | None = None  # None: no mid-run checkpoints (finished runs are always kept)
    progress: bool = True


PRESETS: dict[str, Config] = {
    "smoke": Config(sparsities=(0.9, 0.98), seeds=(0,), epochs=3, width=32, frequency=8, progress=False),
    "quick": Config(),
    "fashion": Config(
        dataset="fashion_mnist",
        model="cnn",
        channels=(16, 32),
        width=64,
        sparsities=(0.9, 0.98),
        seeds=(0,),
        epochs=5,
        batch_size=128,
        frequency=40,
        checkpoint_seconds=60.0,
    ),
    "paper": Config(
        dataset="tfds:cifar10",
        train_split="train[:90%]",
        model="resnet50",
        width=64,
        sparsities=(0.9, 0.95, 0.98),
        seeds=(0, 1, 2),
        epochs=160,
        batch_size=128,
        augment=True,
        frequency=1000,
        checkpoint_seconds=300.0,
    ),
}
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
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(learning_rate, momentum=config.momentum, nesterov=True),
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
    masks, params = (
        dict(tree.leaves_with_paths(jax.device_get(masks))),
        dict(tree.leaves_with_paths(jax.device_get(params))),
    )
    inactive = sum(int(np.count_nonzero(~masks[p] & (params[p] != 0))) for p in paths)
    active = sum(int(np.count_nonzero(masks[p] & (params[p] == 0))) for p in paths)
    return {"inactive_nonzeros": inactive, "active_zeros": active}


def run_label(method: str, sparsity: float, seed: int) -> str:
    return f"{method}-seed{seed}" if method == "dense" else f"{method}-s{sparsity:g}-seed{seed}"


class _Study:
    """Data, model and schedule shared by every run."""

    def __init__(self, config: Config, run_dir: str):
        self.config, self.run_dir = config, run_dir
        train_set = data.load(config.dataset, config.train_split, data_dir=config.data_dir)
        test_set = data.load(config.dataset, "test", data_dir=config.data_dir)
        self.train, self.test = train_set.arrays(), test_set.arrays()
        self.model = runner.build_model(
            config.model, tuple(train_set.x.shape[1:]), train_set.num_classes, config.width, config.channels
        )
        self.schedule = Schedule.of(config, len(train_set))
        self.paths = selected_paths(jax.eval_shape(self.model.init, jax.random.key(0))["params"])
        self.logger = train.MetricLogger(os.path.join(run_dir, "train_log.jsonl"))

    def run(self, method: str, sparsity: float, seed: int, interrupt=None) -> dict[str, Any]:
        """Trains one (method, sparsity, seed) and measures it; the sparsity curve holds the mask sparsity
        after each epoch, entry 0 being the initial mask."""
        config, label = self.config, run_label(method, sparsity, seed)
        init_key, step_key = jax.random.split(jax.random.key(seed))
        variables = self.model.init(init_key)
        paths = self.paths
        optimizer = make_optimizer(config, self.schedule, method, sparsity, seed)
        is_sparse = method != "dense"
        initial = sparse.masks(optimizer.init(variables["params"])) if is_sparse else None
        history = {"curve": [zero_stats(initial, paths)[0] if is_sparse else 0.0], "layers": {}, "zeros": 0}

        checkpoint_dir = history_path = None
        if config.checkpoint_seconds is not None:
            checkpoint_dir = os.path.join(self.run_dir, "checkpoints", label)
            history_path = checkpoint_dir + ".history.json"
            checkpointer = Checkpointer(checkpoint_dir)
            done = checkpointer.latest_step()
            checkpointer.close()
            if done is not None:
                saved = _read_json(history_path)
                if saved is None or len(saved["curve"]) < done + 1:
                    print(f"{label}: checkpoint without its sparsity history; retraining", file=sys.stderr)
                    shutil.rmtree(checkpoint_dir)
                else:
                    history = {**saved, "curve": saved["curve"][: done + 1]}

        def on_epoch_end(epoch, state, saved):
            if is_sparse:
                masks = sparse.masks(state.opt_state)
                overall, history["layers"], history["zeros"] = zero_stats(masks, paths)
                history["curve"].append(overall)
                if epoch == config.epochs:
                    history.update(_mask_agreement(masks, state.variables["params"], paths))
            else:
                history["curve"].append(0.0)
            if saved and history_path is not None:
                _write_atomic(history_path, history)
            if interrupt is not None and interrupt[0] == label and saved and epoch >= interrupt[1]:
                raise KeyboardInterrupt(f"simulated interruption of {label!r} after epoch {epoch}")

        final = train.fit(
            self.model,
            variables,
            self.train,
            optimizer=optimizer,
            epochs=config.epochs,
            batch_size=config.batch_size,
            rng=step_key,
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            checkpoint_seconds=config.checkpoint_seconds or 0.0,
            logger=self.logger,
            on_epoch_end=on_epoch_end,
            augment=data.crop_and_flip if config.augment else None,
            desc=label,
            progress=config.progress,
        )
        if checkpoint_dir is not None:  # the run's results are kept instead
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            if os.path.exists(history_path):
                os.remove(history_path)
        param_sparsity, param_layers, param_zeros = zero_stats(final["params"], paths)
        curve = history["curve"]
        logits = train.predict(self.model, final, self.test["x"])
        return {
            "method": method,
            "sparsity": sparsity,
            "seed": seed,
            "test_acc": eval.accuracy(logits, self.test["y"]),
            "mask_sparsity": curve[-1],
            "mask_zeros": history["zeros"],
            "param_sparsity": param_sparsity,
            "param_zeros": param_zeros,
            # Must be 0: a weight outside the mask that is not exactly zero.
            "inactive_nonzeros": history.get("inactive_nonzeros", 0),
            # Active weights that are exactly 0 (regrown at zero and not moved since, e.g. zero gradient).
            "active_zeros": history.get("active_zeros", 0),
            "layer_mask_sparsity": history["layers"] if is_sparse else dict.fromkeys(paths, 0.0),
            "layer_param_sparsity": param_layers,
            "sparsity_curve": curve,
            # Mean density over training, trapezoid over epochs: cost ∝ active weights.
            "train_flops": float(
                np.mean([1.0 - (a + b) / 2 for a, b in zip(curve[:-1], curve[1:], strict=True)])
            ),
        }


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _write_atomic(path: str, value: Any) -> None:
    temporary = path + ".tmp"
    runner.write_json(temporary, value)
    os.replace(temporary, path)


def main(config: Config, run_dir: str, *, interrupt: tuple[str, int] | None = None) -> dict[str, Any]:
    """Trains every (method, sparsity, seed) — dense once per seed — then writes ``metrics.json``,
    ``timing.json``, ``report.md`` and the plots, and prints the report.

    Each finished run is kept in ``results/<label>.json``, so ``--resume`` skips it; with
    ``checkpoint_seconds`` set, an unfinished run resumes from its last checkpoint. ``metrics.json`` holds
    only what the seeds determine; wall times (compilation included) go to ``timing.json``.
    ``interrupt=(label, epoch)`` (e.g. ``("gmp-s0.9-seed0", 2)``) simulates a crash after that run's
    checkpoint of ``epoch``, for testing ``--resume``.
    """
    unknown = set(config.methods) - set(METHODS)
    if unknown or not config.methods or not config.sparsities or not config.seeds:
        raise ValueError(
            f"need methods from {METHODS} and at least one sparsity and seed; got methods {config.methods}, "
            f"sparsities {config.sparsities}, seeds {config.seeds}"
        )
    study = _Study(config, run_dir)
    os.makedirs(os.path.join(run_dir, "results"), exist_ok=True)
    runs, seconds, resumed = {}, {}, []
    for seed in config.seeds:
        for method in config.methods:
            for sparsity in (0.0,) if method == "dense" else config.sparsities:
                label = run_label(method, sparsity, seed)
                path = os.path.join(run_dir, "results", f"{label}.json")
                stored = _read_json(path)
                if stored is not None:
                    runs[label], seconds[label] = stored["result"], stored["seconds"]
                    resumed.append(label)
                    continue
                started = time.perf_counter()
                runs[label] = study.run(method, sparsity, seed, interrupt)
                seconds[label] = time.perf_counter() - started
                _write_atomic(path, {"result": runs[label], "seconds": seconds[label]})
    metrics = granet_report.summarise(config, runs, study.schedule, study.paths)
    timing = {"per_run": seconds, "total": float(sum(seconds.values())), "resumed_runs": resumed}
    runner.write_outputs(run_dir, metrics, timing, granet_report.report(config, metrics, timing))
    granet_report.plot(config, metrics, run_dir)
    return metrics

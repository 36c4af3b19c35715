"""Power-law rehearsal against uniform / exponential rehearsal, EWC, online EWC and SI on permuted tasks.

Domain-incremental permuted images (``shared/papers/powerlaw_rehearsal.md``,
:mod:`unlearnx.continual.permuted`): task 0 is the data set as is, task t > 0 applies one fixed pixel
permutation (drawn from ``(seed, t)``, so a seed fixes the task sequence and a shorter sequence is a prefix of
a longer one). One model (the same initialisation per seed for every method) is trained on the tasks in
order; after each phase it is evaluated on the test split of every task, future ones included, filling
R[i, j] (accuracy on task j after training through task i). b̄ⱼ is the random initialisation's accuracy on
task j. ``unlearnx.continual.cl_metrics`` gives ACC / BWT / FWT / forgetting.

Methods:

- ``naive``: fine-tuning, no rehearsal, no penalty.
- ``uniform`` / ``exponential`` (rate λ = ``rate``) / ``power_law_0.5`` / ``power_law_1`` (exponent d):
  rehearsal at the same budget B = ``budget`` examples per phase. Every task keeps a reservoir memory of
  ``memory_size`` examples (``unlearnx.continual.buffer_add``). At phase k > 0 the counts
  nᵢ = ``rehearsal_counts(kind, current_task=k, last_seen=[0..k−1], budget=B)`` are drawn from task i's
  memory (without replacement while nᵢ ≤ memory, else with), and the B examples are concatenated to task
  k's training set for the whole phase (so each is seen once per epoch). Clock: ``last_seen[i] = i``, the
  time since task i was *first learned* (``since_first``); with deterministic allocation every past task
  is rehearsed every phase, so a ``since_last`` clock would make every age 1 and collapse to uniform.
- ``ewc``: one (F, θ*) per past task, F the empirical Fisher diagonal (``fisher.diagonal``, the data's
  labels, ``fisher_examples`` training examples of the task, taken after its phase), λ = ``ewc_strength``.
- ``online_ewc``: running F̃ ← γF̃ + F_k (γ = ``online_decay``) and one anchor, same λ.
- ``si``: c = ``si_strength``, ξ = ``si_damping``.
- ``power_law_1+ewc``: power-law rehearsal (d = 1) plus the EWC penalty.

Optimizer: ``optax.named_chain(("penalty", penalty), ("adam", adam(lr)))``; Adam's moments are re-initialised
at every phase, the penalty state (Fisher lists, running Fisher, SI path integrals and importances) is carried
across phases.

Forward facilitation: during each phase the accuracy on ``probe_size`` training examples of the new task is
measured after every step; we record the steps to reach ``threshold``, the area under that curve (its
mean) and the test accuracy on the new task after the first epoch.

Resuming: each phase is the loop ``{method}-seed{seed}-task{phase}`` (``sweep-{axis}={value}-…`` in a sweep
cell); the carry between phases is checkpointed too and finished sequences are kept in ``results/``
(:mod:`experiments.powerlaw_sequence`), so ``--resume`` after any kill writes the same ``metrics.json``.

Count-matrix mode (``new_count`` set, :mod:`experiments.powerlaw_environment`): each phase trains on an
explicit phase × task count matrix N[j, i] (the public permuted-MNIST environment of spec §3b: lower and upper
baselines, EWC, the unrestricted power law n₀·((a + 10)/10)^(−5.6), and uniform / exponential / power-law
schedules at replay budgets ⌊r·n₀⌋ per phase, r in ``replay_ratios``), replaying from each task's whole
training split instead of a memory; ``budget`` and ``memory_size`` are then unused.

Presets (``PRESETS``): ``smoke`` (tests), ``quick`` (digits, 10 tasks, MLP 2 × 100, B = 300, 3 seeds, every
method), ``sweeps`` (``quick`` plus tasks / width / budget sweeps), ``fashion`` (permuted Fashion-MNIST),
``paper`` (the public environment: permuted MNIST from TFDS padded to 32 × 32, 10 tasks, n₀ = 57,927 drawn
from the first 57,927 training images as the public code does, MLP 4 × 1000 with BatchNorm and dropout 0.5,
batch 2,048, 100 passes per phase, r ∈ {1, 0.75, 0.5, 0.25, 0.1}), ``paper_env_fashion`` (the same environment
structure on permuted Fashion-MNIST for 2 CPU cores: 5 tasks, n₀ = 5,793 = 57,927 / 10, MLP 4 × 256 with
BatchNorm and dropout 0.5, batch 512, 2 passes, 3 seeds, the first 2,000 test examples) and ``smoke_env``
(tests). A task with fewer training examples than N[j, i] (mock data) is drawn with replacement.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from experiments import powerlaw_environment, powerlaw_report, powerlaw_sequence, runner
from unlearnx import data
from unlearnx.continual.permuted import PermutedTasks

NAME = "powerlaw_rehearsal"
SWEEP_METHODS = ("naive", "uniform", "exponential", "power_law_1")

#: method -> (rehearsal kind, exponent, penalty)
SPECS: dict[str, tuple[str, float, str | None]] = {
    "naive": ("none", 0.0, None),
    "uniform": ("uniform", 0.0, None),
    "exponential": ("exponential", 0.0, None),
    "power_law_0.5": ("power_law", 0.5, None),
    "power_law_1": ("power_law", 1.0, None),
    "ewc": ("none", 0.0, "ewc"),
    "online_ewc": ("none", 0.0, "online_ewc"),
    "si": ("none", 0.0, "si"),
    "power_law_1+ewc": ("power_law", 1.0, "ewc"),
}
METHODS = tuple(SPECS)
#: every method of the count-matrix mode: the legacy ones plus ``upper`` and ``power_law_unrestricted``
ENV_SPECS = {**SPECS, **powerlaw_environment.ENV_ONLY}
ENV_METHODS = ("naive", "upper", "ewc", "power_law_unrestricted", "uniform", "exponential", "power_law_1")


@dataclasses.dataclass(frozen=True)
class Config:
    """One permuted-task comparison; ``budget`` is B, replayed examples per phase, the same for every kind."""

    dataset: str = "digits"
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    train_examples: int | None = None  # per task, the first N of the training split (None: all)
    model: str = "mlp"
    width: int = 100
    methods: tuple[str, ...] = METHODS
    num_tasks: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    budget: int = 300
    memory_size: int = 200
    rate: float = 1.0  # exponential schedule λ
    ewc_strength: float = 100.0
    online_decay: float = 0.9
    si_strength: float = 0.1
    si_damping: float = 0.1
    fisher_examples: int = 500
    threshold: float = 0.9  # forward facilitation: probe accuracy to reach
    probe_size: int = 256
    sweeps: bool = False
    sweep_tasks: tuple[int, ...] = (5,)
    sweep_widths: tuple[int, ...] = (50, 200)
    sweep_budgets: tuple[int, ...] = (100, 1000)
    sweep_methods: tuple[str, ...] = SWEEP_METHODS
    progress: bool = False
    checkpoint_seconds: float | None = None  # within a phase (None: only at its end and when stopped)
    # model: ``hidden_layers`` × ``width`` MLP, optionally BatchNorm and dropout; images zero-padded to
    # ``pad_to`` × ``pad_to`` before permuting (None: as loaded); the first ``test_examples`` test examples
    hidden_layers: int = 2
    batch_norm: bool = False
    dropout: float = 0.0
    pad_to: int | None = None
    test_examples: int | None = None
    # count-matrix mode (module docstring): n₀, the budgets r, the unrestricted power law's c and p
    new_count: int | None = None
    replay_ratios: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.1)
    unrestricted_offset: float = 10.0
    unrestricted_decay: float = 5.6

    def validate(self) -> None:
        """Every field's own rule, before any work (``ValueError`` naming the field)."""
        _check(self)


PRESETS: dict[str, Config] = {
    "smoke": Config(
        methods=("naive", "power_law_1", "ewc", "si"), num_tasks=3, seeds=(0, 1), width=32, epochs=1,
        budget=64, memory_size=50, fisher_examples=64, probe_size=64, threshold=0.5, sweeps=True,
        sweep_tasks=(), sweep_widths=(), sweep_budgets=(16,), sweep_methods=("naive", "power_law_1"),
    ),
    "quick": Config(),
    "fashion": Config(
        dataset="fashion_mnist", num_tasks=5, seeds=(0,), width=256, epochs=2, batch_size=128, budget=2000,
        memory_size=1000, fisher_examples=1000, progress=True, checkpoint_seconds=60.0,
    ),
    "paper": Config(
        dataset="tfds:mnist", train_examples=57927, new_count=57927, methods=ENV_METHODS, num_tasks=10,
        width=1000, hidden_layers=4, batch_norm=True, dropout=0.5, pad_to=32, epochs=100, batch_size=2048,
        ewc_strength=500.0, fisher_examples=2000, probe_size=1024, progress=True, checkpoint_seconds=60.0,
    ),
    "paper_env_fashion": Config(
        dataset="fashion_mnist", methods=ENV_METHODS, num_tasks=5, width=256, hidden_layers=4,
        batch_norm=True, dropout=0.5, pad_to=32, epochs=2, batch_size=512, new_count=5793, test_examples=2000,
        ewc_strength=500.0, fisher_examples=500, probe_size=128, threshold=0.7, progress=True,
        checkpoint_seconds=60.0,
    ),
    "smoke_env": Config(
        methods=("naive", "upper", "power_law_unrestricted", "uniform", "power_law_1", "ewc"), num_tasks=3,
        seeds=(0,), width=16, hidden_layers=3, batch_norm=True, dropout=0.5, pad_to=10, epochs=1,
        batch_size=32, new_count=200, replay_ratios=(1.0, 0.25), fisher_examples=64, probe_size=32,
        threshold=0.5,
    ),
}  # fmt: skip
PRESETS["sweeps"] = dataclasses.replace(PRESETS["quick"], sweeps=True)


class Tasks(PermutedTasks):
    """One seed's permuted task sequence over ``config.dataset`` (the first ``train_examples`` training
    examples), with its class count."""

    def __init__(self, config: Config, seed: int):
        train_set = data.load(config.dataset, config.train_split, data_dir=config.data_dir)
        test_set = data.load(config.dataset, config.test_split, data_dir=config.data_dir)
        limit, tests = config.train_examples, config.test_examples
        train = {"x": _padded(train_set.x[:limit], config.pad_to), "y": train_set.y[:limit]}
        test = {"x": _padded(test_set.x[:tests], config.pad_to), "y": test_set.y[:tests]}
        super().__init__(train, test, seed=seed)
        self.num_classes = train_set.num_classes


def _padded(x, size: int | None):
    """Images ``[n, h, w, c]`` zero-padded to ``size`` × ``size`` (as evenly as possible), or as they are."""
    if size is None:
        return x
    height, width = x.shape[1:3]
    if height > size or width > size:
        raise ValueError(f"pad_to {size} is smaller than the images ({height} × {width})")
    top, left = (size - height) // 2, (size - width) // 2
    return np.pad(x, ((0, 0), (top, size - height - top), (left, size - width - left), (0, 0)))


def sweep_cells(config: Config) -> list[tuple[str, Any, dict[str, int]]]:
    """``(axis, value, {num_tasks, width, budget})`` of every sweep cell, the default one excluded."""
    base = {"num_tasks": config.num_tasks, "width": config.width, "budget": config.budget}
    cells = []
    for axis, values in (
        ("num_tasks", config.sweep_tasks),
        ("width", config.sweep_widths),
        ("budget", config.sweep_budgets),
    ):
        for value in values:
            if value != base[axis]:
                cells.append((axis, value, {**base, axis: value}))
    return cells


def finished_sequence(
    config: Config, run_dir: str, tag: str, method: str, seed: int, tasks: Tasks, setting: dict[str, int]
) -> tuple[dict[str, Any], float]:
    """``(results, seconds)`` of one sequence, from ``results/{tag}.json`` if an earlier run finished it,
    else trained (resuming from ``checkpoints/{tag}``) and kept there (:func:`runner.kept_result`)."""
    directory = os.path.join(run_dir, "checkpoints", tag)
    specs = SPECS if config.new_count is None else ENV_SPECS
    sequence = functools.partial(powerlaw_sequence.run_sequence, config, specs[method], seed, tasks)
    work = functools.partial(sequence, **setting, directory=directory, name=tag)
    path = os.path.join(run_dir, "results", f"{tag}.json")
    result, seconds, kept = runner.kept_result(path, work, checkpoints=directory)
    if config.progress and not kept:
        print(f"  {tag}: {seconds:.1f} s", flush=True)
    return result, seconds


def _check(config: Config) -> None:
    specs = SPECS if config.new_count is None else ENV_SPECS
    unknown = set(config.methods) - set(specs)
    if unknown or not config.methods or not config.seeds or config.num_tasks < 2:
        mode = "" if config.new_count is None else " (count-matrix mode, new_count set)"
        raise ValueError(
            f"need methods from {tuple(specs)}{mode}, at least one seed and two tasks; got methods "
            f"{config.methods}, seeds {config.seeds}, num_tasks {config.num_tasks}"
        )
    if config.checkpoint_seconds is not None and not config.checkpoint_seconds >= 0:
        raise ValueError(f"checkpoint_seconds must be None or >= 0, got {config.checkpoint_seconds!r}")
    if config.hidden_layers < 1:
        raise ValueError(f"hidden_layers must be >= 1, got {config.hidden_layers!r}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {config.dropout!r}")
    if (config.batch_norm or config.dropout or config.hidden_layers != 2) and config.model != "mlp":
        raise ValueError(f"hidden_layers, batch_norm and dropout apply to model 'mlp', got {config.model!r}")
    for name in ("pad_to", "test_examples", "train_examples"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be None or >= 1, got {value!r}")
    powerlaw_environment.check(config, specs)


def main(config: Config, run_dir: str) -> dict[str, Any]:
    """Runs every (method, seed) — and the sweep cells if ``config.sweeps`` — then writes ``metrics.json``
    (seed-determined values only), ``timing.json``, ``report.md`` and the plots, and prints the report.
    Finished sequences are kept in ``results/``, unfinished ones resume from ``checkpoints/`` (module
    docstring)."""
    _check(config)
    base = {"num_tasks": config.num_tasks, "width": config.width, "budget": config.budget}
    if config.new_count is None:
        jobs = [(method, method, None) for method in config.methods]
    else:
        jobs = powerlaw_environment.jobs(config, ENV_SPECS)
    runs: dict[str, dict[str, Any]] = {name: {} for name, _, _ in jobs}
    sweeps: dict[str, dict[str, dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for seed in config.seeds:
        tasks = Tasks(config, seed)
        for name, method, ratio in jobs:
            tag = f"{name}-seed{seed}"
            setting = base if config.new_count is None else {**base, "ratio": ratio}
            runs[name][str(seed)], seconds[tag] = finished_sequence(
                config, run_dir, tag, method, seed, tasks, setting
            )
        if not config.sweeps:
            continue
        for axis, value, setting in sweep_cells(config):
            for method in config.sweep_methods:
                tag = f"sweep-{axis}={value}-{method}-seed{seed}"
                result, seconds[tag] = finished_sequence(config, run_dir, tag, method, seed, tasks, setting)
                cell = sweeps.setdefault(axis, {}).setdefault(str(value), {}).setdefault(method, {})
                cell[str(seed)] = {**result["metrics"], "diverged": result["diverged"]}
    metrics = powerlaw_report.summarise(config, runs, sweeps)
    if config.new_count is not None:  # N is the same for every seed: the first seed's counts
        for name, by_seed in runs.items():
            first = by_seed[str(config.seeds[0])]
            metrics["summary"][name]["consumed"] = powerlaw_environment.consumed(
                config, first, config.num_tasks
            )
    timing = {"per_run": seconds, "total": float(sum(seconds.values()))}
    environment = [] if config.new_count is None else powerlaw_environment.table(config, metrics, ENV_SPECS)
    text = powerlaw_report.report(config, metrics, timing, environment)
    runner.write_outputs(run_dir, metrics, timing, text)
    powerlaw_report.plot(config, metrics, run_dir)
    if config.new_count is not None:
        powerlaw_environment.plot(config, metrics, ENV_SPECS, run_dir)
    return metrics

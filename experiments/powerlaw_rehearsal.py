"""Power-law rehearsal against uniform / exponential rehearsal, EWC, online EWC and SI on permuted tasks.

Domain-incremental permuted images (``shared/papers/powerlaw_rehearsal.md``): task 0 is the data set as is,
task t > 0 applies one fixed pixel permutation (drawn from ``(seed, t)``, so a seed fixes the task sequence
and a shorter sequence is a prefix of a longer one). One model (the same initialisation per seed for every
method) is trained on the tasks in order; after each phase it is evaluated on the test split of every task,
future ones included, filling R[i, j] (accuracy on task j after training through task i). b̄ⱼ is the random
initialisation's accuracy on task j. ``unlearnx.continual.cl_metrics`` gives ACC / BWT / FWT / forgetting.

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

Optimizer: ``optax.chain(penalty, adam(lr))``; Adam's moments are re-initialised at every phase, the penalty
state (Fisher lists, running Fisher, SI path integrals and importances) is carried across phases.

Forward facilitation: during each phase the accuracy on ``probe_size`` training examples of the new task is
measured after every step; we record the steps to reach ``threshold``, the area under that curve (its
mean) and the test accuracy on the new task after the first epoch.

Presets:

- ``smoke``: seconds, for tests (3 tasks, 2 seeds of a narrow MLP, four methods, one budget sweep cell).
- ``quick``: digits (8 × 8), 10 tasks, MLP 2 × 100, Adam 1e-3, 4 epochs of batch 32 per task, B = 300,
  memories of 200 examples, seeds 0–2, every method. No sweeps (see ``sweeps``).
- ``sweeps``: ``quick`` plus the robustness sweeps (tasks 5, width 50 / 200, B 100 / 1000) for
  naive / uniform / exponential / power-law d = 1, 3 seeds each.
- ``fashion``: permuted Fashion-MNIST (784 pixels), 5 tasks, MLP 2 × 256, 2 epochs of batch 128, B = 2000,
  memories of 1000, one seed.
- ``paper``: permuted MNIST from TFDS (``tfds:mnist``, 28 × 28 — the 32 × 32 padding of the public
  implementation is left out), 10 tasks, MLP 2 × 1000 (the public implementation uses 4 × 1000 with
  BatchNorm and dropout; ``runner.build_model`` has two hidden layers), batch 256, 10 epochs per task,
  B = 14,482 (a quarter of its 57,927 new examples per phase), memories of 15,000, EWC λ = 500, 3 seeds.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import powerlaw_report, runner
from unlearnx import continual, data, eval, fisher, train

NAME = "powerlaw_rehearsal"
METHODS = powerlaw_report.METHODS
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


PRESETS: dict[str, Config] = {
    "smoke": Config(
        methods=("naive", "power_law_1", "ewc", "si"),
        num_tasks=3,
        seeds=(0, 1),
        width=32,
        epochs=1,
        budget=64,
        memory_size=50,
        fisher_examples=64,
        probe_size=64,
        threshold=0.5,
        sweeps=True,
        sweep_tasks=(),
        sweep_widths=(),
        sweep_budgets=(16,),
        sweep_methods=("naive", "power_law_1"),
    ),
    "quick": Config(),
    "fashion": Config(
        dataset="fashion_mnist",
        num_tasks=5,
        seeds=(0,),
        width=256,
        epochs=2,
        batch_size=128,
        budget=2000,
        memory_size=1000,
        fisher_examples=1000,
        progress=True,
    ),
    "paper": Config(
        dataset="tfds:mnist",
        num_tasks=10,
        width=1000,
        epochs=10,
        batch_size=256,
        budget=14482,
        memory_size=15000,
        ewc_strength=500.0,
        fisher_examples=2000,
        probe_size=1024,
        progress=True,
    ),
}
PRESETS["sweeps"] = dataclasses.replace(PRESETS["quick"], sweeps=True)


# --------------------------------------------------------------------------- data


def permutation(seed: int, task: int, pixels: int) -> np.ndarray:
    """Task ``task``'s pixel permutation (the identity for task 0)."""
    if task == 0:
        return np.arange(pixels)
    return np.random.default_rng((seed, task, 7919)).permutation(pixels)


def permuted(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return np.ascontiguousarray(flat[:, order].reshape(x.shape))


class Tasks:
    """The permuted train / test arrays of one seed's task sequence (built lazily, cached)."""

    def __init__(self, config: Config, seed: int):
        train_set = data.load(config.dataset, config.train_split, data_dir=config.data_dir)
        test_set = data.load(config.dataset, config.test_split, data_dir=config.data_dir)
        limit = config.train_examples
        self.train_x = train_set.x if limit is None else train_set.x[:limit]
        self.train_y = train_set.y if limit is None else train_set.y[:limit]
        self.test_x, self.test_y = test_set.x, test_set.y
        self.num_classes = train_set.num_classes
        self.input_shape = tuple(train_set.x.shape[1:])
        self.pixels = int(np.prod(self.input_shape))
        self.seed = seed
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _get(self, split: str, task: int) -> np.ndarray:
        if (split, task) not in self._cache:
            source = self.train_x if split == "train" else self.test_x
            self._cache[split, task] = permuted(source, permutation(self.seed, task, self.pixels))
        return self._cache[split, task]

    def train(self, task: int) -> dict[str, np.ndarray]:
        return {"x": self._get("train", task), "y": self.train_y}

    def test(self, task: int) -> dict[str, np.ndarray]:
        return {"x": self._get("test", task), "y": self.test_y}


# --------------------------------------------------------------------------- training

_OPTIMIZERS: dict[tuple, Any] = {}


def make_optimizer(config: Config, penalty: str | None):
    """``chain(penalty, adam)`` (or plain Adam); one object per setting so compiled steps are reused."""
    key = (
        penalty,
        config.lr,
        config.ewc_strength,
        config.online_decay,
        config.si_strength,
        config.si_damping,
    )
    if key not in _OPTIMIZERS:
        adam = optax.adam(config.lr)
        if penalty is None:
            _OPTIMIZERS[key] = adam
        elif penalty == "ewc":
            _OPTIMIZERS[key] = optax.chain(continual.ewc([], [], config.ewc_strength), adam)
        elif penalty == "online_ewc":
            _OPTIMIZERS[key] = optax.chain(
                continual.online_ewc(config.ewc_strength, config.online_decay), adam
            )
        elif penalty == "si":
            _OPTIMIZERS[key] = optax.chain(
                continual.synaptic_intelligence(config.si_strength, config.si_damping), adam
            )
        else:
            raise ValueError(f"unknown penalty {penalty!r}")
    return _OPTIMIZERS[key]


_PROBES: dict[Any, Any] = {}


def _probe_fn(model):
    if model not in _PROBES:

        def probe(variables, x, y):
            logits = model.apply(variables, x, train=False)
            return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))

        _PROBES[model] = jax.jit(probe)
    return _PROBES[model]


_buffer_add = jax.jit(continual.buffer_add)


def evaluate_all(model, variables, tasks: Tasks, num_tasks: int) -> np.ndarray:
    """Test accuracy on every task, one row of R."""
    row = []
    for task in range(num_tasks):
        test = tasks.test(task)
        row.append(eval.accuracy(train.predict(model, variables, test["x"]), test["y"]))
    return np.asarray(row)


_LOSSES: dict[Any, Any] = {}


def _fisher(model, params, arrays: dict[str, np.ndarray], examples: int) -> Any:
    """The empirical Fisher diagonal (labels from the data) on the task's first ``examples`` examples."""
    if model not in _LOSSES:  # one loss function per model, so fisher.diagonal compiles once

        def loss_fn(p, batch):
            return train.example_losses(model.apply({"params": p}, batch["x"], train=False), batch)

        _LOSSES[model] = loss_fn
    subset = {k: v[:examples] for k, v in arrays.items()}
    return fisher.diagonal(_LOSSES[model], params, data.batches(subset, 256), estimator="empirical")


def _rehearsal_set(buffer, counts: np.ndarray, seed: int, phase: int) -> dict[str, np.ndarray]:
    """``counts[i]`` examples from task i's memory (uniform without replacement while they fit)."""
    stored = np.asarray(buffer.stored)
    memory = jax.tree.map(np.asarray, buffer.data)
    xs, ys = [], []
    for task, count in enumerate(counts):
        count = int(count)
        if count == 0:
            continue
        rng = np.random.default_rng((seed, phase, task, 104729))
        index = rng.choice(int(stored[task]), count, replace=count > stored[task])
        xs.append(memory["x"][task, index])
        ys.append(memory["y"][task, index])
    return {"x": np.concatenate(xs), "y": np.concatenate(ys)}


def run_sequence(
    config: Config, method: str, seed: int, tasks: Tasks, *, num_tasks: int, width: int, budget: int
) -> dict[str, Any]:
    """Trains ``method`` through ``num_tasks`` tasks; R, b̄, the per-phase rehearsal counts and the forward
    facilitation measurements."""
    kind, exponent, penalty = SPECS[method]
    model = runner.build_model(config.model, tasks.input_shape, tasks.num_classes, width, ())
    init_key = jax.random.key(seed)
    variables = model.init(init_key)
    random_acc = evaluate_all(model, variables, tasks, num_tasks)
    optimizer = make_optimizer(config, penalty)
    step_fn = train.make_train_step(model, optimizer)
    probe = _probe_fn(model)
    rng = jax.random.fold_in(init_key, 1)

    example = {"x": tasks.train(0)["x"][0], "y": tasks.train(0)["y"][0]}
    buffer = continual.buffer_init(num_tasks, config.memory_size, example) if kind != "none" else None
    penalty_state = None
    # EWC keeps one (F, θ*) per task in a fixed-length list: tasks not yet learned have F = 0, which adds
    # nothing to the gradient and keeps the optimizer state's structure (so the step compiles once).
    zeros = jax.tree.map(jnp.zeros_like, variables["params"])
    fishers, anchors = [zeros] * num_tasks, [zeros] * num_tasks
    step = jnp.asarray(0, jnp.int32)
    matrix = np.zeros((num_tasks, num_tasks))
    counts_log, replayed_log, to_threshold, aulc, first_epoch = [], [], [], [], []

    for phase in range(num_tasks):
        arrays = tasks.train(phase)
        counts = np.zeros(phase, np.int64)
        replayed = 0
        if kind != "none" and phase > 0:
            counts = np.asarray(
                continual.rehearsal_counts(
                    kind,
                    current_task=phase,
                    last_seen=np.arange(phase),
                    budget=budget,
                    exponent=exponent,
                    rate=config.rate,
                )
            )
            extra = _rehearsal_set(buffer, counts, seed, phase)
            replayed = len(extra["y"])
            arrays = {k: np.concatenate([arrays[k], extra[k]]) for k in arrays}
        counts_log.append([int(c) for c in counts])
        replayed_log.append(int(replayed))

        params = variables["params"]
        opt_state = optimizer.init(params)
        if penalty == "ewc":
            opt_state = (continual.EwcState(tuple(fishers), tuple(anchors)), opt_state[1])
        elif penalty is not None and penalty_state is not None:
            opt_state = (penalty_state, opt_state[1])
        state = train.TrainState(step, variables, opt_state)

        probe_x = jnp.asarray(tasks.train(phase)["x"][: config.probe_size])
        probe_y = jnp.asarray(tasks.train(phase)["y"][: config.probe_size])
        curve = []
        for epoch in range(config.epochs):
            for batch in data.batches(
                arrays, config.batch_size, seed=seed, epoch=phase * config.epochs + epoch, drop_remainder=True
            ):
                state, _ = step_fn(state, batch, jax.random.fold_in(rng, state.step))
                curve.append(probe(state.variables, probe_x, probe_y))
            if epoch == 0:
                test = tasks.test(phase)
                first_epoch.append(eval.accuracy(train.predict(model, state.variables, test["x"]), test["y"]))
        curve = np.asarray(jnp.stack(curve))
        reached = np.nonzero(curve >= config.threshold)[0]
        to_threshold.append(int(reached[0]) + 1 if reached.size else None)
        aulc.append(float(curve.mean()))

        variables, step = state.variables, state.step
        params = variables["params"]
        if penalty in ("ewc", "online_ewc"):
            task_fisher = _fisher(model, params, tasks.train(phase), config.fisher_examples)
            if penalty == "ewc":
                fishers[phase], anchors[phase] = task_fisher, params
            else:
                penalty_state = continual.consolidate_online_ewc(state.opt_state, task_fisher, params)[0]
        elif penalty == "si":
            penalty_state = continual.consolidate_si(state.opt_state, params)[0]
        if buffer is not None:
            own = tasks.train(phase)
            buffer = _buffer_add(
                buffer, phase, {"x": own["x"], "y": own["y"]}, jax.random.fold_in(init_key, 1000 + phase)
            )
        matrix[phase] = evaluate_all(model, variables, tasks, num_tasks)

    return {
        "R": matrix,
        "random_acc": random_acc,
        "metrics": continual.cl_metrics(matrix, random_acc),
        "counts": counts_log,
        "replayed": replayed_log,
        "steps_to_threshold": to_threshold,
        "aulc": aulc,
        "first_epoch_acc": first_epoch,
    }


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


def main(config: Config, run_dir: str, *, interrupt: tuple[str, int] | None = None) -> dict[str, Any]:
    """Runs every (method, seed) — and the sweep cells if ``config.sweeps`` — then writes ``metrics.json``
    (seed-determined values only), ``timing.json``, ``report.md`` and the plots, and prints the report.
    Runs take seconds to minutes, so there are no checkpoints and ``interrupt`` is ignored."""
    del interrupt
    unknown = set(config.methods) - set(SPECS)
    if unknown or not config.methods or not config.seeds or config.num_tasks < 2:
        raise ValueError(
            f"need methods from {tuple(SPECS)}, at least one seed and two tasks; got methods "
            f"{config.methods}, seeds {config.seeds}, num_tasks {config.num_tasks}"
        )
    base = {"num_tasks": config.num_tasks, "width": config.width, "budget": config.budget}
    runs: dict[str, dict[str, Any]] = {method: {} for method in config.methods}
    sweeps: dict[str, dict[str, dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for seed in config.seeds:
        tasks = Tasks(config, seed)
        for method in config.methods:
            started = time.perf_counter()
            runs[method][str(seed)] = run_sequence(config, method, seed, tasks, **base)
            seconds[f"{method}-seed{seed}"] = time.perf_counter() - started
            if config.progress:
                print(f"  {method} seed {seed}: {seconds[f'{method}-seed{seed}']:.1f} s", flush=True)
        if config.sweeps:
            for axis, value, setting in sweep_cells(config):
                for method in config.sweep_methods:
                    started = time.perf_counter()
                    result = run_sequence(config, method, seed, tasks, **setting)
                    cell = sweeps.setdefault(axis, {}).setdefault(str(value), {}).setdefault(method, {})
                    cell[str(seed)] = result["metrics"]
                    seconds[f"sweep-{axis}={value}-{method}-seed{seed}"] = time.perf_counter() - started
    metrics = powerlaw_report.summarise(config, runs, sweeps)
    timing = {"per_run": seconds, "total": float(sum(seconds.values()))}
    runner.write_outputs(run_dir, metrics, timing, powerlaw_report.report(config, metrics, timing))
    powerlaw_report.plot(config, metrics, run_dir)
    return metrics

"""One method's run through the permuted task sequence of ``powerlaw_rehearsal``, phase by phase on
``unlearnx.train.loop``, resumable after a stop or a kill at any step.

A method is a spec ``(kind, exponent, penalty)``: the rehearsal schedule (``"none"`` for no rehearsal) with
its exponent, and the penalty (``None``, ``"ewc"``, ``"online_ewc"`` or ``"si"``). Between phases a *carry*
is handed on: the variables, the global step, the replay buffer (rehearsal only) and the penalty state
(penalties only); it is checkpointed with the phase logs (rows of R, rehearsal counts, forward facilitation)
after the first phase and then every :data:`CARRY_SECONDS` (see :func:`run_sequence`).
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import powerlaw_environment, report, runner
from unlearnx import checkpoint, continual, data, eval, fisher, models, train

if TYPE_CHECKING:
    from experiments.powerlaw_rehearsal import Config, Tasks

Spec = tuple[str, float, str | None]
LOGS = ("R", "counts", "replayed", "steps_to_threshold", "aulc", "first_epoch_acc")
#: The carry is saved after the first phase and then at most this often (each phase's loop also saves its
#: end, so a rerun replays the phases after the carry from those checkpoints instead of retraining them).
CARRY_SECONDS = 60.0


@functools.cache
def make_optimizer(penalty: str | None, lr: float, strength: float, decay: float, si: tuple[float, float]):
    """``named_chain(("penalty", …), ("adam", adam(lr)))``, or plain Adam without a penalty; cached, so
    compiled steps are reused across sequences."""
    adam = optax.adam(lr)
    if penalty is None:
        return adam
    transforms = {
        "ewc": lambda: continual.ewc([], [], strength),
        "online_ewc": lambda: continual.online_ewc(strength, decay),
        "si": lambda: continual.synaptic_intelligence(*si),
    }
    if penalty not in transforms:
        raise ValueError(f"unknown penalty {penalty!r}")
    return optax.named_chain(("penalty", transforms[penalty]()), ("adam", adam))


def _optimizer(config: Config, penalty: str | None):
    si = (config.si_strength, config.si_damping)
    return make_optimizer(penalty, config.lr, config.ewc_strength, config.online_decay, si)


@functools.cache
def _probe_fn(model):
    """Jitted accuracy of ``model`` on one probe set."""

    def probe(variables, x, y):
        logits = model.apply(variables, x, train=False)
        return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))

    return jax.jit(probe)


_buffer_add = jax.jit(continual.buffer_add)


def evaluate_all(model, variables, tasks: Tasks, num_tasks: int) -> np.ndarray:
    """Test accuracy on every task, one row of R."""
    row = []
    for task in range(num_tasks):
        test = tasks.test(task)
        row.append(eval.accuracy(train.predict(model, variables, test["x"]), test["y"]))
    return np.asarray(row)


@functools.cache
def _loss_fn(model):
    """One loss function per model, so ``fisher.diagonal`` compiles once."""

    def loss_fn(params, batch):
        return train.example_losses(model.apply({"params": params}, batch["x"], train=False), batch)

    return loss_fn


def _fisher(model, variables, arrays: dict[str, np.ndarray], examples: int) -> Any:
    """The empirical Fisher diagonal (labels from the data) on the task's first ``examples`` examples, the
    model in eval mode (BatchNorm with its running statistics, no dropout)."""
    subset = {k: v[:examples] for k, v in arrays.items()}
    params = variables["params"]
    if model.has_batch_stats:
        stats = variables["batch_stats"]

        def loss_fn(params, batch):
            logits = model.apply({"params": params, "batch_stats": stats}, batch["x"], train=False)
            return train.example_losses(logits, batch)
    else:
        loss_fn = _loss_fn(model)
    return fisher.diagonal(loss_fn, params, data.batches(subset, 256), estimator="empirical")


@functools.cache
def _mlp(input_shape, num_classes: int, hidden: tuple[int, ...], dropout: float, batch_norm: bool):
    """One model object per MLP architecture, so compiled steps are reused across sequences."""
    return models.mlp(input_shape, num_classes, hidden=hidden, dropout=dropout, batch_norm=batch_norm)


def build_model(config: Config, input_shape, num_classes: int, width: int):
    """``runner.build_model`` for the 2-layer plain MLP (and other models), else the configured MLP:
    ``hidden_layers`` × ``width`` with BatchNorm / dropout."""
    plain = config.hidden_layers == 2 and not config.batch_norm and not config.dropout
    if config.model != "mlp" or plain:
        return runner.build_model(config.model, input_shape, num_classes, width, ())
    hidden = (width,) * config.hidden_layers
    return _mlp(tuple(input_shape), num_classes, hidden, float(config.dropout), bool(config.batch_norm))


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


def phase_data(
    config: Config,
    spec: Spec,
    carry,
    tasks: Tasks,
    *,
    seed: int,
    phase: int,
    budget: int,
    num_tasks: int,
    ratio: float | None = None,
):
    """Task ``phase``'s training set with the rehearsed examples appended, and the count per past task
    (count-matrix mode: N[j, phase] examples of every task j ≤ phase, :mod:`.powerlaw_environment`)."""
    if config.new_count is not None:
        where = {"seed": seed, "phase": phase, "num_tasks": num_tasks, "ratio": ratio}
        return powerlaw_environment.phase_arrays(config, spec, tasks, **where)
    kind, exponent, _ = spec
    arrays = tasks.train(phase)
    if kind == "none" or phase == 0:
        return arrays, [0] * phase
    counts = continual.rehearsal_counts(
        kind,
        current_task=phase,
        last_seen=np.arange(phase),
        budget=budget,
        exponent=exponent,
        rate=config.rate,
    )
    extra = _rehearsal_set(carry["buffer"], np.asarray(counts), seed, phase)
    return {k: np.concatenate([arrays[k], extra[k]]) for k in arrays}, [int(c) for c in counts]


def train_phase(
    config: Config, model, spec: Spec, carry, tasks: Tasks, arrays, *, seed, phase, name, directory
):
    """Task ``phase`` on ``train.loop`` from ``carry``: ``(state, probe curve, first-epoch test accuracy)``.

    Each step also measures the probe accuracy (the facilitation curve, kept in the records); the record of
    the first epoch adds the new task's test accuracy."""
    optimizer = _optimizer(config, spec[2])
    opt_state = optimizer.init(carry["variables"]["params"])
    if "penalty" in carry:  # carried across phases (addressed by its type name); Adam starts afresh
        opt_state = optax.tree.set(opt_state, **{type(carry["penalty"]).__name__: carry["penalty"]})
    rng = jax.random.fold_in(jax.random.key(seed), 1)
    state = train.TrainState(carry["step"], carry["variables"], opt_state, rng)
    train_step, probe = train.make_train_step(model, optimizer), _probe_fn(model)
    own, test = tasks.train(phase), tasks.test(phase)
    probe_x, probe_y = jnp.asarray(own["x"][: config.probe_size]), jnp.asarray(own["y"][: config.probe_size])

    def step(state, batch):
        state, metrics = train_step(state, batch)
        return state, {**metrics, "probe": probe(state.variables, probe_x, probe_y)}

    sampler = data.EpochBatches(
        arrays, config.batch_size, seed=seed, drop_remainder=True, epoch_offset=phase * config.epochs
    )

    def on_interval(done, state, step_metrics):
        record = {"probe_curve": np.asarray(step_metrics["probe"]).tolist()}
        if done == sampler.per_epoch:
            predicted = train.predict(model, state.variables, test["x"])
            record["first_epoch_acc"] = eval.accuracy(predicted, test["y"])
        return record

    seconds = config.checkpoint_seconds
    state, history = train.loop(
        step,
        state,
        sampler,
        config.epochs * sampler.per_epoch,
        name=name,
        interval=sampler.per_epoch,
        on_interval=on_interval,
        checkpoint_dir=directory,
        checkpoint_policy=None if seconds is None else checkpoint.interval_policy(seconds=seconds),
        progress=config.progress,
    )
    curve = np.asarray([value for record in history for value in record["probe_curve"]], np.float32)
    first_epoch = next(record["first_epoch_acc"] for record in history if "first_epoch_acc" in record)
    return state, curve, first_epoch


def consolidate(config: Config, model, spec: Spec, carry, state, tasks: Tasks, *, seed: int, phase: int):
    """The carry past task ``phase``: its variables and step, the consolidated penalty state and the task
    added to the replay memory."""
    penalty = spec[2]
    params = state.variables["params"]
    carry = {**carry, "variables": state.variables, "step": state.step}
    if penalty in ("ewc", "online_ewc"):
        task_fisher = _fisher(model, state.variables, tasks.train(phase), config.fisher_examples)
        if penalty == "ewc":  # one (F, θ*) slot per task, filled in order
            old = carry["penalty"]
            fishers = (*old.fishers[:phase], task_fisher, *old.fishers[phase + 1 :])
            anchors = (*old.anchors[:phase], params, *old.anchors[phase + 1 :])
            carry["penalty"] = continual.EwcState(fishers, anchors)
        else:
            consolidated = continual.consolidate_online_ewc(state.opt_state, task_fisher, params)
            carry["penalty"] = optax.tree.get(consolidated, "penalty")
    elif penalty == "si":
        carry["penalty"] = optax.tree.get(continual.consolidate_si(state.opt_state, params), "penalty")
    if "buffer" in carry:
        own = tasks.train(phase)
        key = jax.random.fold_in(jax.random.key(seed), 1000 + phase)
        carry["buffer"] = _buffer_add(carry["buffer"], phase, {"x": own["x"], "y": own["y"]}, key)
    return carry


def initial_carry(config: Config, model, spec: Spec, tasks: Tasks, *, seed: int, num_tasks: int):
    """What phase 0 starts from: the seed's initialisation, step 0, empty memories, the fresh penalty state.

    EWC keeps one (F, θ*) per task in a fixed-length list: tasks not yet learned have F = 0, which adds
    nothing to the gradient and keeps the optimizer state's structure (so the step compiles once)."""
    kind, _, penalty = spec
    variables = model.init(jax.random.key(seed))
    carry = {"variables": variables, "step": jnp.asarray(0, jnp.int32)}
    if kind != "none" and config.new_count is None:  # count-matrix mode replays from the training splits
        example = {"x": tasks.train(0)["x"][0], "y": tasks.train(0)["y"][0]}
        carry["buffer"] = continual.buffer_init(num_tasks, config.memory_size, example)
    if penalty == "ewc":
        zeros = (jax.tree.map(jnp.zeros_like, variables["params"]),) * num_tasks
        carry["penalty"] = continual.EwcState(zeros, zeros)
    elif penalty is not None:
        carry["penalty"] = optax.tree.get(_optimizer(config, penalty).init(variables["params"]), "penalty")
    return carry


def run_sequence(
    config: Config,
    spec: Spec,
    seed: int,
    tasks: Tasks,
    *,
    num_tasks,
    width,
    budget,
    directory,
    name,
    ratio: float | None = None,
) -> dict[str, Any]:
    """Trains the method ``spec`` through ``num_tasks`` tasks; R, b̄, the per-phase rehearsal counts and the
    forward facilitation measurements.

    Phase k trains as the loop ``{name}-task{k}``, checkpointed in ``directory/task{k}`` (always at its end).
    The carry and the logs are checkpointed in ``directory/carry`` after phase 0 and then at most every
    :data:`CARRY_SECONDS`, and the phases' own checkpoints up to there are deleted. A rerun with the same
    ``directory`` restores the carry and replays the phases after it from their final checkpoints (the same
    state, so the same consolidation and logs), then resumes the stopped phase where it stopped."""
    model = build_model(config, tasks.input_shape, tasks.num_classes, width)
    carry = initial_carry(config, model, spec, tasks, seed=seed, num_tasks=num_tasks)
    random_acc = evaluate_all(model, carry["variables"], tasks, num_tasks)
    logs = {key: [] for key in LOGS}
    policy = checkpoint.interval_policy(seconds=CARRY_SECONDS)
    with checkpoint.Checkpointer(os.path.join(directory, "carry"), policy=policy) as between:
        if between.latest_step() is not None:
            carry, logs = between.restore(carry)
        for phase in range(len(logs["R"]), num_tasks):
            where = {"seed": seed, "phase": phase, "budget": budget, "num_tasks": num_tasks, "ratio": ratio}
            arrays, counts = phase_data(config, spec, carry, tasks, **where)
            where = {"seed": seed, "phase": phase, "name": f"{name}-task{phase}"}
            where["directory"] = os.path.join(directory, f"task{phase}")
            state, curve, first_epoch = train_phase(config, model, spec, carry, tasks, arrays, **where)
            if not report.finite(state.variables):  # diverged: neither consolidated nor trained further
                logs["R"] += [[float("nan")] * num_tasks] * (num_tasks - phase)
                logs.update({key: logs[key] + [None] * (num_tasks - phase) for key in LOGS[1:]})
                break
            carry = consolidate(config, model, spec, carry, state, tasks, seed=seed, phase=phase)
            reached = np.nonzero(curve >= config.threshold)[0]
            logs["R"].append(evaluate_all(model, carry["variables"], tasks, num_tasks).tolist())
            logs["counts"].append(counts)
            logs["replayed"].append(int(sum(counts)))
            logs["steps_to_threshold"].append(int(reached[0]) + 1 if reached.size else None)
            logs["aulc"].append(float(curve.mean()))
            logs["first_epoch_acc"].append(first_epoch)
            if phase + 1 < num_tasks and between.should_save(phase + 1):
                between.save(phase + 1, carry, logs)
                for done in range(phase + 1):  # superseded by the carry
                    shutil.rmtree(os.path.join(directory, f"task{done}"), ignore_errors=True)
    matrix = np.asarray(logs["R"])
    return {
        **logs,
        "R": matrix,
        "random_acc": random_acc,
        "metrics": continual.cl_metrics(matrix, random_acc),
        "diverged": not np.isfinite(matrix).all(),  # R is NaN where a model's logits were non-finite
    }

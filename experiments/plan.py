"""``--plan``: the training loops of each experiment's config as :class:`unlearnx.train.Phase` objects,
priced by :func:`unlearnx.train.plan` without reading data (``data.describe`` gives the shapes; the
generated worlds are generated, as they are small)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from experiments import runner
from unlearnx import data, erase, models, train
from unlearnx import testbed as testbeds
from unlearnx.train import Phase, supervised_phase

__all__ = ["PLANS"]


def _classifier(config: Any, model_name: str, info: data.DatasetInfo, width: int) -> models.Model:
    channels = tuple(getattr(config, "channels", ()))
    return runner.build_model(model_name, info.input_shape, info.num_classes, width, channels)


def _ssd_forget(config: Any) -> list[Phase]:
    """The six trained phases; the unlearning sets are sized from the class count (D_f ≈ N / C)."""
    from experiments import ssd_phases

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
    for phase in ssd_phases.PHASES:
        opt, epochs, batch_size = ssd_phases.phase_optimizer(config, phase, sizes[phase])
        repeats = len(config.seeds) if phase == "original" else runs
        steps = epochs * max(sizes[phase] // batch_size, 1)
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
    """Every task phase of every (method, seed) sequence, Adam (the penalties' element-wise terms are left
    out of the FLOPs): the task's examples plus B replayed ones, or in count-matrix mode the column sums of
    each run's N (budgeted methods once per replay ratio)."""
    from experiments import powerlaw_environment, powerlaw_rehearsal, powerlaw_sequence

    info = data.describe(config.dataset, config.train_split)
    shape = tuple(info.input_shape)
    if config.pad_to is not None:
        shape = (config.pad_to, config.pad_to, *shape[2:])
    model = powerlaw_sequence.build_model(config, shape, info.num_classes, config.width)
    optimizer = optax.adam(config.lr)
    if config.new_count is None:
        task = info.size if config.train_examples is None else min(info.size, config.train_examples)
        steps = config.epochs * ((task + config.budget) // config.batch_size) * config.num_tasks
        name, repeats = "task phases", len(config.methods) * len(config.seeds)
    else:
        specs = powerlaw_rehearsal.ENV_SPECS
        steps = 0
        for _, method, ratio in powerlaw_environment.jobs(config, specs):
            counts = powerlaw_environment.matrix(config, specs[method], config.num_tasks, ratio)
            steps += config.epochs * int(np.sum(-(-counts.sum(axis=0) // config.batch_size)))
        name, repeats = "task phases (every run of one seed)", len(config.seeds)
    return [supervised_phase(name, model, optimizer, shape, config.batch_size, steps, repeats=repeats)]


def _restor_recovery(config: Any) -> list[Phase]:
    """θ_clean, θ_c per k (to its epoch cap) and every gradient unlearning run per k (SSD trains nothing)."""
    from experiments import restor_recovery, restor_world

    s = restor_world.build(config)
    lm = {"loss": train.next_token_losses, "input_dtype": jnp.int32}
    length, batch = s.corpus["x"].shape[1], config.batch_size
    phases = [supervised_phase("clean", s.model, optax.adam(config.clean_lr), (length,), batch,
                               config.clean_epochs * max(len(s.corpus["x"]) // batch, 1), **lm)]  # fmt: skip
    for k, forget in s.forget_sets.items():
        steps = config.corrupt_max_epochs * math.ceil(len(forget.arrays["x"]) / batch)
        phases.append(supervised_phase(f"corrupt_k{k}", s.model, optax.adam(config.corrupt_lr), (length,),
                                       batch, steps, **lm))  # fmt: skip
    size = min(config.unlearn_batch_size, min(len(f.arrays["x"]) for f in s.forget_sets.values()))
    tokens = jax.ShapeDtypeStruct((size, length), jnp.int32)
    pair = {"forget": {"x": tokens, "m": tokens}, "retain": {"x": tokens, "mask": tokens}}
    optimizer = restor_recovery.unlearn_optimizer(s.model, config.unlearn_lr)
    params = jax.eval_shape(s.model.init, jax.random.key(0))
    state = jax.eval_shape(lambda: train.TrainState.create(params, optimizer, jax.random.key(0),
                                                           extra=params["params"]))  # fmt: skip
    for method in dict.fromkeys(job[0] for job in restor_recovery.jobs(config) if job[0] != "ssd"):
        runs = sum(job[0] == method for job in restor_recovery.jobs(config)) * len(config.ks)
        step = restor_recovery.unlearn_step(s.model, "finetune" if method == "task_vector" else method,
                                            config, optimizer)  # fmt: skip
        phases.append(Phase(f"unlearn {method}", step, state, pair, config.unlearn_steps, runs))
    return phases


def _repeated_data(config: Any) -> list[Phase]:
    """Per size, its runs in loops of ``runs_per_loop`` stacked under ``jax.vmap`` (0: one loop)."""
    from experiments import repeated_data

    seeds = [run["seed"] for run in repeated_data.runs(config)]
    stacked = config.runs_per_loop or len(seeds)
    batch = {"x": jax.ShapeDtypeStruct((stacked, config.batch_size, config.seq_len), jnp.int32)}
    phases = []
    for sizes, mlp_ratio in ((config.sizes, config.mlp_ratio), (config.attention_only_sizes, 0)):
        for size in sizes:
            family = repeated_data.family_for(config, size, mlp_ratio)
            init = functools.partial(family.init, seeds[:stacked], repeated_data.parse_size(size)[0])
            loops = math.ceil(len(seeds) / stacked)
            name = repeated_data.loop_name(size, mlp_ratio)
            state = jax.eval_shape(init)
            phases.append(Phase(name, family.step, state, batch, config.steps, loops, 1, config.shard_params,
                                config.microbatches))  # fmt: skip
    return phases


def _rece_erase(config: Any) -> list[Phase]:
    """The testbed: its diffusion training and classifier; Stable Diffusion (``paper``):
    the closed-form UCE + RECE edit of SD v1.4's 32 cross-attention kernels (nothing trains; sampling and
    scoring run in diffusers)."""
    if config.backend == "testbed":
        return _testbed(config.testbed())
    d, length = config.text_width, config.length
    shapes = erase.sd_cross_attention_shapes(d)
    kernels = traverse_util.unflatten_dict({tuple(p.split("/")): jax.ShapeDtypeStruct(shape, jnp.float32)
                                            for p, shape in shapes.items()})  # fmt: skip
    rows = jax.ShapeDtypeStruct((length, d), jnp.float32)
    epochs = max(config.rece_epochs, default=0)

    def edit(state, _):
        keys = state["keys"]
        params = {name: value for name, value in state.items() if name != "keys"}
        return erase.rece(params, keys["concept"], keys["guide"], keys["preserve"], epochs=epochs)

    state = {**kernels, "keys": {"concept": rows, "guide": rows, "preserve": rows}}
    return [Phase(f"UCE + {epochs} RECE rounds (SD v1.4 kernels)", edit, state, {}, 1)]


def _testbed(config: Any) -> list[Phase]:
    """The testbed's joint text-encoder + UNet training and its classifier (ESD-x's few steps, which need
    the trained text encoder, are left out)."""
    bed = testbeds.Testbed(config)
    optimizer = testbeds.make_optimizer(config)

    def create():
        key = jax.random.key(0)
        params = {"text": bed.text_model.init(key)["params"], "unet": bed.unet_model.init(key)["params"]}
        return train.TrainState.create({"params": params}, optimizer, key, extra={"ema": params})

    size, batch = config.image_size, config.batch_size
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((batch, config.length), jnp.int32)
    step = testbeds.diffusion_step(bed, optimizer)
    return [
        Phase("testbed", step, jax.eval_shape(create), {"x": images, "tokens": tokens}, config.steps),
        supervised_phase("testbed_classifier", bed.classifier, optax.adam(1e-3), (size, size, 3), 128,
                         config.classifier_epochs * (config.num_train // 128)),
    ]  # fmt: skip


#: ``plan(config)`` per experiment: the loops ``--plan`` prices.
PLANS: dict[str, Callable[[Any], list[Phase]]] = {
    "ssd_forget": _ssd_forget,
    "granet_sparse": _granet_sparse,
    "powerlaw_rehearsal": _powerlaw_rehearsal,
    "restor_recovery": _restor_recovery,
    "repeated_data": _repeated_data,
    "rece_erase": _rece_erase,
}

"""Closed-form concept erasure (UCE, RECE) on a small text-to-image testbed, against an ESD-x fine-tune.

Reproduces the shape of Gong et al. (RECE, ECCV 2024) at CPU scale: a text encoder and a cross-attention
UNet are trained on captioned coloured shapes (:mod:`unlearnx.testbed`); one concept (a shape, and
in a second run a colour) is erased from the UNet's ``attn2`` key/value kernels by

* UCE: K ← G⁻¹(λK + α C_Eᵀ C_G K + β C_Pᵀ C_P K), G = λI + α C_Eᵀ C_E + β C_Pᵀ C_P
  (α = 1, β = max(0.1, 1/|P|), λ = 0.5);
* RECE with 1–3 epochs: UCE, then per epoch derive c′ = (λ_reg I + Σ K′K′ᵀ)⁻¹ Σ K′Kᵀ c and erase it
  (α = 1, β = 0.1, λ = 0.1, λ_reg = 0.1 as for objects);
* ESD-x: fine-tune only the attn2 to_k/to_v kernels so ε(x_t, c) → ε*(x_t, ∅) − η[ε*(x_t, c) − ε*(x_t, ∅)].

Keys: C_E = the text-encoder rows (all L, with BOS/EOS/padding) of the bare concept prompt (``"circle"``);
C_G = the empty prompt's rows; C_P = those rows plus the bare prompts of the other shapes (or colours).

Metrics (a shape × colour CNN trained on real images labels every DDIM sample): erased rate (samples of
``"a <colour> circle"`` still classified circle), preservation accuracy (prompted shape on the other shapes'
prompts; for colour erasure the prompted colour on the other colours' prompts), ΔKV (relative change of the
other prompts' cross-attention key/value projections), attack success rate of the RECE-derived embedding
c′ of the edited model fed directly as conditioning, of the c′ derived against the UCE edit (the embedding
RECE's first round erases; in the UCE row it is the same embedding under other sampling noise), and of a
gradient attack (Adam on a free embedding so the edited model's ε matches the original's on the concept
prompt), and the edit's wall time.

Training runs on :func:`unlearnx.train.loop`: the testbed (loops ``testbed``, ``testbed_classifier``;
checkpoints in its cache) and ESD-x (loop ``esd_x_<concept>``; ``run_dir/checkpoints``). All else follows
from the config and the testbed, so ``--resume`` after a kill reproduces ``metrics.json`` byte for byte.

Presets: ``smoke`` (seconds; tests), ``quick`` (testbed trained in ≤ 15 min on 2 CPU cores, cached),
``paper`` (an SD v1.x UNet file edited by the official RECE pipeline, :mod:`experiments.rece_paper`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import rece_paper, rece_report, report, runner
from unlearnx import diffusion, erase, parallel, train, tree
from unlearnx import eval as metrics_lib
from unlearnx import testbed as testbeds

NAME = "rece_erase"


@dataclasses.dataclass(frozen=True)
class Config(testbeds.TestbedConfig):
    """The testbed (inherited fields) plus the erasure study."""

    concepts: tuple[str, ...] = ("circle", "red")  # each a shape or a colour of the testbed
    samples_per_prompt: int = 8
    ddim_steps: int = 25
    guidance_scale: float = 5.0
    uce_erase_scale: float = 1.0
    uce_preserve_scale: float | None = None  # None: max(0.1, 1/|P|) (UCE 2023)
    uce_lamb: float = 0.5
    rece_epochs: tuple[int, ...] = (1, 2, 3)
    rece_reg: float = 0.1
    round_erase_scale: float = 1.0
    round_preserve_scale: float = 0.1
    round_lamb: float = 0.1
    esd: bool = True
    esd_steps: int = 100
    esd_lr: float = 1e-3
    esd_eta: float = 1.0
    esd_batch_size: int = 32
    attack_steps: int = 40
    attack_lr: float = 0.05
    attack_batch_size: int = 16
    cache_dir: str | None = None  # None: <out>/rece_erase/testbed_cache (shared by reruns)
    backend: str = "testbed"  # "sd-v1.4" (paper preset): a diffusers UNet file, experiments.rece_paper
    unet_path: str | None = None  # sd-v1.4: the UNet's .safetensors
    states_path: str | None = None  # sd-v1.4: the prompts' CLIP states (.npz)
    progress: bool = True

    def __post_init__(self):
        if not self.concepts:
            raise ValueError("concepts is empty")
        for name in self.concepts if self.backend == "testbed" else ():  # the paper's are not the testbed's
            testbeds.concept(self, name)

    def testbed(self) -> testbeds.TestbedConfig:
        names = [f.name for f in dataclasses.fields(testbeds.TestbedConfig)]
        return testbeds.TestbedConfig(**{name: getattr(self, name) for name in names})


PRESETS: dict[str, Config] = {
    "smoke": Config(
        num_train=512, channels=(8, 16), attention=(False, True), text_width=16, text_layers=1, steps=30,
        batch_size=16, warmup=5, classifier_epochs=1, samples_per_prompt=1, ddim_steps=2, rece_epochs=(1, 2),
        esd_steps=2, esd_batch_size=4, attack_steps=2, attack_batch_size=4, progress=False,
    ),
    "quick": Config(),
    "paper": Config(
        backend="sd-v1.4", image_size=512, length=77, text_width=768, concepts=("nudity",),
        samples_per_prompt=1, ddim_steps=50, guidance_scale=7.5, uce_preserve_scale=1.0, esd_steps=1000,
        esd_lr=1e-5,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Study:
    """What every concept and method shares: the testbed, its original UNet parameters, the evaluation
    prompts, the keys, the run's logger, and the jitted ESD-x step and gradient attack (compiled once)."""

    config: Config
    run_dir: str
    testbed: testbeds.Testbed
    original: Any
    logger: train.MetricLogger
    grid: testbeds.PromptGrid
    keys: dict[str, jax.Array]
    esd_step: Callable
    attack: Callable


def _study(config: Config, run_dir: str) -> _Study:
    cache = config.cache_dir or os.path.join(os.path.dirname(os.path.abspath(run_dir)), "testbed_cache")
    logger = train.MetricLogger(os.path.join(run_dir, "train_log.jsonl"))
    testbed = testbeds.build(config.testbed(), cache, progress=config.progress, logger=logger)
    original = testbed.unet_variables["params"]
    keys = jax.random.split(jax.random.key(config.seed + 7), 4)
    keys = dict(zip(("sample", "attack_sample", "attack", "esd"), keys, strict=True))
    grid = testbed.prompt_grid(config.samples_per_prompt)
    esd_step, attack = _esd_step(testbed, config), _gradient_attack(testbed, config, original)
    return _Study(config, run_dir, testbed, original, logger, grid, keys, esd_step, attack)


def _sample(study: _Study, unet_params, contexts, key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DDIM samples of ``contexts`` and their predicted (shape, colour)."""
    config = study.config
    options = {"num_steps": config.ddim_steps, "guidance_scale": config.guidance_scale}
    images = study.testbed.sample(unet_params, contexts, key, **options)
    return images, *study.testbed.classify(images)


def _selected(params) -> list:
    flags = dict(tree.leaves_with_paths(tree.select(params, erase.cross_attention_kv)))
    return [leaf for path, leaf in tree.leaves_with_paths(params) if flags[path]]


def _esd_step(testbed: testbeds.Testbed, config: Config) -> Callable:
    """The jitted ESD-x step ``(state, {"x0"}, frozen, concept_keys) -> (state, {"loss"})``: Adam on the
    attn2 to_k/to_v kernels only (the other gradients and updates are zeroed), noise from
    ``fold_in(state.rng, state.step)``."""
    schedule, null = testbed.schedule, testbed.embed("")
    eps = lambda params, xt, t, context: testbeds.eps_function(testbed.unet_model, params)(xt, t, context)
    optimizer = optax.adam(config.esd_lr)

    def esd_loss(params, frozen, x0, concept_keys, rng):
        t_key, noise_key = jax.random.split(rng)
        t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_timesteps)
        xt = diffusion.q_sample(schedule, x0, t, jax.random.normal(noise_key, x0.shape))
        eps_c, eps_null = eps(frozen, xt, t, concept_keys), eps(frozen, xt, t, null)
        target = jax.lax.stop_gradient(eps_null - config.esd_eta * (eps_c - eps_null))
        return jnp.mean(jnp.square(eps(params, xt, t, concept_keys) - target))

    @jax.jit
    def step(state: train.TrainState, batch, frozen, concept_keys):
        params = state.variables["params"]
        flags = tree.select(params, erase.cross_attention_kv)
        rng = jax.random.fold_in(state.rng, state.step)
        loss, grads = jax.value_and_grad(esd_loss)(params, frozen, batch["x0"], concept_keys, rng)
        grads = jax.tree.map(lambda g, f: g if f else jnp.zeros_like(g), grads, flags)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        updates = jax.tree.map(lambda u, f: u if f else jnp.zeros_like(u), updates, flags)
        variables = {"params": optax.apply_updates(params, updates)}
        return state._replace(step=state.step + 1, variables=variables, opt_state=opt_state), {"loss": loss}

    return step


def _gradient_attack(testbed: testbeds.Testbed, config: Config, original) -> Callable:
    """The jitted gradient attack ``(edited, concept_keys, key) -> C*``: from the concept's rows,
    ``attack_steps`` Adam steps (one ``lax.scan``) on mean ‖ε_edited(x_t, t, C*) − ε_original(x_t, t, c)‖²
    over fresh x_t ~ N(0, I) and t (step i draws from ``fold_in(key, i)``)."""
    eps = lambda params, xt, t, context: testbeds.eps_function(testbed.unet_model, params)(xt, t, context)
    optimizer = optax.adam(config.attack_lr)
    schedule, size, batch = testbed.schedule, config.image_size, config.attack_batch_size

    def attack_loss(embedding, edited, concept_keys, rng):
        t_key, x_key = jax.random.split(rng)
        t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps)
        xt = jax.random.normal(x_key, (batch, size, size, 3))
        target = jax.lax.stop_gradient(eps(original, xt, t, concept_keys))
        return jnp.mean(jnp.square(eps(edited, xt, t, embedding) - target))

    @jax.jit
    def attack(edited, concept_keys, key):
        def body(carry, index):
            embedding, opt_state = carry
            grads = jax.grad(attack_loss)(embedding, edited, concept_keys, jax.random.fold_in(key, index))
            updates, opt_state = optimizer.update(grads, opt_state, embedding)
            return (optax.apply_updates(embedding, updates), opt_state), None

        start = (concept_keys, optimizer.init(concept_keys))
        (embedding, _), _ = jax.lax.scan(body, start, jnp.arange(config.attack_steps))
        return embedding

    return attack


def esd_x(study: _Study, concept: testbeds.Concept, concept_keys, *, warmup: bool = False):
    """ESD-x: fine-tune the attn2 to_k/to_v kernels so ε(x_t, c) matches the negatively guided
    ε*(x_t, ∅) − η[ε*(x_t, c) − ε*(x_t, ∅)] of the frozen original, on noised training images of the
    concept (ESD samples x_t from the model itself; real images are the cheaper stand-in here); step i's
    batch is the i-th draw of ``default_rng((seed, label, is_shape))``. The loop ``esd_x_<concept>``
    checkpoints in ``run_dir/checkpoints/esd_x_<concept>``; ``warmup`` runs 2 steps without checkpoints or
    logs, to compile the step outside the timing. Returns ``(params, seconds of the loop's steps)``."""
    config, data = study.config, study.testbed.data
    member = np.flatnonzero((data.shape if concept.kind == "shape" else data.colour) == concept.label)
    rng = np.random.default_rng((config.seed, concept.label, concept.kind == "shape"))
    steps = 2 if warmup else config.esd_steps
    chosen = [rng.choice(member, config.esd_batch_size) for _ in range(steps)]
    frozen, concept_keys = parallel.replicate((study.original, concept_keys), parallel.data_mesh())
    name = f"esd_x_{concept.name}"
    state, history = train.loop(
        lambda state, batch: study.esd_step(state, batch, frozen, concept_keys),
        train.TrainState.create({"params": study.original}, optax.adam(config.esd_lr), study.keys["esd"]),
        lambda index: {"x0": data.images[chosen[index]] * 2.0 - 1.0},
        steps,
        name=f"{name}_warmup" if warmup else name,
        interval=25,  # steps per logged record
        checkpoint_dir=None if warmup else os.path.join(study.run_dir, "checkpoints", name),
        logger=None if warmup else study.logger,
        progress=config.progress and not warmup,
    )
    seconds = sum(record["seconds"] for record in history)
    return testbeds.local_arrays(state.variables["params"]), seconds


def _rece_settings(config: Config, preserve_scale: float) -> dict[str, float]:
    """The keyword arguments of :func:`unlearnx.erase.rece` but ``epochs``: the initial UCE edit's α, β
    (``preserve_scale``) and λ, the derivation's λ_reg and each round's α, β and λ."""
    rounds = ("round_erase_scale", "round_preserve_scale", "round_lamb")
    uce = {"erase_scale": config.uce_erase_scale, "preserve_scale": preserve_scale, "lamb": config.uce_lamb}
    return {"reg": config.rece_reg, **{name: getattr(config, name) for name in rounds}, **uce}


@functools.cache
def _edit_fn(epochs: int, settings: tuple[tuple[str, float], ...]):
    """The jitted UCE (``epochs == 0``) or RECE edit ``(params, concept, guide, preserve, initial) -> params``
    (``initial``: the initial edit's concept and guide rows), one per setting, so concepts with equally many
    preserve prompts (and reruns) reuse one compilation."""
    edit = functools.partial(erase.rece, epochs=epochs, **dict(settings))

    def edited(params, concept, guide, preserve, initial):
        rows, targets = initial
        initial = {"initial_concept_keys": rows, "initial_guide_keys": targets}
        return edit(params, concept, guide, preserve, **initial)[0]

    return jax.jit(edited)


def _edits(study: _Study, concept: testbeds.Concept, keys: tuple, beta: float) -> dict[str, tuple]:
    """Every method's edited UNet parameters and edit seconds (``keys``: concept, guide, preserve rows).

    As in the official pipeline, the initial UCE edit erases the concept prompt's rows from its last word
    token on, paired with the guide's (:func:`unlearnx.erase.last_word_rows`, with the prompts' token counts:
    BOS, words, EOS), preserving every row of the preserve prompts; RECE's rounds derive c′ and erase on all
    rows."""
    config = study.config
    counts = (np.count_nonzero(study.testbed.tokens(prompt)) for prompt in (concept.name, ""))  # <pad> is 0
    tokens = dict(zip(("concept_tokens", "guide_tokens"), map(int, counts), strict=True))
    keys = (*keys, erase.last_word_rows(keys[0], keys[1], **tokens))
    settings = tuple(sorted(_rece_settings(config, beta).items()))
    edits: dict[str, tuple[Any, float]] = {"original": (study.original, 0.0)}
    for epochs in (0, *config.rece_epochs):
        jitted = _edit_fn(epochs, settings)
        jitted(study.original, *keys)  # compile outside the timing
        edits["uce" if epochs == 0 else f"rece_{epochs}"] = runner.timed(jitted, study.original, *keys)
    if config.esd:
        esd_x(study, concept, keys[0], warmup=True)
        edits["esd_x"] = esd_x(study, concept, keys[0])
    return edits


def _evaluate(study: _Study, concept, method: str, params, concept_keys, samples, c_primes):
    """One method's metrics, gradient-attack seconds and sample grid; ``samples`` are its (images, shape,
    colour) on every prompt, ``c_primes`` the c′ derived against it and the one against the UCE edit."""
    config, grid = study.config, study.grid
    images, shape, colour = samples
    is_shape = concept.kind == "shape"
    prompt_label, predicted = (grid.shape, shape) if is_shape else (grid.colour, colour)
    erase_rows, keep_rows = prompt_label == concept.label, prompt_label != concept.label
    count = config.samples_per_prompt * len(config.colours if is_shape else config.shapes)
    if not report.finite(params):  # a diverged edit (ESD-x) is not scored, attacked or drawn
        blank = np.zeros((len(range(0, 2 * count, config.samples_per_prompt)), *images.shape[1:]))
        return report.diverged(rece_report.METRICS), 0.0, {"samples": np.zeros_like(images), "attack": blank}
    attacked, attack_seconds = runner.timed(study.attack, params, concept_keys, study.keys["attack"])
    embeddings = (c_primes[0], attacked, c_primes[1])
    contexts = jnp.concatenate([jnp.broadcast_to(rows, (count, *rows.shape)) for rows in embeddings])
    attack_images, *attack_labels = _sample(study, params, contexts, study.keys["attack_sample"])
    attack_predicted = attack_labels[0 if is_shape else 1]
    both = (shape == grid.shape) & (colour == grid.colour)
    keep_contexts = grid.contexts[np.flatnonzero(keep_rows)]
    kv_change = (
        0.0 if method == "original" else metrics_lib.kv_output_change(study.original, params, keep_contexts)
    )
    results = {
        "erased_rate": metrics_lib.erased_rate(predicted[erase_rows], concept.label),
        "preserve_acc": metrics_lib.preservation_accuracy(predicted[keep_rows], prompt_label[keep_rows]),
        "preserve_both_acc": float(np.mean(both[keep_rows])),
        "kv_change": kv_change,
        "asr_derived": metrics_lib.attack_success_rate(attack_predicted[:count], concept.label),
        "asr_gradient": metrics_lib.attack_success_rate(attack_predicted[count : 2 * count], concept.label),
        "asr_uce_derived": metrics_lib.attack_success_rate(attack_predicted[2 * count :], concept.label),
    }
    pictures = {"samples": images, "attack": attack_images[: 2 * count : config.samples_per_prompt]}
    return results, attack_seconds, pictures


def erase_concept(study: _Study, name: str, original_samples) -> tuple[dict, dict, dict]:
    """Every method erasing ``name``: the concept's results (kind, label, β, per-method metrics), the
    per-method edit and attack seconds, and the sample grids."""
    config, testbed = study.config, study.testbed
    concept = testbeds.concept(config, name)
    concept_keys, guide_keys = testbed.embed(name), testbed.embed("")
    preserve_keys = jnp.concatenate([guide_keys, *(testbed.embed(other) for other in concept.others)])
    beta = config.uce_preserve_scale
    beta = max(0.1, 1.0 / (1 + len(concept.others))) if beta is None else beta
    edits = _edits(study, concept, (concept_keys, guide_keys, preserve_keys), beta)
    original_kernels = _selected(study.original)

    def derive(params):
        return erase.derive_embedding(_selected(params), original_kernels, concept_keys, reg=config.rece_reg)

    uce_derived = derive(edits["uce"][0])
    results, seconds, grids = {}, {}, {}
    for method, (params, edit_seconds) in edits.items():
        if method == "original":
            samples = original_samples
        else:
            samples = _sample(study, params, study.grid.contexts, study.keys["sample"])
        c_primes = (uce_derived if method == "uce" else derive(params), uce_derived)
        results[method], attack_seconds, grids[method] = _evaluate(
            study, concept, method, params, concept_keys, samples, c_primes
        )
        seconds[method] = {"edit": edit_seconds, "gradient_attack": attack_seconds}
    summary = {"kind": concept.kind, "label": concept.label, "preserve_scale": beta, "metrics": results}
    return summary, seconds, grids


def main(config: Config, run_dir: str) -> dict[str, Any]:
    """Trains (or restores) the testbed, checks its quality gate, erases each concept with every method and
    writes ``metrics.json``, ``timing.json``, ``report.md`` and the sample grids."""
    if config.backend == "sd-v1.4":
        return rece_paper.main(config, run_dir, _rece_settings(config, config.uce_preserve_scale or 1.0))
    if config.backend != "testbed":
        raise ValueError(f"backend must be 'testbed' or 'sd-v1.4', got {config.backend!r}")
    study = _study(config, run_dir)
    original_samples = _sample(study, study.original, study.grid.contexts, study.keys["sample"])
    per_concept = {name: erase_concept(study, name, original_samples) for name in config.concepts}
    study.logger.close()
    metrics = {
        "quality_gate": testbeds.quality_gate(study.grid, *original_samples[1:]),
        "classifier_test_acc": testbeds.held_out(study.testbed, seed=config.seed + 1000),
        "concepts": {name: result[0] for name, result in per_concept.items()},
        "diverged": [
            f"{name}/{method}"
            for name, (result, *_) in per_concept.items()
            for method, m in result["metrics"].items()
            if np.isinf(m["kv_change"])
        ],  # fmt: skip
        "prompts": study.grid.prompts,
        "num_params": {
            "unet": study.testbed.unet_model.num_params(study.testbed.unet_variables),
            "text_encoder": study.testbed.text_model.num_params(study.testbed.text_variables),
        },
    }
    timing = {
        "testbed_train_seconds": study.testbed.train_seconds,
        "concepts": {name: result[1] for name, result in per_concept.items()},
    }
    runner.write_outputs(run_dir, metrics, timing, rece_report.report(config, metrics, timing))
    rece_report.plot(
        config, study.grid.prompts, {name: result[2] for name, result in per_concept.items()}, run_dir
    )
    return metrics

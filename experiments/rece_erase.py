"""Closed-form concept erasure (UCE, RECE) on a small text-to-image testbed, against an ESD-x fine-tune.

Reproduces the shape of Gong et al. (RECE, ECCV 2024) at CPU scale: a text encoder and a cross-attention
UNet are trained on captioned coloured shapes (:mod:`experiments.rece_testbed`); one concept (a shape, and
in a second run a colour) is erased from the UNet's ``attn2`` key/value kernels by

* UCE: K ← G⁻¹(λK + α C_Eᵀ C_G K + β C_Pᵀ C_P K), G = λI + α C_Eᵀ C_E + β C_Pᵀ C_P
  (α = 1, β = max(0.1, 1/|P|), λ = 0.5);
* RECE with 1–3 epochs: UCE, then per epoch derive c′ = (λ_reg I + Σ K′K′ᵀ)⁻¹ Σ K′Kᵀ c and erase it
  (α = 1, β = 0.1, λ = 0.1, λ_reg = 0.1 as for objects);
* ESD-x: fine-tune only the attn2 to_k/to_v kernels so ε(x_t, c) → ε*(x_t, ∅) − η[ε*(x_t, c) − ε*(x_t, ∅)].

Keys: C_E = the text-encoder rows (all L, with BOS/EOS/padding) of the bare concept prompt (``"circle"``);
C_G = the empty prompt's rows; C_P = the empty prompt's rows plus the bare prompts of the other concepts of
the same kind (the other shapes, or the other colours).

Metrics (a shape × colour CNN trained on real images labels every DDIM sample): erased rate (samples of
``"a <colour> circle"`` still classified circle), preservation accuracy (prompted shape on the other shapes'
prompts; for colour erasure the prompted colour on the other colours' prompts), ΔKV (relative change of the
other prompts' cross-attention key/value projections), attack success rate of the RECE-derived embedding
c′ of the edited model fed directly as conditioning, of the c′ derived against the UCE edit (the embedding
RECE's first round erases; in the UCE row it is the same embedding under other sampling noise), and of a
gradient attack (Adam on a free embedding so
the edited model's ε matches the original's on the concept prompt), and the edit's wall time.

Presets: ``smoke`` (seconds; tests), ``quick`` (testbed trained in ≤ 15 min on 2 CPU cores, cached),
``paper`` (SD v1.4; documents the same calls, see :data:`PAPER_NOTES`; not runnable here).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import rece_report, rece_testbed, runner
from unlearnx import diffusion, erase, tree
from unlearnx import eval as metrics_lib
from unlearnx.train import MetricLogger

NAME = "rece_erase"

PAPER_NOTES = """\
Paper scale (SD v1.4, not runnable on CPU): convert the UNet to a Flax tree (diffusers < 0.40
`FlaxUNet2DConditionModel.from_pretrained(..., from_pt=True)`, or transpose each PyTorch linear weight);
its 32 kernels `…/attn2/to_k/kernel`, `…/attn2/to_v/kernel` (768 → 320/640/1280) are exactly what
`unlearnx.erase.cross_attention_kv` selects. Precompute CLIP ViT-L/14 last hidden states ([77, 768], padded
with EOS as in SD) for the concept ("nudity"), the guide " " and the preserve prompts (" "), then call the
same functions as this experiment:
`unlearnx.erase.rece(unet_params, C_nudity, C_space, C_space, epochs=3, reg=0.1, erase_scale=1,
preserve_scale=1, lamb=0.5, round_erase_scale=1, round_preserve_scale=0.1, round_lamb=0.1)`,
`unlearnx.erase.derive_embedding(edited_kernels, original_kernels, C_nudity, reg=0.1)` for the attack, and
`unlearnx.eval.kv_output_change(...)` on COCO prompt embeddings. Sample I2P prompts with 50 steps,
guidance 7.5 at 512² sharded over the accelerator's devices and score with NudeNet (threshold 0.6) outside
jit; objects: Imagenette prompts scored with a torchvision ResNet-50 (spec §5)."""


@dataclasses.dataclass(frozen=True)
class Config(rece_testbed.TestbedConfig):
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
    backend: str = "testbed"  # "sd-v1.4" (paper preset): documented in PAPER_NOTES, not runnable here
    progress: bool = True

    def testbed(self) -> rece_testbed.TestbedConfig:
        names = [f.name for f in dataclasses.fields(rece_testbed.TestbedConfig)]
        return rece_testbed.TestbedConfig(**{name: getattr(self, name) for name in names})


PRESETS: dict[str, Config] = {
    "smoke": Config(
        num_train=512,
        channels=(8, 16),
        attention=(False, True),
        text_width=16,
        text_layers=1,
        steps=30,
        batch_size=16,
        warmup=5,
        classifier_epochs=1,
        samples_per_prompt=1,
        ddim_steps=2,
        rece_epochs=(1, 2),
        esd_steps=2,
        esd_batch_size=4,
        attack_steps=2,
        attack_batch_size=4,
        progress=False,
    ),
    "quick": Config(),
    "paper": Config(
        backend="sd-v1.4",
        image_size=512,
        length=77,
        text_width=768,
        concepts=("nudity",),
        samples_per_prompt=1,
        ddim_steps=50,
        guidance_scale=7.5,
        uce_preserve_scale=1.0,
        rece_epochs=(1, 2, 3),
        esd_steps=1000,
        esd_lr=1e-5,
        attack_steps=40,
    ),
}


@dataclasses.dataclass(frozen=True)
class _Concept:
    """One erased concept: its kind, label, prompts and keys."""

    name: str
    kind: str  # "shape" or "colour"
    label: int
    others: tuple[str, ...]


def _concept(testbed: rece_testbed.Testbed, name: str) -> _Concept:
    config = testbed.config
    if name in config.shapes:
        return _Concept(
            name, "shape", config.shapes.index(name), tuple(s for s in config.shapes if s != name)
        )
    if name in config.colours:
        return _Concept(
            name, "colour", config.colours.index(name), tuple(c for c in config.colours if c != name)
        )
    raise ValueError(f"concept {name!r} is neither a shape {config.shapes} nor a colour {config.colours}")


class _Study:
    """The trained testbed, the fixed evaluation prompts and the sampler shared by every method."""

    def __init__(self, config: Config, run_dir: str):
        self.config = config
        cache = config.cache_dir or os.path.join(os.path.dirname(os.path.abspath(run_dir)), "testbed_cache")
        self.logger = MetricLogger(os.path.join(run_dir, "train_log.jsonl"))
        self.testbed = rece_testbed.build(
            config.testbed(), cache, progress=config.progress, logger=self.logger
        )
        self.original = self.testbed.unet_variables["params"]
        # Every (shape, colour) prompt, samples_per_prompt each; sample i's noise is fixed across methods.
        pairs = [(s, c) for s in range(len(config.shapes)) for c in range(len(config.colours))]
        self.prompts = [f"a {config.colours[c]} {config.shapes[s]}" for s, c in pairs]
        repeat = config.samples_per_prompt
        self.prompt_shape = np.repeat([s for s, _ in pairs], repeat)
        self.prompt_colour = np.repeat([c for _, c in pairs], repeat)
        self.contexts = jnp.repeat(self.testbed.embed(self.prompts), repeat, axis=0)
        keys = jax.random.split(jax.random.key(config.seed + 7), 4)
        self.keys = dict(zip(("sample", "attack_sample", "attack", "esd"), keys, strict=True))

    def sample(self, unet_params, contexts, key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples and their predicted (shape, colour)."""
        images = self.testbed.sample(
            unet_params,
            contexts,
            key,
            num_steps=self.config.ddim_steps,
            guidance_scale=self.config.guidance_scale,
        )
        shape, colour = self.testbed.classify(images)
        return images, shape, colour


def _selected(params) -> list:
    flags = dict(tree.leaves_with_paths(tree.select(params, erase.cross_attention_kv)))
    return [leaf for path, leaf in tree.leaves_with_paths(params) if flags[path]]


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = jax.block_until_ready(fn(*args, **kwargs))
    return result, time.perf_counter() - started


class _Tuners:
    """The jitted ESD-x step and gradient attack, compiled once per study (parameters, keys and images are
    arguments, so every concept and method reuses them)."""

    def __init__(self, study: _Study):
        config, testbed = study.config, study.testbed
        self.study = study
        model, schedule = testbed.unet_model, testbed.schedule
        self.null = testbed.embed("")
        self.flags = tree.select(study.original, erase.cross_attention_kv)
        self.esd_optimizer = optax.adam(config.esd_lr)
        attack_optimizer = optax.adam(config.attack_lr)
        size, batch = config.image_size, config.attack_batch_size

        def eps(params, xt, t, context):
            return model.apply(
                {"params": params}, (xt, t, jnp.broadcast_to(context, (xt.shape[0], *context.shape)))
            )

        def esd_loss(params, frozen, x0, concept_keys, rng):
            t_key, noise_key = jax.random.split(rng)
            t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_timesteps)
            xt = diffusion.q_sample(schedule, x0, t, jax.random.normal(noise_key, x0.shape))
            eps_c, eps_null = eps(frozen, xt, t, concept_keys), eps(frozen, xt, t, self.null)
            target = jax.lax.stop_gradient(eps_null - config.esd_eta * (eps_c - eps_null))
            return jnp.mean(jnp.square(eps(params, xt, t, concept_keys) - target))

        @jax.jit
        def esd_step(params, opt_state, frozen, x0, concept_keys, rng):
            grads = jax.grad(esd_loss)(params, frozen, x0, concept_keys, rng)
            grads = jax.tree.map(lambda g, f: g if f else jnp.zeros_like(g), grads, self.flags)
            updates, opt_state = self.esd_optimizer.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u, f: u if f else jnp.zeros_like(u), updates, self.flags)
            return optax.apply_updates(params, updates), opt_state

        def attack_loss(embedding, edited, concept_keys, rng):
            t_key, x_key = jax.random.split(rng)
            t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps)
            xt = jax.random.normal(x_key, (batch, size, size, 3))
            target = jax.lax.stop_gradient(eps(study.original, xt, t, concept_keys))
            return jnp.mean(jnp.square(eps(edited, xt, t, embedding) - target))

        @jax.jit
        def attack(edited, concept_keys, key):
            def body(carry, index):
                embedding, opt_state = carry
                grads = jax.grad(attack_loss)(embedding, edited, concept_keys, jax.random.fold_in(key, index))
                updates, opt_state = attack_optimizer.update(grads, opt_state, embedding)
                return (optax.apply_updates(embedding, updates), opt_state), None

            start = (concept_keys, attack_optimizer.init(concept_keys))
            (embedding, _), _ = jax.lax.scan(body, start, jnp.arange(config.attack_steps))
            return embedding

        self.esd_step, self.attack = esd_step, attack

    def esd_x(self, concept: _Concept, concept_keys: jax.Array, steps: int | None = None) -> Any:
        """ESD-x: Adam on the attn2 to_k/to_v kernels only, matching ε(x_t, c) to the negatively guided
        ε*(x_t, ∅) − η[ε*(x_t, c) − ε*(x_t, ∅)] of the frozen original, on noised training images of the
        concept (ESD samples x_t from the model itself; real images are the cheaper stand-in here)."""
        config, data = self.study.config, self.study.testbed.data
        member = np.flatnonzero((data.shape if concept.kind == "shape" else data.colour) == concept.label)
        rng = np.random.default_rng((config.seed, concept.label, concept.kind == "shape"))
        frozen = self.study.original
        params, opt_state = frozen, self.esd_optimizer.init(frozen)
        for index in range(config.esd_steps if steps is None else steps):
            x0 = data.images[rng.choice(member, config.esd_batch_size)] * 2.0 - 1.0
            key = jax.random.fold_in(self.study.keys["esd"], index)
            params, opt_state = self.esd_step(params, opt_state, frozen, x0, concept_keys, key)
        return params

    def gradient_attack(self, edited, concept_keys: jax.Array) -> jax.Array:
        """A free embedding C* ∈ R^{L×d}, from the concept's rows, after ``attack_steps`` Adam steps on
        mean ‖ε_edited(x_t, t, C*) − ε_original(x_t, t, c)‖² over fresh random x_t ~ N(0, I) and t."""
        return self.attack(edited, concept_keys, self.study.keys["attack"])


@functools.cache
def _edit_fn(epochs: int, settings: tuple[tuple[str, float], ...]):
    """The jitted UCE (``epochs == 0``) or RECE edit ``(params, concept, guide, preserve) -> params``, one per
    setting, so concepts with equally many preserve prompts (and reruns) reuse one compilation."""
    return jax.jit(
        lambda params, concept, guide, preserve: erase.rece(
            params, concept, guide, preserve, epochs=epochs, **dict(settings)
        )[0]
    )


def erase_concept(study: _Study, tuners: _Tuners, name: str, original_samples) -> dict[str, Any]:
    """Every method erasing ``name``: per-method metrics, edit seconds and sample grids."""
    config, testbed = study.config, study.testbed
    concept = _concept(testbed, name)
    concept_keys = testbed.embed(name)
    guide_keys = testbed.embed("")
    preserve_keys = jnp.concatenate([guide_keys, *(testbed.embed(other) for other in concept.others)])
    preserve_prompts = 1 + len(concept.others)
    beta = config.uce_preserve_scale
    beta = max(0.1, 1.0 / preserve_prompts) if beta is None else beta
    prompt_label = study.prompt_shape if concept.kind == "shape" else study.prompt_colour
    erase_rows, keep_rows = prompt_label == concept.label, prompt_label != concept.label
    keep_contexts = study.contexts[np.flatnonzero(keep_rows)]

    edits: dict[str, tuple[Any, float]] = {"original": (study.original, 0.0)}
    uce_kwargs = {"erase_scale": config.uce_erase_scale, "preserve_scale": beta, "lamb": config.uce_lamb}
    rece_kwargs = {
        "reg": config.rece_reg,
        "round_erase_scale": config.round_erase_scale,
        "round_preserve_scale": config.round_preserve_scale,
        "round_lamb": config.round_lamb,
        **uce_kwargs,
    }
    for epochs in (0, *config.rece_epochs):
        method = "uce" if epochs == 0 else f"rece_{epochs}"
        jitted = _edit_fn(epochs, tuple(sorted(rece_kwargs.items())))
        arguments = (study.original, concept_keys, guide_keys, preserve_keys)
        jitted(*arguments)  # compile outside the timing
        edits[method] = _timed(jitted, *arguments)
    if config.esd:
        tuners.esd_x(concept, concept_keys, steps=2)  # compile (first and later steps) outside the timing
        edits["esd_x"] = _timed(tuners.esd_x, concept, concept_keys)

    attack_count = config.samples_per_prompt * len(
        config.colours if concept.kind == "shape" else config.shapes
    )
    original_kernels = _selected(study.original)
    uce_derived = erase.derive_embedding(
        _selected(edits["uce"][0]), original_kernels, concept_keys, reg=config.rece_reg
    )
    results, seconds, grids = {}, {}, {}
    for method, (params, edit_seconds) in edits.items():
        if method == "original":
            images, shape, colour = original_samples
        else:
            images, shape, colour = study.sample(params, study.contexts, study.keys["sample"])
        predicted = shape if concept.kind == "shape" else colour
        derived = (
            uce_derived
            if method == "uce"
            else erase.derive_embedding(
                _selected(params), original_kernels, concept_keys, reg=config.rece_reg
            )
        )
        attacked, attack_seconds = _timed(tuners.gradient_attack, params, concept_keys)
        attack_contexts = jnp.concatenate(
            [jnp.broadcast_to(rows, (attack_count, *rows.shape)) for rows in (derived, attacked, uce_derived)]
        )
        attack_images, attack_shape, attack_colour = study.sample(
            params, attack_contexts, study.keys["attack_sample"]
        )
        attack_predicted = attack_shape if concept.kind == "shape" else attack_colour
        results[method] = {
            "erased_rate": metrics_lib.erased_rate(predicted[erase_rows], concept.label),
            "preserve_acc": metrics_lib.preservation_accuracy(predicted[keep_rows], prompt_label[keep_rows]),
            "preserve_both_acc": float(
                np.mean((shape == study.prompt_shape)[keep_rows] & (colour == study.prompt_colour)[keep_rows])
            ),
            "kv_change": 0.0
            if method == "original"
            else metrics_lib.kv_output_change(study.original, params, keep_contexts),
            "asr_derived": metrics_lib.attack_success_rate(attack_predicted[:attack_count], concept.label),
            "asr_gradient": metrics_lib.attack_success_rate(
                attack_predicted[attack_count : 2 * attack_count], concept.label
            ),
            "asr_uce_derived": metrics_lib.attack_success_rate(
                attack_predicted[2 * attack_count :], concept.label
            ),
        }
        seconds[method] = {"edit": edit_seconds, "gradient_attack": attack_seconds}
        grids[method] = {
            "samples": images,
            "attack": attack_images[: 2 * attack_count : config.samples_per_prompt],
        }
    return {
        "kind": concept.kind,
        "label": concept.label,
        "preserve_scale": beta,
        "metrics": results,
        "seconds": seconds,
        "grids": grids,
    }


def main(config: Config, run_dir: str, *, interrupt: tuple[str, int] | None = None) -> dict[str, Any]:
    """Trains (or restores) the testbed, checks its quality gate, erases each concept with every method and
    writes ``metrics.json``, ``timing.json``, ``report.md`` and the sample grids."""
    del interrupt  # the only long phase (testbed training) resumes from its orbax cache
    if config.backend != "testbed":
        raise ValueError(
            f"backend {config.backend!r} does not run here; to apply these calls to it:\n{PAPER_NOTES}"
        )
    if not config.concepts:
        raise ValueError("concepts is empty")
    unknown = [name for name in config.concepts if name not in (*config.shapes, *config.colours)]
    if unknown:
        raise ValueError(
            f"concepts {unknown} are neither shapes {config.shapes} nor colours {config.colours}"
        )
    study = _Study(config, run_dir)
    original_samples = study.sample(study.original, study.contexts, study.keys["sample"])
    _, shape, colour = original_samples
    gate = {
        "shape_acc": float(np.mean(shape == study.prompt_shape)),
        "colour_acc": float(np.mean(colour == study.prompt_colour)),
    }
    test = rece_testbed.held_out(study.testbed, seed=config.seed + 1000)
    tuners = _Tuners(study)
    per_concept = {name: erase_concept(study, tuners, name, original_samples) for name in config.concepts}
    metrics = {
        "quality_gate": {**gate, "passed": gate["shape_acc"] >= 0.8 and gate["colour_acc"] >= 0.8},
        "classifier_test_acc": test,
        "concepts": {
            name: {k: v for k, v in result.items() if k not in ("seconds", "grids")}
            for name, result in per_concept.items()
        },
        "prompts": study.prompts,
        "num_params": {
            "unet": study.testbed.unet_model.num_params(study.testbed.unet_variables),
            "text_encoder": study.testbed.text_model.num_params(study.testbed.text_variables),
        },
    }
    timing = {
        "testbed_train_seconds": study.testbed.train_seconds,
        "concepts": {name: result["seconds"] for name, result in per_concept.items()},
    }
    runner.write_outputs(run_dir, metrics, timing, rece_report.report(config, metrics, timing))
    rece_report.plot(config, study.prompts, per_concept, run_dir)
    return metrics

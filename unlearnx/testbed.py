"""A small text-to-image testbed for concept erasure on a CPU: captioned shapes, a text encoder and a
cross-attention UNet (diffusers' ``attn2/to_k``/``to_v`` names, so the :mod:`unlearnx.erase` selectors work
on it as on Stable Diffusion) trained jointly with the DDPM objective, and a shape × colour classifier
that scores samples. The RECE experiment (``experiments/rece_erase.py``) erases shapes and colours from it.

Both models train on :func:`unlearnx.train.loop` (the classifier through :func:`unlearnx.train.fit`) with
their checkpoints under ``cache_dir`` (keyed by the testbed settings): reruns and the erased concepts of one
run share one trained model, and an interrupted training resumes bit for bit. Sampling is DDIM with
classifier-free guidance; the empty caption is the unconditional prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import data, diffusion, models, train
from unlearnx.checkpoint import interval_policy
from unlearnx.data import shapes as shapes_data
from unlearnx.models.text_encoder import text_encoder
from unlearnx.models.unet import unet

__all__ = ["Concept", "PromptGrid", "Testbed", "TestbedConfig", "build", "concept", "diffusion_step"]
__all__ += ["eps_function", "held_out", "local_arrays", "make_optimizer", "quality_gate"]

# Bumped whenever the cached checkpoints change structure, so a cache written by older code is never read
# (2: TrainState with the EMA in ``extra`` and a named optimizer chain, on train.loop / train.fit).
_CACHE_FORMAT = 2
_RECORD_EVERY = 50  # diffusion steps per logged record (mean loss)
_SAVE_SECONDS = 120.0  # minimum wall time between diffusion checkpoints (the last step is always saved)


@dataclasses.dataclass(frozen=True)
class TestbedConfig:
    """Everything that determines the trained testbed (its cache key).

    The defaults (Min-SNR-5 ε loss, batch 32, 3,000 steps) give unedited samples with the prompted shape and
    colour 100% of the time after ~11 min on 2 CPU cores; DDPM's unweighted loss with 1,500 steps of batch 64
    reached only 59% (shape) and 81% (colour), its squares and triangles drawn as blobs.
    """

    image_size: int = 16
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    length: int = 16
    num_train: int = 20_000
    text_width: int = 64
    text_layers: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.998
    p_uncond: float = 0.1
    snr_gamma: float | None = 5.0
    classifier_epochs: int = 4
    seed: int = 0

    def key(self) -> str:
        """The cache key: a hash of the settings and of the cache's checkpoint format."""
        text = json.dumps({"cache_format": _CACHE_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Concept(NamedTuple):
    """One erasable concept of the testbed: a shape or a colour."""

    name: str
    kind: str  # "shape" or "colour"
    label: int  # its index in ``shapes`` or ``colours``
    others: tuple[str, ...]  # the other concepts of the same kind


def concept(config: TestbedConfig, name: str) -> Concept:
    """The shape or colour ``name`` of ``config``.

    Raises:
      ValueError: if ``name`` is neither a shape nor a colour of ``config``.
    """
    for kind, names in (("shape", config.shapes), ("colour", config.colours)):
        if name in names:
            return Concept(name, kind, names.index(name), tuple(other for other in names if other != name))
    raise ValueError(f"concept {name!r} is neither a shape {config.shapes} nor a colour {config.colours}")


class PromptGrid(NamedTuple):
    """Every prompt "a <colour> <shape>" (shape-major), ``repeat`` samples each: the prompts, each sample's
    prompted shape and colour index, and its text-encoder rows ``[N, L, d]``."""

    prompts: list[str]
    shape: np.ndarray
    colour: np.ndarray
    contexts: jax.Array


def _captioned_shapes(config: TestbedConfig, count: int, seed: int) -> shapes_data.CaptionedShapes:
    return shapes_data.captioned_shapes(
        count,
        seed=seed,
        image_size=config.image_size,
        shapes=config.shapes,
        colours=config.colours,
        length=config.length,
    )


def _to_model_range(images: np.ndarray) -> np.ndarray:
    return images * 2.0 - 1.0


class Testbed:
    """A trained testbed: tokenizer, text encoder, UNet (EMA weights), classifier and sampler.

    Attributes:
        config: The settings.
        data: The training set (also the classifier's).
        tokenizer: The caption tokenizer.
        text_model, unet_model, classifier: The pure models.
        text_variables, unet_variables, classifier_variables: Their trained variables.
        schedule: The DDPM schedule (linear β, T = 1000).
        train_seconds: Wall time of training in this process (0 when loaded from the cache).
    """

    def __init__(self, config: TestbedConfig):
        self.config = config
        self.data = _captioned_shapes(config, config.num_train, config.seed)
        self.tokenizer = self.data.tokenizer
        self.text_model = text_encoder(
            self.tokenizer.vocab_size,
            length=config.length,
            width=config.text_width,
            num_layers=config.text_layers,
        )
        self.unet_model = unet(
            image_size=config.image_size,
            channels=config.channels,
            attention=config.attention,
            layers_per_block=config.layers_per_block,
            context_dim=config.text_width,
        )
        self.num_classes = len(config.shapes) * len(config.colours)
        self.classifier = models.cnn(
            (config.image_size, config.image_size, 3), self.num_classes, channels=(32, 64)
        )
        self.schedule = diffusion.linear_schedule(1000)
        self.train_seconds = 0.0
        self.text_variables = self.unet_variables = self.classifier_variables = None

    def tokens(self, prompts: str | Sequence[str]) -> np.ndarray:
        return self.tokenizer.encode(prompts)

    def embed(self, prompts: str | Sequence[str]) -> jax.Array:
        """Text-encoder rows of one prompt (``[L, d]``) or of a list (``[N, L, d]``)."""
        tokens = self.tokens(prompts)
        single = tokens.ndim == 1
        rows = _embed(self.text_model, self.text_variables, jnp.atleast_2d(tokens))
        return rows[0] if single else rows

    def prompt_grid(self, repeat: int) -> PromptGrid:
        """The :class:`PromptGrid` with ``repeat`` samples per prompt."""
        shapes, colours = self.config.shapes, self.config.colours
        pairs = [(s, c) for s in range(len(shapes)) for c in range(len(colours))]
        prompts = [f"a {colours[c]} {shapes[s]}" for s, c in pairs]
        return PromptGrid(
            prompts,
            np.repeat([s for s, _ in pairs], repeat),
            np.repeat([c for _, c in pairs], repeat),
            jnp.repeat(self.embed(prompts), repeat, axis=0),
        )

    def sample(
        self,
        unet_params: Any,
        contexts: jax.Array,
        key: jax.Array,
        *,
        num_steps: int,
        guidance_scale: float,
        batch_size: int = 64,
    ) -> np.ndarray:
        """DDIM samples for each context row block ``[N, L, d]``: images in [0, 1], ``[N, H, W, 3]``.

        Sample i starts from the noise ``normal(fold_in(key, i))``, so the same key gives the same start for
        a prompt under every edited model.
        """
        size = self.config.image_size
        null = self.embed("")
        outputs = []
        for start in range(0, len(contexts), batch_size):
            chunk = contexts[start : start + batch_size]
            count = len(chunk)
            padded = jnp.concatenate([chunk, jnp.repeat(chunk[:1], batch_size - count, axis=0)])
            noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (size, size, 3)))(
                jnp.arange(start, start + batch_size)
            )
            images = _sampler(self.unet_model, num_steps, float(guidance_scale))(
                unet_params, noise, padded, null, self.schedule
            )
            outputs.append(np.asarray(images)[:count])
        return np.clip((np.concatenate(outputs) + 1.0) / 2.0, 0.0, 1.0)

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (shape index, colour index) of images in [0, 1]."""
        joint = np.argmax(train.predict(self.classifier, self.classifier_variables, images), axis=-1)
        return joint // len(self.config.colours), joint % len(self.config.colours)


@functools.cache
def _embed_fn(text_model: models.Model):
    return jax.jit(lambda variables, tokens: text_model.apply(variables, tokens))


def _embed(text_model, variables, tokens):
    return _embed_fn(text_model)(variables, jnp.asarray(tokens))


def eps_function(unet_model: models.Model, unet_params: Any):
    """``eps_fn(x_t, t, context)`` of the UNet with parameters ``unet_params``; one context ``[L, d]`` is
    shared by the whole batch, a ``[B, L, d]`` block gives each example its own."""

    def eps_fn(x, t, context):
        context = jnp.broadcast_to(context, (x.shape[0], *context.shape[-2:]))
        return unet_model.apply({"params": unet_params}, (x, t, context))

    return eps_fn


@functools.cache
def _sampler(unet_model: models.Model, num_steps: int, guidance_scale: float):
    def run(unet_params, noise, contexts, null, schedule):
        eps_fn = eps_function(unet_model, unet_params)
        options = {"num_steps": num_steps, "guidance_scale": guidance_scale, "clip_x0": 1.0}
        return diffusion.ddim_sample(eps_fn, noise, contexts, null, schedule, **options)

    return jax.jit(run)


def make_optimizer(config: TestbedConfig) -> optax.GradientTransformation:
    """Adam with global-norm clipping 1, linear warm-up to ``lr``, then cosine decay to 0.1·lr."""
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.lr, config.warmup),
            optax.cosine_decay_schedule(config.lr, config.steps, 0.1),
        ],
        [config.warmup],
    )
    return optax.named_chain(("clip", optax.clip_by_global_norm(1.0)), ("adam", optax.adam(schedule)))


def diffusion_step(testbed: Testbed, optimizer: optax.GradientTransformation) -> Callable:
    """The jitted joint step ``(state, {"x", "tokens"}) -> (state, {"loss"})``: Min-SNR-γ ε loss with the
    caption dropped to the empty prompt with probability ``p_uncond``, noise from ``fold_in(state.rng,
    state.step)``, then the EMA update of ``state.extra["ema"]`` (decay min(ema_decay, (1+k)/(10+k)))."""
    config = testbed.config
    empty = jnp.asarray(testbed.tokens(""))[None]
    text_model, unet_model, noise_schedule = testbed.text_model, testbed.unet_model, testbed.schedule

    def loss_fn(params, images, tokens, rng):
        context = text_model.apply({"params": params["text"]}, tokens)
        null = text_model.apply({"params": params["text"]}, empty)[0]
        eps_fn = eps_function(unet_model, params["unet"])
        options = {"p_uncond": config.p_uncond, "snr_gamma": config.snr_gamma}
        return diffusion.eps_loss(eps_fn, images, context, null, rng, noise_schedule, **options)

    @jax.jit
    def step(state: train.TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        params = state.variables["params"]
        loss, grads = jax.value_and_grad(loss_fn)(params, batch["x"], batch["tokens"], rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        decay = jnp.minimum(config.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.extra["ema"], params)
        new_state = state._replace(
            step=state.step + 1, variables={"params": params}, opt_state=opt_state, extra={"ema": ema}
        )
        return new_state, {"loss": loss}

    return step


def _train_diffusion(
    testbed: Testbed, directory: str, progress: bool, logger: train.MetricLogger | None = None
) -> tuple[Any, Any]:
    """Joint text-encoder + UNet training (the loop ``"testbed"``); returns the EMA (text, unet) parameters.

    Batches follow :class:`unlearnx.data.EpochBatches` (epoch order ``default_rng((seed, epoch))``, the
    short last batch dropped); checkpoints go to ``directory/diffusion``."""
    config = testbed.config
    keys = jax.random.split(jax.random.key(config.seed), 3)
    params = {
        "text": jax.jit(testbed.text_model.init)(keys[0])["params"],
        "unet": jax.jit(testbed.unet_model.init)(keys[1])["params"],
    }
    optimizer = make_optimizer(config)
    state = train.TrainState.create({"params": params}, optimizer, keys[2], extra={"ema": params})
    arrays = {"x": _to_model_range(testbed.data.images), "tokens": testbed.data.tokens}
    state, _ = train.loop(
        diffusion_step(testbed, optimizer),
        state,
        data.EpochBatches(arrays, config.batch_size, seed=config.seed),
        config.steps,
        name="testbed",
        interval=_RECORD_EVERY,
        checkpoint_dir=os.path.join(directory, "diffusion"),
        checkpoint_policy=interval_policy(seconds=_SAVE_SECONDS),
        logger=logger,
        progress=progress,
    )
    ema = state.extra["ema"]
    return local_arrays(ema["text"]), local_arrays(ema["unet"])


def local_arrays(tree: Any) -> Any:
    """Plain default-device arrays (restored or mesh-replicated arrays carry another sharding, which would
    make every jitted consumer compile twice: once for them and once for jit outputs)."""
    return jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf)), tree)


def _train_classifier(
    testbed: Testbed, directory: str, progress: bool, logger: train.MetricLogger | None = None
) -> Any:
    """The shape × colour CNN on the real training images (``train.fit``, the loop ``"testbed_classifier"``;
    checkpoints in ``directory/classifier``)."""
    config = testbed.config
    arrays = {"x": testbed.data.images, "y": testbed.data.label}
    variables, _ = train.fit(
        testbed.classifier,
        jax.jit(testbed.classifier.init)(jax.random.key(config.seed + 1)),
        arrays,
        optimizer=optax.adam(1e-3),
        epochs=config.classifier_epochs,
        batch_size=128,
        rng=jax.random.key(config.seed + 2),
        seed=config.seed,
        checkpoint_dir=os.path.join(directory, "classifier"),
        logger=logger,
        desc="testbed_classifier",
        progress=progress,
    )
    return local_arrays(variables)


def quality_gate(grid: PromptGrid, shape: np.ndarray, colour: np.ndarray, bar: float = 0.8) -> dict[str, Any]:
    """How often the unedited model's samples of ``grid`` show the prompted shape and colour (``shape`` and
    ``colour``: their predicted indices); ``passed`` when both rates reach ``bar``."""
    rates = {
        "shape_acc": float(np.mean(shape == grid.shape)),
        "colour_acc": float(np.mean(colour == grid.colour)),
    }
    return {**rates, "passed": rates["shape_acc"] >= bar and rates["colour_acc"] >= bar}


def held_out(testbed: Testbed, *, seed: int, count: int = 2000) -> dict[str, float]:
    """The classifier's shape and colour accuracy on freshly generated real images (another seed)."""
    test = _captioned_shapes(testbed.config, count, seed)
    shape, colour = testbed.classify(test.images)
    return {
        "shape_acc": float(np.mean(shape == test.shape)),
        "colour_acc": float(np.mean(colour == test.colour)),
    }


def build(
    config: TestbedConfig, cache_dir: str, *, progress: bool = True, logger: train.MetricLogger | None = None
) -> Testbed:
    """Trains (or restores from ``cache_dir/testbed-<config key>``) the testbed; a training interrupted
    earlier (preemption, :func:`unlearnx.train.stop_at`) resumes from its newest checkpoint there.

    Returns:
        The :class:`Testbed` with its variables set and ``train_seconds`` the training wall time spent in
        this call.
    """
    testbed = Testbed(config)
    directory = os.path.join(os.path.abspath(cache_dir), f"testbed-{config.key()}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "testbed.json"), "w") as handle:
        json.dump(dataclasses.asdict(config), handle, indent=2)
    started = time.perf_counter()
    text_params, unet_params = _train_diffusion(testbed, directory, progress, logger)
    testbed.text_variables = {"params": text_params}
    testbed.unet_variables = {"params": unet_params}
    testbed.classifier_variables = _train_classifier(testbed, directory, progress, logger)
    testbed.train_seconds = time.perf_counter() - started
    return testbed

"""The small text-to-image testbed of the RECE experiment: captioned shapes, a text encoder and a
cross-attention UNet trained jointly with the DDPM objective, and a shape × colour classifier.

Training is cached with orbax under ``cache_dir`` (keyed by the testbed settings), so reruns and the erased
concepts of one run share one trained model. Sampling is DDIM with classifier-free guidance; the empty
caption is the unconditional prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from unlearnx import diffusion, models, train
from unlearnx.checkpoint import Checkpointer
from unlearnx.data import shapes as shapes_data
from unlearnx.models.text_encoder import text_encoder
from unlearnx.models.unet import unet

__all__ = ["Testbed", "TestbedConfig", "build"]


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
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class _State(NamedTuple):
    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any


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
        self.data = shapes_data.captioned_shapes(
            config.num_train,
            seed=config.seed,
            image_size=config.image_size,
            shapes=config.shapes,
            colours=config.colours,
            length=config.length,
        )
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

    # -- conditioning ---------------------------------------------------------------------------------------
    def tokens(self, prompts: str | Sequence[str]) -> np.ndarray:
        return self.tokenizer.encode(prompts)

    def embed(self, prompts: str | Sequence[str]) -> jax.Array:
        """Text-encoder rows of one prompt (``[L, d]``) or of a list (``[N, L, d]``)."""
        tokens = self.tokens(prompts)
        single = tokens.ndim == 1
        rows = _embed(self.text_model, self.text_variables, jnp.atleast_2d(tokens))
        return rows[0] if single else rows

    # -- sampling and classification -------------------------------------------------------------------------
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
    """``eps_fn(x_t, t, context)`` of the UNet with parameters ``unet_params``."""
    return lambda x, t, context: unet_model.apply({"params": unet_params}, (x, t, context))


@functools.cache
def _sampler(unet_model: models.Model, num_steps: int, guidance_scale: float):
    def run(unet_params, noise, contexts, null, schedule):
        return diffusion.ddim_sample(
            eps_function(unet_model, unet_params),
            noise,
            contexts,
            null,
            schedule,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            clip_x0=1.0,
        )

    return jax.jit(run)


def _optimizer(config: TestbedConfig) -> optax.GradientTransformation:
    """Adam with global-norm clipping 1, linear warm-up to ``lr``, then cosine decay to 0.1·lr."""
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.lr, config.warmup),
            optax.cosine_decay_schedule(config.lr, config.steps, 0.1),
        ],
        [config.warmup],
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def _train_diffusion(
    testbed: Testbed, directory: str, progress: bool, logger: train.MetricLogger | None = None
) -> tuple[Any, Any]:
    """Joint text-encoder + UNet training; returns the EMA (text, unet) parameters."""
    config = testbed.config
    keys = jax.random.split(jax.random.key(config.seed), 3)
    params = {
        "text": jax.jit(testbed.text_model.init)(keys[0])["params"],
        "unet": jax.jit(testbed.unet_model.init)(keys[1])["params"],
    }
    optimizer = _optimizer(config)
    state = _State(jnp.asarray(0, jnp.int32), params, params, optimizer.init(params))
    empty = jnp.asarray(testbed.tokens(""))[None]
    text_model, unet_model, noise_schedule = testbed.text_model, testbed.unet_model, testbed.schedule

    def loss_fn(params, images, tokens, rng):
        context = text_model.apply({"params": params["text"]}, tokens)
        null = text_model.apply({"params": params["text"]}, empty)[0]
        eps_fn = eps_function(unet_model, params["unet"])
        return diffusion.eps_loss(
            eps_fn,
            images,
            context,
            null,
            rng,
            noise_schedule,
            p_uncond=config.p_uncond,
            snr_gamma=config.snr_gamma,
        )

    @jax.jit
    def step(state: _State, images, tokens):
        rng = jax.random.fold_in(keys[2], state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, images, tokens, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.minimum(config.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
        return _State(state.step + 1, params, ema, opt_state), loss

    checkpointer = Checkpointer(os.path.join(directory, "diffusion"))
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
    images = _to_model_range(testbed.data.images)
    tokens = testbed.data.tokens
    n = len(images)
    per_epoch = n // config.batch_size
    start = int(state.step)
    started = last_save = time.perf_counter()
    bar = tqdm(
        range(start, config.steps), desc="testbed diffusion", disable=None if progress else True, leave=False
    )
    losses = []
    for index in bar:
        epoch, offset = divmod(index, per_epoch)
        order = np.random.default_rng((config.seed, epoch)).permutation(n)
        chosen = order[offset * config.batch_size : (offset + 1) * config.batch_size]
        state, loss = step(state, images[chosen], tokens[chosen])
        losses.append(loss)
        if len(losses) == 50:
            mean_loss = float(jnp.mean(jnp.stack(losses)))
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if logger is not None:
                logger.log(
                    phase="testbed", step=index + 1, loss=mean_loss, seconds=time.perf_counter() - started
                )
            losses = []
        if time.perf_counter() - last_save > 120 or index + 1 == config.steps:
            checkpointer.save(index + 1, state)
            last_save = time.perf_counter()
    checkpointer.close()
    return _local(state.ema["text"]), _local(state.ema["unet"])


def _local(tree: Any) -> Any:
    """Plain default-device arrays (restored or mesh-replicated arrays carry another sharding, which would
    make every jitted consumer compile twice: once for them and once for jit outputs)."""
    return jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf)), tree)


def _train_classifier(testbed: Testbed, directory: str, progress: bool) -> Any:
    config = testbed.config
    arrays = {"x": testbed.data.images, "y": testbed.data.label}
    variables = train.fit(
        testbed.classifier,
        jax.jit(testbed.classifier.init)(jax.random.key(config.seed + 1)),
        arrays,
        optimizer=optax.adam(1e-3),
        epochs=config.classifier_epochs,
        batch_size=128,
        rng=jax.random.key(config.seed + 2),
        seed=config.seed,
        checkpoint_dir=os.path.join(directory, "classifier"),
        desc="testbed classifier",
        progress=progress,
    )
    return _local(variables)


def held_out(testbed: Testbed, *, seed: int, count: int = 2000) -> dict[str, float]:
    """The classifier's shape and colour accuracy on freshly generated real images (another seed)."""
    config = testbed.config
    test = shapes_data.captioned_shapes(
        count,
        seed=seed,
        image_size=config.image_size,
        shapes=config.shapes,
        colours=config.colours,
        length=config.length,
    )
    shape, colour = testbed.classify(test.images)
    return {
        "shape_acc": float(np.mean(shape == test.shape)),
        "colour_acc": float(np.mean(colour == test.colour)),
    }


def build(
    config: TestbedConfig, cache_dir: str, *, progress: bool = True, logger: train.MetricLogger | None = None
) -> Testbed:
    """Trains (or restores from ``cache_dir/<config key>``) the testbed.

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
    testbed.classifier_variables = _train_classifier(testbed, directory, progress)
    testbed.train_seconds = time.perf_counter() - started
    return testbed

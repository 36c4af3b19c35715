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
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearnx import data, diffusion, models, train
from unlearnx._testbed_spec import (
    Concept,
    PromptGrid,
    TestbedConfig,
    concept,
    local_arrays,
    make_optimizer,
    quality_gate,
)
from unlearnx.checkpoint import interval_policy
from unlearnx.data import shapes as shapes_data
from unlearnx.models import text_encoder, unet

__all__ = ["Concept", "PromptGrid", "Testbed", "TestbedConfig", "build", "concept", "diffusion_step"]
__all__ += ["eps_function", "held_out", "local_arrays", "make_optimizer", "quality_gate"]

_RECORD_EVERY = 50  # diffusion steps per logged record (mean loss)
_SAVE_SECONDS = 120.0  # minimum wall time between diffusion checkpoints (the last step is always saved)


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

    Examples:
        >>> testbed = Testbed(TestbedConfig(num_train=8))  # untrained: :func:`build` trains or restores
        >>> testbed.tokens("a red circle").shape, testbed.num_classes
        ((16,), 16)
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


def eps_function(unet_model: models.Model, unet_params: Any) -> Callable[..., jax.Array]:
    """The ε-predictor ``eps_fn(x_t, t, context)`` of the UNet with parameters ``unet_params``.

    Args:
        unet_model: the UNet (``apply({"params": p}, (x_t, t, context))``).
        unet_params: its parameters.

    Returns:
        ``eps_fn`` for :mod:`unlearnx.diffusion`: one context ``[L, d]`` is shared by the whole batch, a
        ``[B, L, d]`` block gives each example its own.

    Examples:
        >>> import types, jax.numpy as jnp
        >>> toy = types.SimpleNamespace(apply=lambda v, inputs: inputs[2].sum((1, 2)) * v["params"])
        >>> eps_fn = eps_function(toy, 2.0)
        >>> eps_fn(jnp.zeros((3, 1)), jnp.zeros(3, int), jnp.ones((4, 5))).tolist()  # context broadcast
        [40.0, 40.0, 40.0]
    """

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


def diffusion_step(testbed: Testbed, optimizer: optax.GradientTransformation) -> Callable:
    """The jitted joint step ``(state, {"x", "tokens"}) -> (state, {"loss"})``: Min-SNR-γ ε loss with the
    caption dropped to the empty prompt with probability ``p_uncond``, noise from ``fold_in(state.rng,
    state.step)``, then the EMA update of ``state.extra["ema"]`` (decay min(ema_decay, (1+k)/(10+k))).

    Args:
        testbed: the testbed (its models, schedule and settings).
        optimizer: the optimizer of ``state.opt_state`` (:func:`make_optimizer`).

    Returns:
        The jitted step for :func:`unlearnx.train.loop`, over ``state.variables["params"]`` =
        ``{"text", "unet"}`` and token batches of the captions.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from unlearnx import train
        >>> config = TestbedConfig(num_train=4, batch_size=2, image_size=8, channels=(8,), attention=(True,),
        ...                        layers_per_block=1, text_width=8, text_layers=1)  # tiny, untrained
        >>> testbed, optimizer = Testbed(config), make_optimizer(config)
        >>> params = {"text": testbed.text_model.init(jax.random.key(0))["params"],
        ...           "unet": testbed.unet_model.init(jax.random.key(1))["params"]}
        >>> state = train.TrainState.create(
        ...     {"params": params}, optimizer, jax.random.key(2), extra={"ema": params})
        >>> batch = {"x": testbed.data.images[:2] * 2.0 - 1.0, "tokens": testbed.data.tokens[:2]}
        >>> state, record = diffusion_step(testbed, optimizer)(state, batch)
        >>> int(state.step), bool(jnp.isfinite(record["loss"]))
        (1, True)
    """
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


def held_out(testbed: Testbed, *, seed: int, count: int = 2000) -> dict[str, float]:
    """The classifier's shape and colour accuracy on freshly generated real images (another seed).

    Args:
        testbed: a built testbed.
        seed: the data seed of the fresh images (not the training seed).
        count: how many images.

    Returns:
        ``{"shape_acc", "colour_acc"}``, fractions in [0, 1].

    Examples:
        >>> import jax
        >>> testbed = Testbed(TestbedConfig(num_train=8))  # untrained: :func:`build` trains or restores
        >>> testbed.classifier_variables = testbed.classifier.init(jax.random.key(0))
        >>> scores = held_out(testbed, seed=1, count=16)
        >>> sorted(scores), all(0.0 <= value <= 1.0 for value in scores.values())
        (['colour_acc', 'shape_acc'], True)
    """
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

    Args:
        config: the settings (their :meth:`TestbedConfig.key` names the cache folder).
        cache_dir: the folder of the cached checkpoints.
        progress: show progress bars.
        logger: receives the training records (JSONL + TensorBoard).

    Returns:
        The :class:`Testbed` with its variables set and ``train_seconds`` the training wall time spent in
        this call.

    Examples:
        A tiny configuration (one diffusion step, one classifier epoch). Even so ``build`` takes over a minute
        on 2 CPU cores, so the lines that need it are skipped in the doctests:

        >>> import os, tempfile
        >>> config = TestbedConfig(num_train=4, batch_size=2, image_size=8, channels=(8,), attention=(True,),
        ...                        layers_per_block=1, text_width=8, text_layers=1, steps=1,
        ...                        classifier_epochs=1)
        >>> cache = tempfile.mkdtemp()
        >>> testbed = build(config, cache, progress=False)  # doctest: +SKIP
        >>> sorted(os.listdir(os.path.join(cache, f"testbed-{config.key()}")))  # doctest: +SKIP
        ['classifier', 'diffusion', 'testbed.json']
        >>> sorted(testbed.unet_variables), testbed.train_seconds > 0  # doctest: +SKIP
        (['params'], True)

        The default :class:`TestbedConfig` trains for about 11 minutes on 2 CPU cores the first time (later
        calls restore it from the cache); its samples are then scored with ``grid =
        testbed.prompt_grid(repeat=8)``, ``images = testbed.sample(testbed.unet_variables["params"],
        grid.contexts, jax.random.key(0), num_steps=25, guidance_scale=5.0)`` and ``quality_gate(grid,
        *testbed.classify(images))``.
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

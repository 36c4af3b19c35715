"""Repeated data: double descent, effective model size and induction heads of small decoder LMs.

Hernandez et al. (2022), ``shared/papers/repeated_data.md`` §7. A family of decoder LMs (pre-LN GPT,
``unlearnx.models.decoder_lm``) trains for one pass over a fixed budget of D = steps · batch · seq_len
byte tokens drawn by ``unlearnx.data.repeated_mixture`` from a text corpus's training split: a fraction
f of the budget repeats a subset E times, shuffled throughout, the rest is unique text seen once. Per size
and seed the runs are

* f = 0 (unique data; these define the scaling fit L(N) = a·N^(−α) + L∞ over the family's sizes),
* f = ``fraction`` for every E in ``repeat_epochs``,
* the fraction sweep f ∈ ``sweep_fractions`` at E = ``sweep_epochs``.

All runs of one size are trained together as one ``jax.vmap`` over stacked parameters (the same
initialisation per seed for every (f, E), so runs differ only in data), data-parallel over the devices
along the batch axis, in one checkpointed, resumable :func:`unlearnx.train.loop` named ``train_lm_<size>``
(``train_attn_<size>`` for attention-only sizes). At log-spaced steps the held-out test loss (on
``eval_sequences`` test-split sequences) and the loss on the run's repeated subset are recorded. At the
end: test loss on ``final_eval_sequences`` test sequences, copying loss (``probe_batch`` held-out segments
of seq_len / 2 bytes repeated twice), the ICL score (mean loss over the ``icl_late`` window minus over the
``icl_early`` window), the per-head prefix-matching score on ``probe_batch`` rows of seq_len / 2 uniformly
random bytes repeated twice and, for the attention-only sizes, the OV copying score. N_eff comes from the
f = 0 fit (``unlearnx.eval.scaling``); the duplicated-row linear regression (``unlearnx.repeated_linear``)
runs alongside. Sizes are ``"d_model x layers x heads"`` strings.

Presets (``PRESETS``): ``smoke`` (tests), ``quick`` (Python stdlib bytes, sizes 32/64/96 × 2 × 4 plus an
attention-only 32 × 2 × 4, 160 steps of batch 8 × 128, E ∈ {3, 10, 30, 100} at f = 0.1, 2 seeds) and ``paper``
(``tfds_text:lm1b`` bytes, ≈ 10M–400M non-embedding parameters, 8,000 steps of 256 × 1024, E up to 10⁴);
``induction``: the span mixture (``span_lengths``; :mod:`experiments.repeated_induction`), attention-only
64 × 2 × 4, 8,000 steps of 16 × 64, every sequence carrying a text chunk of ℓ ∈ [8, 16] bytes repeated 0–32
bytes later (``span_text``, ``span_gap``), E ∈ {100, 1000} at f = 0.1, 2 seeds. (Random-byte spans repeated
right after themselves, the earlier setting kept as ``induction_bytes`` (6,000 steps of 32 × 32), were copied
without any induction head.)
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiments import repeated_induction, repeated_report, report, runner
from unlearnx import parallel, repeated_linear, train
from unlearnx.checkpoint import interval_policy
from unlearnx.data import repeated_mixture, text
from unlearnx.eval import induction
from unlearnx.models import decoder_lm, non_embedding_params

NAME = "repeated_data"
BATCH_AXIS = 1  # training batches are [runs, examples, seq_len]; the examples are split over the devices


@dataclasses.dataclass(frozen=True)
class Config:
    """One repeated-data sweep; the token budget is D = steps · batch_size · seq_len."""

    dataset: str = text.STDLIB
    data_dir: str | None = None
    sizes: tuple[str, ...] = ("32x2x4", "64x2x4", "96x2x4")
    attention_only_sizes: tuple[str, ...] = ("32x2x4",)
    mlp_ratio: int = 4
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 160
    fraction: float = 0.1
    repeat_epochs: tuple[int, ...] = (3, 10, 30, 100)
    sweep_fractions: tuple[float, ...] = (0.03, 0.3)
    sweep_epochs: int = 10
    seeds: tuple[int, ...] = (0, 1)
    lr: float = 2e-3
    warmup_steps: int = 16
    weight_decay: float = 0.01
    eval_points: int = 8
    eval_sequences: int = 24
    repeated_eval_sequences: int = 8
    final_eval_sequences: int = 96
    probe_batch: int = 16
    icl_early: tuple[int, ...] = (8, 24)
    icl_late: tuple[int, ...] = (104, 128)
    linear_seeds: int = 100
    linear_epochs: tuple[int, ...] = (1, 2, 3, 5, 8, 13, 20, 40, 80)
    runs_per_loop: int = 0  # stacked (vmapped) runs per training loop; 0: every run of a size in one loop
    microbatches: int = 1  # gradient-accumulation parts of each run's batch (activations for batch / parts)
    shard_params: bool = False  # FSDP: parameters and optimizer state sharded over the devices
    checkpoint_seconds: float = 60.0
    progress: bool = True
    # (min, max) span lengths: every train and test sequence gets a random byte span followed by its
    # repeat (unlearnx.data.repeated_spans, the spec's induction fallback); () for plain text
    span_lengths: tuple[int, ...] = ()
    span_gap: int = 0  # the repeat starts 0..span_gap tokens after the span (0: right after it)
    span_text: bool = False  # spans are chunks of the same split's text instead of random bytes


PRESETS: dict[str, Config] = {
    "smoke": Config(
        sizes=("16x1x2", "24x1x2", "32x1x2"), attention_only_sizes=("16x2x2",), seq_len=32, batch_size=8,
        steps=24, repeat_epochs=(2, 8), sweep_fractions=(0.3,), sweep_epochs=2, seeds=(0,), warmup_steps=2,
        eval_points=4, eval_sequences=8, repeated_eval_sequences=8, final_eval_sequences=16, probe_batch=8,
        icl_early=(2, 6), icl_late=(26, 32), linear_seeds=8, linear_epochs=(1, 4, 16), progress=False,
    ),
    "quick": Config(),
    "paper": Config(
        dataset="tfds_text:lm1b", sizes=("384x6x6", "640x10x10", "1024x16x16", "1280x20x20"),
        attention_only_sizes=("512x2x8",), seq_len=1024, batch_size=256, steps=8000,
        repeat_epochs=(10, 100, 1000, 10000), sweep_fractions=(0.03, 0.3, 0.5), sweep_epochs=100, lr=6e-4,
        warmup_steps=400, weight_decay=0.1, eval_points=30, eval_sequences=256, repeated_eval_sequences=64,
        final_eval_sequences=2048, probe_batch=64, icl_early=(40, 60), icl_late=(490, 510), seeds=(0,),
        runs_per_loop=1, microbatches=16, shard_params=True, checkpoint_seconds=600.0,
    ),
    "induction": Config(
        sizes=(), attention_only_sizes=("64x2x4",), seq_len=64, batch_size=16, steps=8000,
        repeat_epochs=(100, 1000), sweep_fractions=(), lr=3e-3, warmup_steps=50,
        eval_points=16, eval_sequences=64, final_eval_sequences=256, probe_batch=64, icl_early=(4, 16),
        icl_late=(48, 64), linear_seeds=8, linear_epochs=(1, 4, 16), span_lengths=(8, 16), span_gap=32,
        span_text=True,
    ),
}  # fmt: skip
# the earlier setting: random-byte spans repeated right after themselves in 32-byte rows (copied without
# induction heads; kept to reproduce the README's second table)
PRESETS["induction_bytes"] = dataclasses.replace(
    PRESETS["induction"], seq_len=32, batch_size=32, steps=6000, icl_early=(2, 8), icl_late=(24, 32),
    span_gap=0, span_text=False,
)  # fmt: skip


def parse_size(size: str) -> tuple[int, int, int]:
    """``"d_model x layers x heads"`` → ints."""
    parts = size.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"size {size!r} must read 'd_model x layers x heads', e.g. '64x2x4'")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def runs(config: Config) -> list[dict[str, Any]]:
    """Every (f, E, seed) run, in the stacking order shared by all sizes."""
    settings = [(0.0, 1)] + [(config.fraction, e) for e in config.repeat_epochs]
    settings += [(f, config.sweep_epochs) for f in config.sweep_fractions]
    return [{"fraction": f, "epochs": e, "seed": s} for s in config.seeds for f, e in settings]


def _chunks(tokens: np.ndarray, length: int, count: int, seed: int) -> np.ndarray:
    """``count`` random non-overlapping ``length``-token chunks of ``tokens``."""
    available = len(tokens) // length
    if count > available:
        raise ValueError(f"the held-out split has {available} sequences of {length}, {count} requested")
    starts = np.random.default_rng(seed).permutation(available)[:count] * length
    return np.asarray(tokens)[starts[:, None] + np.arange(length)].astype(np.int32)


class Data:
    """The corpus, every run's mixture and the fixed evaluation sets."""

    def __init__(self, config: Config):
        self.train = text.load(config.dataset, "train", data_dir=config.data_dir)
        test = text.load(config.dataset, "test", data_dir=config.data_dir)
        budget = config.steps * config.batch_size * config.seq_len
        self.runs = runs(config)
        tokens = repeated_induction.training_stream(config, self.train.tokens)
        mixture = functools.partial(repeated_mixture, tokens, budget=budget, seq_len=config.seq_len)
        self.mixtures = [
            mixture(repeated_fraction=run["fraction"], repeat_epochs=run["epochs"], seed=run["seed"])
            for run in self.runs
        ]
        held_out = _chunks(test.tokens, config.seq_len, config.final_eval_sequences + config.probe_batch, 1)
        # copy_mask [probes, seq_len]: the span copying loss's targets (all False without spans)
        self.final_test, self.copy_mask = repeated_induction.final_test_rows(config, held_out)
        self.test = self.final_test[: config.eval_sequences]
        segments = held_out[config.final_eval_sequences :, : config.seq_len // 2]
        copies = np.concatenate([segments, segments], axis=1)
        # text spans: the probe's random bytes are printable ASCII (32–126), bytes the text trained; bytes
        # >= 128 never occur in it, so their embeddings stay untrained and a 0–255 probe under-reads heads
        low, count = (32, 95) if config.span_text else (0, 256)
        random_tokens = low + induction.repeated_random_tokens(
            jax.random.key(12345), config.probe_batch, config.seq_len // 2, count
        )
        # one probe batch: final test sequences, copy probes, random-token induction probes
        self.probes = np.concatenate([self.final_test, copies, np.asarray(random_tokens, np.int32)])
        rep, weights = [], []
        for mixture in self.mixtures:
            subset = mixture.repeated_set().astype(np.int32)
            count = min(len(subset), config.repeated_eval_sequences)
            padded = np.zeros((config.repeated_eval_sequences, config.seq_len), np.int32)
            padded[:count] = subset[:count]
            rep.append(padded)
            weights.append(np.arange(config.repeated_eval_sequences) < count)
        self.repeated = np.stack(rep)
        self.repeated_weights = np.stack(weights).astype(np.float32)
        self.metadata = dict(
            test.metadata, train_tokens=len(self.train), test_tokens=len(test), budget=budget
        )

    def batch(self, step: int, size: int, runs: list[int]) -> np.ndarray:
        """``[runs, batch, seq_len]``: slots step·b … (step+1)·b − 1 of each of ``runs``' streams."""
        return np.stack([self.mixtures[i][step * size : (step + 1) * size] for i in runs]).astype(np.int32)


def eval_steps(config: Config) -> list[int]:
    """Log-spaced evaluation steps in [1, steps], the last step included."""
    return sorted({int(round(s)) for s in np.geomspace(1, config.steps, config.eval_points)})


class Family:
    """One size: the stacked runs' model, optimizer and jitted vmapped step, evaluation and probes."""

    def __init__(self, config: Config, size: str, mlp_ratio: int):
        width, layers, heads = parse_size(size)
        self.config, self.heads = config, heads
        kwargs = dict(max_len=config.seq_len, d_model=width, num_layers=layers, num_heads=heads)
        self.model = decoder_lm(256, mlp_ratio=mlp_ratio, **kwargs)
        self.attention_model = decoder_lm(256, mlp_ratio=mlp_ratio, return_attention=True, **kwargs)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, config.warmup_steps, max(config.steps, config.warmup_steps + 1), config.lr * 0.1
        )
        self.optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
        # per run: step(state, batch) with the run's own key, fold_in(state.rng, state.step)
        step = train.make_train_step(
            self.model, self.optimizer, loss=train.next_token_losses, microbatches=config.microbatches
        )
        self.step = jax.jit(jax.vmap(step))
        self.evaluate = jax.jit(jax.vmap(self._evaluate, in_axes=(0, None, 0)))
        self.probes = jax.jit(jax.vmap(self._probes, in_axes=(0, None, None)))

    def _losses(self, variables, tokens):
        return train.next_token_losses(self.model.apply(variables, tokens), {"x": tokens})

    def _evaluate(self, variables, test, repeated):
        return self._losses(variables, test), self._losses(variables, repeated)

    def _probes(self, variables, tokens, copy_mask):
        config = self.config
        logits, attention = self.attention_model.apply(variables, tokens)
        final, probe = config.final_eval_sequences, config.probe_batch
        test, copies, random_tokens = tokens[:final], tokens[final : final + probe], tokens[final + probe :]
        test_logits = logits[:final]
        extra = {}
        if config.span_lengths:
            extra["span_copying_loss"] = induction.masked_copying_loss(test_logits, test, copy_mask[:final])
        return extra | {
            "test_loss": jnp.mean(train.next_token_losses(test_logits, {"x": test})),
            "icl": induction.icl_score(
                test_logits, test, late=tuple(config.icl_late), early=tuple(config.icl_early)
            ),
            "copying_loss": induction.copying_loss(logits[final : final + probe], copies),
            "prefix_matching": induction.prefix_matching_score(
                attention[final + probe :], random_tokens, period=config.seq_len // 2
            ),
        }

    def init(self, seeds: list[int], width: int) -> train.TrainState:
        """The stacked step-0 state: per run the initialisation of its seed (shared by every (f, E)) and
        that seed's key as ``rng``."""
        keys = {seed: jax.random.fold_in(jax.random.key(seed), width) for seed in dict.fromkeys(seeds)}
        init = jax.jit(self.model.init)  # one compilation instead of one per random op
        per_seed = {seed: init(key) for seed, key in keys.items()}
        variables = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(per_seed[seed] for seed in seeds))
        rngs = jnp.stack([keys[seed] for seed in seeds])
        return jax.vmap(lambda v, rng: train.TrainState.create(v, self.optimizer, rng))(variables, rngs)


@functools.lru_cache(maxsize=16)
def family_for(config: Config, size: str, mlp_ratio: int) -> Family:
    """One :class:`Family` per setting, so a rerun in the same process reuses its compiled functions."""
    return Family(config, size, mlp_ratio)


def place(array: np.ndarray, mesh: Mesh, axis: int = 0) -> jax.Array:
    """An evaluation set (identical on every process) with ``axis`` split over ``mesh`` (replicated if the
    device count does not divide it)."""
    split = array.shape[axis] % mesh.devices.size == 0
    spec = PartitionSpec(*([None] * axis), parallel.DATA_AXIS) if split else PartitionSpec()
    return jax.device_put(array, NamedSharding(mesh, spec))


def _mean_loss(losses: jax.Array, weights: np.ndarray | None = None) -> np.ndarray:
    losses = np.asarray(losses, np.float64)
    if weights is None:
        return losses.mean(axis=-1)
    total = weights.sum(axis=-1)
    return np.where(total > 0, (losses * weights).sum(axis=-1) / np.maximum(total, 1), np.nan)


def loop_name(size: str, mlp_ratio: int) -> str:
    """The training loop's name (progress bar, records, ``--interrupt NAME:STEP``, checkpoint folder)."""
    return f"train_{'attn' if mlp_ratio == 0 else 'lm'}_{size}"


def train_family(config: Config, data: Data, size: str, mlp_ratio: int, run_dir: str, mesh: Mesh):
    """Trains every run of one size on :func:`unlearnx.train.loop`, ``runs_per_loop`` stacked runs per loop
    (0: all in one); returns its curves and final measurements (all per run, in run order)."""
    count = len(data.runs)
    width = config.runs_per_loop or count
    groups = [list(range(start, min(start + width, count))) for start in range(0, count, width)]
    split = len(groups) > 1
    parts = [_train_runs(config, data, size, mlp_ratio, run_dir, mesh, group, split) for group in groups]
    result = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    result.update(size=size, attention_only=mlp_ratio == 0, eval_steps=eval_steps(config))
    model = family_for(config, size, mlp_ratio).model
    result["non_embedding_params"] = non_embedding_params(jax.eval_shape(model.init, jax.random.key(0)))
    return result


def _train_runs(config, data: Data, size, mlp_ratio, run_dir, mesh, group: list[int], split: bool):
    """The runs ``group`` of one size stacked in one loop (named ``loop_name``, plus ``_runs<i>-<j>`` when
    the size is split), with per-run curves and final measurements.

    The loop closes a record after every step (``interval=1``) because the log-spaced evaluation steps are
    not evenly spaced; at the evaluation steps the record also holds each run's held-out and repeated-subset
    loss. The curves are read back from the returned history, which the loop checkpoints with the state, so
    a resumed loop has the same curves as an uninterrupted one.
    """
    family = family_for(config, size, mlp_ratio)
    points = eval_steps(config)
    test, repeated = place(data.test, mesh), place(data.repeated[group], mesh, axis=1)

    def evaluate(step: int, state: train.TrainState, step_metrics) -> dict[str, list[float]] | None:
        if step not in points:
            return None
        test_losses, repeated_losses = family.evaluate(state.variables, test, repeated)
        return {
            "test_loss": _mean_loss(test_losses).tolist(),
            "repeated_loss": _mean_loss(repeated_losses, data.repeated_weights[group]).tolist(),
        }

    name = loop_name(size, mlp_ratio) + (f"_runs{group[0]}-{group[-1]}" if split else "")
    logger = train.MetricLogger(os.path.join(run_dir, "train_log.jsonl"), tensorboard_dir=False)
    state, history = train.loop(
        family.step,
        family.init([data.runs[i]["seed"] for i in group], parse_size(size)[0]),
        lambda step: {"x": data.batch(step, config.batch_size, group)},
        config.steps,
        name=name,
        interval=1,
        on_interval=evaluate,
        checkpoint_dir=os.path.join(run_dir, "checkpoints", name),
        checkpoint_policy=interval_policy(seconds=config.checkpoint_seconds),
        logger=logger,
        mesh=mesh,
        batch_axis=BATCH_AXIS,
        shard_params=config.shard_params,
        progress=config.progress,
    )
    logger.close()
    evaluated = [record for record in history if record["step"] in points]
    result = {
        key: np.asarray(value, np.float64)
        for key, value in family.probes(
            state.variables, place(data.probes, mesh), place(data.copy_mask, mesh)
        ).items()
    }
    per_run = [jax.tree.map(lambda leaf, i=i: leaf[i], state.variables) for i in range(len(group))]
    finite = [report.finite(v, loss) for v, loss in zip(per_run, result["test_loss"], strict=True)]
    result.update(
        diverged=~np.asarray(finite),
        test_curve=np.asarray([record["test_loss"] for record in evaluated], np.float64).T,
        repeated_curve=np.asarray([record["repeated_loss"] for record in evaluated], np.float64).T,
    )
    if mlp_ratio == 0:
        result["ov_copying"] = np.stack([induction.decoder_ov_scores(v, family.heads) for v in per_run])
    return result


def main(config: Config, run_dir: str) -> dict[str, Any]:
    """Trains every size (and the attention-only ones) on every run, fits the scaling law, runs the linear
    companion, then writes ``metrics.json``, ``timing.json``, ``report.md`` and the plots.

    Each family's loop checkpoints under ``run_dir/checkpoints/<loop name>``; everything after training
    (probes, fit, linear sweep) is a deterministic function of the config and the trained states, so a
    rerun after an interruption writes the same ``metrics.json``.
    """
    for size in (*config.sizes, *config.attention_only_sizes):
        parse_size(size)
    if len(config.sizes) < 3 and (config.sizes or not config.span_lengths):
        raise ValueError(
            f"the scaling fit needs at least 3 sizes (none with span_lengths), got {config.sizes}"
        )
    if len(config.span_lengths) not in (0, 2):
        raise ValueError(f"span_lengths must be () or (min, max), got {config.span_lengths}")
    if config.seq_len % 2 or config.seq_len < 4:
        raise ValueError(
            f"seq_len must be even and >= 4 (probes repeat seq_len / 2 tokens), got {config.seq_len}"
        )
    mesh = parallel.data_mesh()
    started = time.perf_counter()
    data = Data(config)
    seconds: dict[str, float] = {"data": time.perf_counter() - started}
    families = []
    for sizes, mlp_ratio in ((config.sizes, config.mlp_ratio), (config.attention_only_sizes, 0)):
        for size in sizes:
            began = time.perf_counter()
            families.append(train_family(config, data, size, mlp_ratio, run_dir, mesh))
            seconds[f"{'attn' if mlp_ratio == 0 else 'lm'}_{size}"] = time.perf_counter() - began
            if config.progress:
                print(f"  {size} (mlp_ratio {mlp_ratio}): {seconds[list(seconds)[-1]]:.1f} s", flush=True)
    began = time.perf_counter()
    linear = repeated_linear.sweep(
        repeated_linear.LinearConfig(seeds=config.linear_seeds, epochs=config.linear_epochs)
    )
    seconds["linear"] = time.perf_counter() - began
    metrics = repeated_report.summarise(config, data.runs, families, linear, data.metadata)
    writer = repeated_induction if config.span_lengths else repeated_report
    if config.span_lengths:
        repeated_induction.add_summary(config, metrics, data.mixtures)
    timing = {"per_part": seconds, "total": float(sum(seconds.values())), "devices": jax.device_count()}
    runner.write_outputs(run_dir, metrics, timing, writer.report(config, metrics, timing))
    writer.plot(config, metrics, run_dir)
    return metrics

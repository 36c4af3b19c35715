"""Importance estimators and SSD against retraining, measured side by side in one process.

Prints medians over repeats (after a warm-up that compiles everything, every result blocked until ready):

1. ``empirical`` (exact per-example Fisher, chunked vmap) vs ``batch_sq`` (the SSD reference);
2. ``empirical`` vs a per-example Python loop (one jitted gradient call per example);
3. SSD (I_f + I_D + dampening; and with I_D cached) vs retraining from scratch on the retain set.

Usage: ``python benchmarks/fisher.py [--repeats 5] [--epochs 30] [--width 256]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from unlearnx import data, fisher, models, train, unlearn


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up: compile
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="retrain epochs (the quick preset's)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--loop-examples", type=int, default=256)
    args = parser.parse_args()

    train_set = data.load("digits", "train")
    forget, retain = data.forget_retain_split(train_set, 3)
    model = models.mlp(train_set.x.shape[1:], train_set.num_classes, hidden=(args.width, args.width))
    variables = model.init(jax.random.key(0))

    def loss_fn(variables, batch):
        return train.example_losses(model.apply(variables, batch["x"]), batch)

    def importance(arrays, estimator, batch_size=64):
        batches = data.batches(arrays, batch_size)
        return fisher.diagonal(loss_fn, variables, batches, estimator=estimator, chunk_size=64)

    full, forget_arrays = train_set.arrays(), forget.arrays()
    t_empirical = median_seconds(lambda: importance(full, "empirical"), args.repeats)
    t_batch_sq = median_seconds(lambda: importance(full, "batch_sq"), args.repeats)

    n_loop = args.loop_examples
    subset = {k: v[:n_loop] for k, v in full.items()}
    single_grad = jax.jit(
        jax.grad(lambda v, example: loss_fn(v, jax.tree.map(lambda a: a[None], example))[0])
    )

    def python_loop():
        total = jax.tree.map(jnp.zeros_like, variables)
        for i in range(n_loop):
            grads = single_grad(variables, {k: v[i] for k, v in subset.items()})
            total = jax.tree.map(lambda t, g: t + g * g, total, grads)
        return jax.tree.map(lambda t: t / n_loop, total)

    t_loop = median_seconds(python_loop, max(1, args.repeats // 2))
    t_vmap_subset = median_seconds(lambda: importance(subset, "empirical"), args.repeats)

    forget_importance = importance(forget_arrays, "batch_sq")
    full_importance = importance(full, "batch_sq")
    dampen = jax.jit(lambda v, f, d: unlearn.ssd(v, f, d, alpha=50.0, lam=1.0))
    t_forget = median_seconds(lambda: importance(forget_arrays, "batch_sq"), args.repeats)
    t_dampen = median_seconds(lambda: dampen(variables, forget_importance, full_importance), args.repeats)
    t_ssd = t_batch_sq + t_forget + t_dampen
    t_ssd_cached = t_forget + t_dampen

    optimizer = optax.adam(1e-3)  # one object, so every retrain reuses the cached compiled step

    def retrain(epochs):
        trained, _ = train.fit(
            model,
            model.init(jax.random.key(1)),
            retain.arrays(),
            optimizer=optimizer,
            epochs=epochs,
            batch_size=64,
            rng=jax.random.key(2),
            progress=False,
        )
        return trained

    retrain(1)  # compile the train step
    t_retrain = median_seconds(lambda: retrain(args.epochs), max(1, args.repeats // 2))

    print(
        f"digits MLP {args.width}-{args.width}, {len(train_set)} train / {len(forget)} forget examples, "
        f"median of {args.repeats} warm runs on {jax.device_count()} {jax.default_backend()} device(s)\n"
    )
    rows = [
        ("empirical Fisher, full data (vmap, chunk 64)", t_empirical, ""),
        (
            "batch_sq, full data (batch 64)",
            t_batch_sq,
            f"empirical / batch_sq = {t_empirical / t_batch_sq:.2f}×",
        ),
        (f"empirical, {n_loop} examples (vmap)", t_vmap_subset, ""),
        (
            f"per-example Python loop, {n_loop} examples",
            t_loop,
            f"loop / vmap = {t_loop / t_vmap_subset:.1f}×",
        ),
        ("SSD: I_D + I_f + dampening", t_ssd, ""),
        ("SSD with I_D cached: I_f + dampening", t_ssd_cached, ""),
        (
            f"retrain from scratch, {args.epochs} epochs",
            t_retrain,
            f"retrain / SSD = {t_retrain / t_ssd:.1f}×, "
            f"retrain / SSD cached = {t_retrain / t_ssd_cached:.0f}×",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds * 1e3:10.2f} ms  {note}")


if __name__ == "__main__":
    main()

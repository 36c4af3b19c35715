"""Importance estimators and SSD against retraining, measured side by side in one process.

Prints medians over repeats (after a warm-up that compiles everything, every result blocked until ready;
the rows compared in a ratio are timed in turn within each repeat, so load drifts hit them alike):

1. digits MLP: ``empirical`` (exact per-example Fisher: structured per-example squares, and the per-example
   ``vmap`` path with ``structured=False``) vs ``batch_sq`` (the SSD reference), full data;
2. ``empirical`` vs a per-example Python loop (one jitted gradient call per example), 256 examples, both
   from arrays in memory (batches of 64 built before timing; the full-data rows include ``data.batches``);
3. SSD (I_f + I_D + dampening; and with I_D cached) vs retraining from scratch on the retain set;
4. BN-CNN and ResNet-18 at CIFAR shapes (32×32×3, 10 classes, random data, a few batches, eval-mode
   BatchNorm): ``empirical`` vs ``batch_sq`` (``--conv-vmap`` adds the ``vmap`` path: minutes on 2 cores);
5. peak memory of one empirical-Fisher chunk: XLA's temporary buffers of the compiled per-batch update
   (``memory_analysis``) for a batch of one chunk, structured vs ``vmap``, per chunk and per example.

Usage: ``python benchmarks/fisher.py [--repeats 11] [--epochs 30] [--width 256] [--skip-conv] [--conv-vmap]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import interleaved_medians, median_seconds

from unlearnx import data, fisher, models, train, unlearn


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=30, help="retrain epochs (the quick preset's)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--loop-examples", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64, help="empirical chunk size (examples per vmap)")
    parser.add_argument("--conv-batches", type=int, default=3, help="CIFAR-shaped batches for CNN/ResNet")
    parser.add_argument("--conv-batch-size", type=int, default=32)
    parser.add_argument("--conv-repeats", type=int, default=2)
    parser.add_argument("--skip-conv", action="store_true", help="skip the CNN / ResNet-18 rows")
    parser.add_argument("--conv-vmap", action="store_true", help="also time the vmap path on CNN / ResNet-18")
    return parser.parse_args()


def classifier_loss(model: models.Model):
    def loss_fn(variables, batch):
        return train.example_losses(model.apply(variables, batch["x"]), batch)

    return loss_fn


def chunk_memory(loss_fn, variables, batch, chunk: int, structured: bool) -> int:
    """Temporary bytes of the compiled per-batch empirical update on a batch of ``chunk`` examples."""
    update = fisher._contribution_fn(loss_fn, "empirical", chunk, None, structured)
    total = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), variables)
    batch = {k: v[:chunk] for k, v in batch.items()}
    compiled = update.lower(total, variables, batch, jnp.ones(chunk, jnp.float32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def memory_row(name, loss_fn, variables, batch, chunk: int) -> tuple[str, float, str]:
    fast, exact = (chunk_memory(loss_fn, variables, batch, chunk, s) for s in (True, False))
    note = (
        f"{fast / 2**20:.2f} MiB structured ({fast / chunk / 2**10:.0f} KiB/example) vs "
        f"{exact / 2**20:.2f} MiB vmap ({exact / chunk / 2**10:.0f} KiB/example)"
    )
    return (f"{name}: peak temporary memory of one chunk of {chunk}", float("nan"), note)


def digits_rows(args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """Rows 1-3 (and the MLP's memory row) on the digits MLP."""
    train_set = data.load("digits", "train")
    forget, retain = data.forget_retain_split(train_set, 3)
    model = models.mlp(train_set.x.shape[1:], train_set.num_classes, hidden=(args.width, args.width))
    variables, loss_fn = model.init(jax.random.key(0)), classifier_loss(model)

    def importance(arrays, estimator, structured=True):
        batches = arrays if isinstance(arrays, list) else data.batches(arrays, 64)
        return fisher.diagonal(
            loss_fn, variables, batches, estimator=estimator, chunk_size=args.chunk, structured=structured
        )

    full, forget_arrays = train_set.arrays(), forget.arrays()
    timed = interleaved_medians(  # in turn within each repeat: load drifts hit all three alike
        {
            "structured": lambda: importance(full, "empirical"),
            "vmap": lambda: importance(full, "empirical", False),
            "batch_sq": lambda: importance(full, "batch_sq"),
        },
        args.repeats,
    )
    t_emp, t_emp_vmap, t_batch_sq = timed["structured"], timed["vmap"], timed["batch_sq"]
    n_loop = args.loop_examples
    subset = {k: v[:n_loop] for k, v in full.items()}
    in_memory = list(data.batches(subset, 64))  # the loop reads arrays in memory: so does the Fisher here
    timed = interleaved_medians(
        {
            "loop": lambda: python_loop(loss_fn, variables, subset),
            "structured": lambda: importance(in_memory, "empirical"),
            "vmap": lambda: importance(in_memory, "empirical", False),
        },
        args.repeats,
    )
    t_loop, t_subset, t_subset_vmap = timed["loop"], timed["structured"], timed["vmap"]
    name = f"digits MLP {args.width}-{args.width}"
    rows = [
        (f"{name}: empirical Fisher, full data (structured, chunk {args.chunk})", t_emp, ""),
        (f"{name}: empirical Fisher, full data (vmap, chunk {args.chunk})", t_emp_vmap, ""),
        (
            f"{name}: batch_sq, full data (batch 64)",
            t_batch_sq,
            f"empirical / batch_sq = {t_emp / t_batch_sq:.2f}× (vmap path {t_emp_vmap / t_batch_sq:.2f}×)",
        ),
        (f"{name}: empirical, {n_loop} examples (structured)", t_subset, ""),
        (f"{name}: empirical, {n_loop} examples (vmap)", t_subset_vmap, ""),
        (
            f"{name}: per-example Python loop, {n_loop} examples",
            t_loop,
            f"loop / empirical = {t_loop / t_subset:.1f}× (loop / vmap path {t_loop / t_subset_vmap:.1f}×)",
        ),
        memory_row(name, loss_fn, variables, full, args.chunk),
    ]
    return rows + ssd_rows(args, model, variables, loss_fn, (full, forget_arrays, retain), t_batch_sq)


def python_loop(loss_fn, variables, subset):
    """The empirical Fisher from one jitted per-example gradient call per example."""
    single_grad = _single_grad(loss_fn)
    total = jax.tree.map(jnp.zeros_like, variables)
    n = len(subset["y"])
    for i in range(n):
        grads = single_grad(variables, {k: v[i] for k, v in subset.items()})
        total = jax.tree.map(lambda t, g: t + g * g, total, grads)
    return jax.tree.map(lambda t: t / n, total)


_GRADS: dict = {}


def _single_grad(loss_fn):
    if loss_fn not in _GRADS:
        example_loss = lambda v, example: loss_fn(v, jax.tree.map(lambda a: a[None], example))[0]
        _GRADS[loss_fn] = jax.jit(jax.grad(example_loss))
    return _GRADS[loss_fn]


def ssd_rows(args, model, variables, loss_fn, arrays, t_batch_sq) -> list[tuple[str, float, str]]:
    """SSD (importances + dampening) against retraining from scratch on the retain set."""
    full, forget_arrays, retain = arrays

    def importance(arrays):
        return fisher.diagonal(loss_fn, variables, data.batches(arrays, 64), estimator="batch_sq")

    forget_importance, full_importance = importance(forget_arrays), importance(full)
    dampen = jax.jit(lambda v, f, d: unlearn.ssd(v, f, d, alpha=50.0, lam=1.0))
    t_forget = median_seconds(lambda: importance(forget_arrays), args.repeats)
    t_dampen = median_seconds(lambda: dampen(variables, forget_importance, full_importance), args.repeats)
    t_ssd, t_ssd_cached = t_batch_sq + t_forget + t_dampen, t_forget + t_dampen
    optimizer = optax.adam(1e-3)  # one object, so every retrain reuses the cached compiled step

    def retrain(epochs):
        trained, _ = train.fit(
            model, model.init(jax.random.key(1)), retain.arrays(), optimizer=optimizer, epochs=epochs,
            batch_size=64, rng=jax.random.key(2), progress=False,
        )  # fmt: skip
        return trained

    retrain(1)  # compile the train step
    t_retrain = median_seconds(lambda: retrain(args.epochs), max(1, args.repeats // 2))
    note = f"retrain / SSD = {t_retrain / t_ssd:.1f}×, retrain / SSD cached = {t_retrain / t_ssd_cached:.0f}×"
    return [
        ("SSD: I_D + I_f + dampening", t_ssd, ""),
        ("SSD with I_D cached: I_f + dampening", t_ssd_cached, ""),
        (f"retrain from scratch, {args.epochs} epochs", t_retrain, note),
    ]


def conv_rows(args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """Row 4 and the memory rows of the BN-CNN and ResNet-18 at CIFAR shapes."""
    rng = np.random.default_rng(0)
    size, count = args.conv_batch_size, args.conv_batches
    arrays = {"x": rng.normal(size=(size * count, 32, 32, 3)).astype(np.float32)}
    arrays["y"] = rng.integers(0, 10, size * count).astype(np.int32)
    rows = []
    for name, build in (("BN-CNN", models.cnn), ("ResNet-18", models.resnet18)):
        rows += conv_model_rows(args, name, build((32, 32, 3), 10), arrays)
    return rows


def conv_model_rows(args, name: str, model: models.Model, arrays: dict) -> list[tuple[str, float, str]]:
    size, count = args.conv_batch_size, args.conv_batches
    batches = [{k: v[i * size : (i + 1) * size] for k, v in arrays.items()} for i in range(count)]
    variables, loss_fn = model.init(jax.random.key(0)), classifier_loss(model)

    def run(estimator, structured=True):
        return fisher.diagonal(
            loss_fn, variables, batches, estimator=estimator, chunk_size=size, structured=structured
        )

    label = f"{name} 32×32×3, {count} batches of {size}"
    t_emp = median_seconds(lambda: run("empirical"), args.conv_repeats)
    t_sq = median_seconds(lambda: run("batch_sq"), args.conv_repeats)
    rows = [(f"{label}: empirical (structured)", t_emp, "")]
    if args.conv_vmap:
        t_vmap = median_seconds(lambda: run("empirical", False), 1)
        rows += [(f"{label}: empirical (vmap)", t_vmap, f"vmap / batch_sq = {t_vmap / t_sq:.1f}×")]
    rows += [(f"{label}: batch_sq", t_sq, f"empirical / batch_sq = {t_emp / t_sq:.2f}×")]
    return rows + [memory_row(name, loss_fn, variables, arrays, size)]


def main() -> None:
    args = parse_args()
    rows = digits_rows(args)
    if not args.skip_conv:
        rows += conv_rows(args)
    print(f"median of warm runs on {jax.device_count()} {jax.default_backend()} device(s)\n")
    width = max(len(name) for name, _, _ in rows)
    for name, seconds, note in rows:
        shown = "" if np.isnan(seconds) else f"{seconds * 1e3:10.2f} ms"
        print(f"{name:<{width}}  {shown:>13}  {note}")


if __name__ == "__main__":
    main()

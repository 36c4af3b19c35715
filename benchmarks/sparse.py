"""Masked sparse training steps against the same dense step, measured side by side in one process.

One jitted training step (forward, backward, optimizer update; :func:`unlearnx.train.make_train_step`) of the
digits MLP on one fixed batch, with the spec's inner optimizer (SGD, momentum 0.9, Nesterov, weight decay):

1. dense: the inner optimizer alone;
2. GraNet on a step that is not a mask update: ``make_train_step`` branches on ``SparseState.update_due``
   before the forward pass (:func:`unlearnx.sparse.branch_on_mask_update`), so this is the ordinary branch,
   a masked step with no mask-update ``lax.cond`` inside;
3. GraNet on a mask-update step (global magnitude pruning + per-tensor drop and regrow: exact top-k by
   bisection on the float bits, linear in the tensor size);
4. for reference, a static sparse mask (masking, no ``lax.cond``) and RigL with and without a mask update.

The summary prints issue #16's rows with their targets: GraNet step without a mask update / dense ≤ 1.10×,
GraNet mask-update step / dense ≤ 10×, RigL mask-update step / dense ≤ 10×, with the load average (the
machine may be shared: ratios within one process are what to compare).

The state is never advanced, so every call repeats the same step: the optimizer state's ``count`` is set so
that ``count + 1`` is (or is not) a multiple of ΔT, and ``update_due`` with it. Each timing is the median of
``--repeats`` calls (a tenth as many for the slow mask-update steps) after a warm-up call that compiles, every
result blocked until ready; the steps of a group are timed in turn within each repeat, so background load hits
them alike.
Ratios are against the dense step timed in the same group.

Usage: ``python benchmarks/sparse.py [--repeats 200] [--sparsity 0.9] [--width 256] [--batch-size 64]``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from _timing import interleaved_medians

from unlearnx import data, models, sparse, train


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=200, help="(a tenth of them for mask updates)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frequency", type=int, default=100, help="ΔT in steps")
    return parser.parse_args()


def _step_factory(args: argparse.Namespace) -> Callable[..., Callable[[], Any]]:
    """``step_fn(name, count)``: a warm-startable step of the digits MLP under the named optimizer, its
    transform's step counter set to ``count``."""
    train_set = data.load("digits", "train")
    model = models.mlp(train_set.x.shape[1:], train_set.num_classes, hidden=(args.width, args.width))
    variables = model.init(jax.random.key(0))
    batch = {key: jnp.asarray(value[: args.batch_size]) for key, value in train_set.arrays().items()}
    rng = jax.random.key(1)
    total_steps, period = 100 * args.frequency, args.frequency

    def inner():
        return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))

    optimizers = {
        "dense": inner(),
        "granet": sparse.granet(
            inner(),
            final_sparsity=args.sparsity,
            initial_sparsity=0.5,
            begin_step=0,
            end_step=total_steps // 2,
            frequency=period,
            total_steps=total_steps,
        ),
        "static": sparse.static_sparse(inner(), sparsity=args.sparsity),
        "rigl": sparse.rigl(inner(), sparsity=args.sparsity, end_step=total_steps, frequency=period),
    }

    def step_fn(name: str, count: int | None = None) -> Callable[[], Any]:
        optimizer = optimizers[name]
        step = train.make_train_step(model, optimizer)
        opt_state = optimizer.init(variables["params"])
        if count is not None:  # the transform's update runs step count + 1, a mask update when ΔT divides it
            due = jnp.asarray((count + 1) % period == 0)
            opt_state = opt_state._replace(count=jnp.asarray(count, jnp.int32), update_due=due)
        state = train.TrainState(jnp.asarray(0, jnp.int32), variables, opt_state, rng)
        return lambda: step(state, batch)

    return step_fn


def _report(args: argparse.Namespace, cheap: dict[str, float], costly: dict[str, float]) -> None:
    period = args.frequency
    dense, costly_dense = cheap["dense step"], costly["dense step (timed with the mask updates)"]
    print(
        f"digits MLP {args.width}-{args.width}, batch {args.batch_size}, sparsity {args.sparsity:g} "
        f"(GraNet s_i = 0.5), ΔT = {period}; medians of {args.repeats} warm steps "
        f"({max(args.repeats // 10, 5)} for mask updates) on {jax.device_count()} "
        f"{jax.default_backend()} device(s)\n"
    )
    width = max(len(name) for name in [*cheap, *costly])
    print(f"{'step':<{width}}  {'time':>10}  vs the dense step of its group")
    for group, reference in ((cheap, dense), (costly, costly_dense)):
        for name, seconds in group.items():
            print(f"{name:<{width}}  {seconds * 1e3:7.3f} ms  {seconds / reference:6.2f}×")
    no_update = cheap["GraNet step, no mask update"]
    update = costly["GraNet step, mask update (prune + regrow)"]
    rigl_update = costly["RigL step, mask update (drop + regrow)"]
    print(
        f"\nAmortised GraNet step, one mask update every ΔT = {period} steps (the spec's CIFAR ΔT: 1000): "
        f"{((period - 1) * no_update + update) / period / dense:.2f}× a dense step."
    )
    rows = [
        ("GraNet step without mask update / dense step", no_update / dense, 1.10),
        ("GraNet mask-update step / dense step", update / costly_dense, 10.0),
        ("RigL mask-update step / dense step", rigl_update / costly_dense, 10.0),
    ]
    print(f"\nIssue #16 targets (load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    for name, ratio, target in rows:
        print(f"  {name:<46} {ratio:6.2f}×  target ≤ {target:g}×  {'met' if ratio <= target else 'NOT met'}")
    static = cheap["static sparse step (masking only)"]
    print(
        f"  (GraNet's own share: no-update step / static sparse step {no_update / static:.2f}×; the static "
        f"step's {static / dense:.2f}× is the masking every sparse transform pays)"
    )


def main() -> None:
    args = _arguments()
    step_fn, period = _step_factory(args), args.frequency
    # Step 1 (count 0) is never an update; step ΔT (count ΔT − 1) is, for GraNet (pruning while
    # step <= end_step, then regrowth) and RigL alike. The mask-update steps are timed in a group of their
    # own (fewer repeats) with a dense step of their own, and their ratios are taken against it, so that
    # load drifting between the two groups does not enter the ratios.
    cheap = interleaved_medians(
        {
            "dense step": step_fn("dense"),
            "GraNet step, no mask update": step_fn("granet", 0),
            "static sparse step (masking only)": step_fn("static"),
            "RigL step, no mask update": step_fn("rigl", 0),
        },
        args.repeats,
    )
    costly = interleaved_medians(
        {
            "dense step (timed with the mask updates)": step_fn("dense"),
            "GraNet step, mask update (prune + regrow)": step_fn("granet", period - 1),
            "RigL step, mask update (drop + regrow)": step_fn("rigl", period - 1),
        },
        max(args.repeats // 10, 5),
    )
    _report(args, cheap, costly)


if __name__ == "__main__":
    main()

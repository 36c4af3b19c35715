"""unlearnx.train.step_cost: XLA's FLOPs of a compiled step against a count by hand, memory per device,
hours, and the same total FLOPs on 8 simulated devices with less memory per device when parameters shard."""

import os
import textwrap

import jax
import jax.numpy as jnp
import optax
import pytest
from problems import run_on_eight_devices

from unlearnx import models, train

BATCH, WIDTHS = 256, (64, 128, 128, 10)


def mlp_problem():
    model = models.mlp((WIDTHS[0],), WIDTHS[-1], hidden=WIDTHS[1:-1])
    optimizer = optax.adam(1e-3)
    state = jax.eval_shape(
        lambda: train.TrainState.create(model.init(jax.random.key(0)), optimizer, jax.random.key(1))
    )
    batch = {
        "x": jax.ShapeDtypeStruct((BATCH, WIDTHS[0]), jnp.float32),
        "y": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
    }
    return train.make_train_step(model, optimizer), state, batch


def matmul_flops():
    """Forward 2·B·d_in·d_out per layer; backward the same for the weight gradient of every layer and for
    the input gradient of every layer but the first (the data needs no gradient)."""
    layers = [2 * BATCH * a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True)]
    return 2 * sum(layers) + sum(layers[1:])


def test_flops_memory_and_hours_of_an_mlp_step():
    step, state, batch = mlp_problem()
    cost = train.step_cost(step, state, batch, 1000, name="mlp")
    params = sum(a * b + b for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True))
    assert cost.params == params and cost.steps == 1000 and cost.devices == jax.device_count()
    # XLA also counts the element-wise work (activations, softmax, Adam): a little above the matmuls.
    assert matmul_flops() <= cost.flops_per_step <= 1.1 * matmul_flops()
    assert cost.argument_bytes >= 4 * 3 * params  # params and Adam's two moments, float32
    assert cost.peak_bytes == cost.argument_bytes + cost.output_bytes + cost.temp_bytes
    hours = cost.hours(1e12, chips=1, utilisation=0.5)
    assert hours == pytest.approx(cost.flops_per_step * 1000 / 0.5e12 / 3600)
    kind, peak = train.device_peak_flops()
    assert peak > 1e8 and isinstance(kind, str)


def test_plan_sums_the_repeats_of_every_phase_at_the_reference_peaks():
    """train.plan: each phase is repeats × steps × XLA's FLOPs at 40% of the vendor peak, summed."""
    model = models.mlp((WIDTHS[0],), WIDTHS[-1], hidden=WIDTHS[1:-1])
    phases = [
        train.supervised_phase("a", model, optax.adam(1e-3), (WIDTHS[0],), BATCH, 1000, repeats=3),
        train.supervised_phase("b", model, optax.sgd(0.1), (WIDTHS[0],), BATCH // 2, 500),
    ]
    text, record = train.plan(phases)
    flops = [entry["flops_per_step"] for entry in record["phases"]]
    assert matmul_flops() <= flops[0] <= 1.1 * matmul_flops()
    assert [e["repeats"] for e in record["phases"]] == [3, 1] and [e["steps"] for e in record["phases"]] == [
        1000,
        500,
    ]
    by_hand = (3 * 1000 * flops[0] + 500 * flops[1]) / (275e12 * 0.4) / 3600
    assert record["total_hours"]["TPU v4"] == pytest.approx(by_hand, rel=1e-12)
    assert record["total_hours"]["H100"] == pytest.approx(by_hand * 275 / 989, rel=1e-12)
    assert text.count("\n| ") == 4 and "**total**" in text  # header, separator, two phases, total


SCRIPT = textwrap.dedent(
    """
    import sys, json
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/.."]
    from test_cost import mlp_problem
    from unlearnx import train
    step, state, batch = mlp_problem()
    out = {}
    for shard in (False, True):
        cost = train.step_cost(step, state, batch, 10, shard_params=shard)
        out[str(shard)] = [cost.devices, cost.flops_per_step, cost.argument_bytes]
    json.dump(out, open(sys.argv[1], "w"))
    """
)


@pytest.mark.slow
def test_eight_devices_count_the_same_flops_and_shard_memory(tmp_path):
    import json

    run_on_eight_devices(SCRIPT, tmp_path / "out.json", os.path.dirname(__file__))
    out = json.loads((tmp_path / "out.json").read_text())
    step, state, batch = mlp_problem()
    one = train.step_cost(step, state, batch, 10)
    replicated, sharded = out["False"], out["True"]
    assert replicated[0] == 8
    assert replicated[1] == pytest.approx(one.flops_per_step, rel=0.15)  # same work, split 8 ways
    assert sharded[2] < 0.5 * replicated[2]  # parameters and optimizer state split over the devices


def test_plan_counts_every_microbatch_of_a_scanned_step():
    """XLA's cost analysis counts a lax.scan body once: a step of 4 accumulated parts reports about a quarter
    of the whole-batch FLOPs, and Phase(loop_trips=4) restores the count."""
    model = models.mlp((WIDTHS[0],), WIDTHS[-1], hidden=WIDTHS[1:-1])
    whole = train.supervised_phase("whole", model, optax.sgd(0.1), (WIDTHS[0],), BATCH, 10)
    step = train.make_train_step(model, optax.sgd(0.1), microbatches=4)
    parts = train.Phase("parts", step, whole.state, whole.batch, 10)
    counted = train.Phase("counted", step, whole.state, whole.batch, 10, loop_trips=4)
    _, record = train.plan([whole, parts, counted])
    flops = [phase["flops_per_step"] for phase in record["phases"]]
    assert flops[1] < 0.35 * flops[0]
    assert flops[2] == pytest.approx(flops[0], rel=0.1)


def test_the_costing_compile_skips_llvm_work_but_not_the_numbers():
    """step_cost compiles with LLVM's optimisation off: the FLOPs and buffer sizes must be those of the
    default (optimised) compile of the same lowered step, here a small CNN's."""
    from unlearnx.train import _cost

    model = models.cnn((8, 8, 1), 10, channels=(4, 8), hidden=16)
    optimizer = optax.sgd(0.1)
    step = jax.jit(train.make_train_step(model, optimizer))
    state = jax.eval_shape(
        lambda: train.TrainState.create(model.init(jax.random.key(0)), optimizer, jax.random.key(1))
    )
    batch = {
        "x": jax.ShapeDtypeStruct((32, 8, 8, 1), jnp.float32),
        "y": jax.ShapeDtypeStruct((32,), jnp.int32),
    }
    lowered = step.lower(state, batch)
    fast, default = lowered.compile(compiler_options=_cost.COSTING_OPTIONS), lowered.compile()
    assert fast.cost_analysis()["flops"] == default.cost_analysis()["flops"] > 0
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"):
        assert getattr(fast.memory_analysis(), field) == getattr(default.memory_analysis(), field)

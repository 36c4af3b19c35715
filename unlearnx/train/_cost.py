"""What a training run will cost, before it runs: one step compiled on abstract shapes, XLA's FLOP count and
per-device memory, and the hours that implies on the detected device and on reference accelerators."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unlearnx import parallel

__all__ = ["DEFAULT_UTILISATION", "REFERENCE_DEVICES", "StepCost", "device_peak_flops", "step_cost"]

# Dense bf16 peak FLOP/s per chip (vendor figures); float32 matmuls run at this rate by default on TPU
# (bf16 passes) and near it on H100 (TF32 is half of it: the estimates are optimistic there).
REFERENCE_DEVICES: dict[str, float] = {"TPU v4": 275e12, "H100": 989e12}
_KNOWN_PEAKS: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}
DEFAULT_UTILISATION = 0.4  # assumed model-FLOP utilisation for the hour estimates


@functools.cache
def _measured_cpu_flops() -> float:
    """Achieved float32 matmul FLOP/s of this host's devices (a CPU has no vendor peak to quote)."""
    a = jnp.ones((512, 512), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    started = time.perf_counter()
    for _ in range(10):
        matmul(a).block_until_ready()
    return 10 * 2 * 512**3 / (time.perf_counter() - started)


def device_peak_flops(device: jax.Device | None = None) -> tuple[str, float]:
    """The peak FLOP/s of ``device``: the vendor bf16 peak of a known accelerator, or a measured matmul rate.

    A CPU or an unknown chip has no vendor peak to quote: ten 512 × 512 float32 matmuls are timed once per
    process.

    Args:
        device: the device (default: the first).

    Returns:
        ``(kind, FLOP/s)``; a measured kind ends with ``" (measured)"``.

    Examples:
        >>> kind, flops = device_peak_flops()
        >>> kind.endswith("(measured)") or flops >= 1e14, flops > 0
        (True, True)
    """
    device = jax.devices()[0] if device is None else device
    kind = device.device_kind
    for name, peak in _KNOWN_PEAKS.items():
        if name.lower() in kind.lower():
            return kind, peak
    return f"{kind} (measured)", _measured_cpu_flops()


class StepCost(NamedTuple):
    """The cost of one training loop, from one step compiled for its real shapes and mesh.

    Attributes:
        name: the loop.
        steps: steps it runs.
        devices: devices in its mesh.
        params: parameter count (``state.variables["params"]`` of a :class:`TrainState`, else every leaf).
        flops_per_step: XLA's FLOP count of one step, summed over devices.
        argument_bytes, output_bytes, temp_bytes: XLA's per-device buffer sizes of the compiled step.

    Examples:
        >>> cost = StepCost("fit", steps=1000, devices=4, params=10, flops_per_step=3.6e12,
        ...                 argument_bytes=2, output_bytes=2, temp_bytes=4)
        >>> cost.peak_bytes, cost.hours(1e12, utilisation=0.25)  # 3.6e15 FLOP / (4 · 1e12 · 0.25) s
        (8, 1.0)
    """

    name: str
    steps: int
    devices: int
    params: int
    flops_per_step: float
    argument_bytes: int
    output_bytes: int
    temp_bytes: int

    @property
    def peak_bytes(self) -> int:
        """Per-device memory the step needs at once: inputs, outputs and temporaries (no donation)."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes

    def hours(
        self, flops_per_second: float, chips: int | None = None, utilisation: float = DEFAULT_UTILISATION
    ) -> float:
        """Estimated hours on ``chips`` (default: this mesh's device count) of the given peak rate."""
        chips = self.devices if chips is None else chips
        return self.flops_per_step * self.steps / (flops_per_second * chips * utilisation) / 3600.0


def _abstract(tree: Any, sharding_of: Callable[[Any], NamedSharding]) -> Any:
    def leaf(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding_of(x))

    return jax.tree.map(leaf, tree)


def _param_count(state: Any) -> int:
    params = state.variables["params"] if hasattr(state, "variables") else state
    return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


#: XLA options of the compile that costs a step: the step never runs, and XLA's FLOP count and buffer sizes
#: come from its HLO passes, before LLVM, so LLVM's optimisation is skipped (this halved ``--plan`` for the
#: GraNet VGG-19 preset, 251 s to 130 s on 8 simulated CPU devices, with identical FLOPs and memory).
COSTING_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def step_cost(
    step_fn: Callable[[Any, Mapping[str, Any]], Any],
    state: Any,
    batch: Mapping[str, Any],
    num_steps: int,
    *,
    name: str = "train",
    mesh: Mesh | None = None,
    shard_params: bool = False,
    batch_axis: int = 0,
) -> StepCost:
    """Compiles ``step_fn(state, batch)`` for the shapes, dtypes and shardings :func:`loop` would use, without
    running it, and returns XLA's cost and memory figures.

    ``state`` and ``batch`` may be concrete or abstract (``jax.eval_shape`` output / ``ShapeDtypeStruct``),
    so a paper-sized model is costed without allocating it; ``batch`` is the global batch.

    Args:
        step_fn: the loop's step function.
        state: the train state (or its shapes).
        batch: one global batch (or its shapes).
        num_steps: steps of the loop.
        name: the loop's name.
        mesh: the mesh (default: every device).
        shard_params: cost the parameter-sharded layout instead of the replicated one.
        batch_axis: the example axis of the batch.

    Returns:
        A :class:`StepCost`.

    Examples:
        A step with one [8, 16] × [16, 4] matmul, costed on shapes only (nothing is allocated):

        >>> import jax, jax.numpy as jnp
        >>> def step(state, batch):
        ...     return state, {"loss": jnp.sum(batch["x"] @ state["w"])}
        >>> state = {"w": jax.ShapeDtypeStruct((16, 4), jnp.float32)}
        >>> batch = {"x": jax.ShapeDtypeStruct((8, 16), jnp.float32)}
        >>> cost = step_cost(step, state, batch, 100)
        >>> cost.params, cost.steps, cost.flops_per_step >= 2 * 8 * 16 * 4  # 16·4 weights; 2·8·16·4 FLOPs
        (64, 100, True)
    """
    mesh = parallel.data_mesh() if mesh is None else mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    if shard_params:
        state_shardings = parallel.param_shardings(state, mesh)
        abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state, state_shardings
        )
    else:
        abstract_state = _abstract(state, lambda x: replicated)
    split = PartitionSpec(*([None] * batch_axis), mesh.axis_names[0])
    batch_sharding = NamedSharding(mesh, split)
    abstract_batch = _abstract(batch, lambda x: batch_sharding)
    jitted = step_fn if hasattr(step_fn, "lower") else jax.jit(step_fn)
    compiled = jitted.lower(abstract_state, abstract_batch).compile(compiler_options=COSTING_OPTIONS)
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    memory = compiled.memory_analysis()
    devices = mesh.devices.size
    return StepCost(
        name=name,
        steps=int(num_steps),
        devices=devices,
        params=_param_count(state),
        flops_per_step=float(analysis.get("flops", float("nan"))) * devices,  # XLA counts one device
        argument_bytes=int(getattr(memory, "argument_size_in_bytes", 0)),
        output_bytes=int(getattr(memory, "output_size_in_bytes", 0)),
        temp_bytes=int(getattr(memory, "temp_size_in_bytes", 0)),
    )

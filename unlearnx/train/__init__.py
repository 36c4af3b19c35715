"""The training engine: train state, jitted steps, one sharded, checkpointed, preemptible loop.

- :class:`TrainState`, :func:`make_train_step`, :func:`example_losses`, :func:`next_token_losses`,
  :func:`predict`: the state pytree, the supervised step and objectives, batched evaluation.
- :func:`loop`: any ``step(state, batch)`` over ``num_steps`` steps, data-parallel over a mesh, with orbax
  checkpoints under a save policy, exact resume, records to JSONL and TensorBoard (:class:`MetricLogger`).
- :func:`fit`: supervised training over epochs of in-memory arrays, on :func:`loop`.
- :func:`step_cost`, :class:`StepCost`, :func:`device_peak_flops`: a loop's FLOPs, memory per device and
  estimated hours, from one step compiled on abstract shapes (nothing runs, nothing is allocated).
- :class:`Phase`, :func:`supervised_phase`, :func:`plan`: a study's loops priced together before it runs.
- :class:`Preempted`, :func:`install_sigterm_handler`, :func:`request_stop`, :func:`stop_at`,
  :func:`clear_stop`: the one stop mechanism (SIGTERM, user requests and tests alike): the loop
  checkpoints and raises :class:`Preempted`; a rerun resumes.
"""

from unlearnx.train._cost import (
    DEFAULT_UTILISATION,
    REFERENCE_DEVICES,
    StepCost,
    device_peak_flops,
    step_cost,
)
from unlearnx.train._fit import fit
from unlearnx.train._loop import loop
from unlearnx.train._plan import Phase, plan, supervised_phase
from unlearnx.train._preemption import (
    Preempted,
    clear_stop,
    install_sigterm_handler,
    request_stop,
    stop_at,
    stop_requested,
)
from unlearnx.train._step import TrainState, example_losses, make_train_step, next_token_losses, predict
from unlearnx.train._writers import MetricLogger

__all__ = [
    "DEFAULT_UTILISATION",
    "REFERENCE_DEVICES",
    "MetricLogger",
    "Phase",
    "Preempted",
    "StepCost",
    "TrainState",
    "clear_stop",
    "device_peak_flops",
    "example_losses",
    "fit",
    "install_sigterm_handler",
    "loop",
    "make_train_step",
    "next_token_losses",
    "plan",
    "predict",
    "request_stop",
    "step_cost",
    "stop_at",
    "stop_requested",
    "supervised_phase",
]

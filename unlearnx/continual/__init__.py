"""Continual learning: rehearsal schedules, count-matrix environments, replay buffers, EWC / online EWC /
SI as optax transforms, and the accuracy-matrix metrics."""

from unlearnx.continual._environment import ENVIRONMENTS, count_matrix
from unlearnx.continual._ewc import EwcState, OnlineEwcState, consolidate_online_ewc, ewc, online_ewc
from unlearnx.continual._si import SiState, consolidate_si, synaptic_intelligence
from unlearnx.continual.buffer import ReplayBuffer, buffer_add, buffer_init, buffer_sample
from unlearnx.continual.metrics import cl_metrics
from unlearnx.continual.rehearsal import KINDS, rehearsal_counts

__all__ = [
    "ENVIRONMENTS",
    "KINDS",
    "EwcState",
    "OnlineEwcState",
    "ReplayBuffer",
    "SiState",
    "buffer_add",
    "buffer_init",
    "buffer_sample",
    "cl_metrics",
    "consolidate_online_ewc",
    "consolidate_si",
    "count_matrix",
    "ewc",
    "online_ewc",
    "rehearsal_counts",
    "synaptic_intelligence",
]

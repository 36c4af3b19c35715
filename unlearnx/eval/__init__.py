"""Evaluation: classifier scores and membership-inference attacks; RESTOR fact metrics (``restor``);
induction, copying and ICL scores (``induction``); scaling-law fits (``scaling``); concept-erasure metrics."""

from unlearnx.eval import induction, restor, scaling
from unlearnx.eval.classification import accuracy, cross_entropy, entropy
from unlearnx.eval.erasure import attack_success_rate, erased_rate, kv_output_change, preservation_accuracy
from unlearnx.eval.mia import entropy_mia, loss_mia

__all__ = [
    "accuracy",
    "attack_success_rate",
    "cross_entropy",
    "entropy",
    "entropy_mia",
    "erased_rate",
    "induction",
    "kv_output_change",
    "loss_mia",
    "preservation_accuracy",
    "restor",
    "scaling",
]

"""Unlearning: Selective Synaptic Dampening (SSD; LFSSD through its importances; ASSD α), the data of the
standard retraining baselines (finetune, NegGrad+, amnesiac, bad teacher), LM unlearning losses
(``objectives``: GA, GradDiff, KL, NPO, SimNPO, task vector) and SSD-localised updates (``localize``)."""

from unlearnx.unlearn import localize, objectives
from unlearnx.unlearn._baselines import ascent_mixture, bad_teacher_set, random_wrong_labels, relabel_mixture
from unlearnx.unlearn._ssd import assd_alpha, dampening_factors, ssd

__all__ = [
    "ascent_mixture",
    "assd_alpha",
    "bad_teacher_set",
    "dampening_factors",
    "localize",
    "objectives",
    "random_wrong_labels",
    "relabel_mixture",
    "ssd",
]

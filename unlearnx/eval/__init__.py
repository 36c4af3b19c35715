"""Evaluation: per-example scores of classifier outputs and membership-inference attacks."""

from unlearnx.eval import induction, scaling
from unlearnx.eval.classification import accuracy, cross_entropy, entropy
from unlearnx.eval.mia import entropy_mia, loss_mia

__all__ = ["accuracy", "cross_entropy", "entropy", "entropy_mia", "induction", "loss_mia", "scaling"]

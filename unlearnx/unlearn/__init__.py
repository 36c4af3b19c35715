"""Unlearning transforms: Selective Synaptic Dampening (SSD, LFSSD via its importances, ASSD α)."""

from unlearnx.unlearn.ssd import assd_alpha, dampening_factors, ssd

__all__ = ["assd_alpha", "dampening_factors", "ssd"]

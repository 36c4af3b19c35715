"""Experiment entrypoints, one module per paper; ``python -m experiments`` lists and runs them."""

import importlib

#: Name -> module of every experiment, in the order the quick suite runs them.
EXPERIMENTS = {
    "ssd_forget": "experiments.ssd_forget",
    "granet_sparse": "experiments.granet_sparse",
    "powerlaw_rehearsal": "experiments.powerlaw_rehearsal",
    "rece_erase": "experiments.rece_erase",
    "restor_recovery": "experiments.restor_recovery",
    "repeated_data": "experiments.repeated_data",
}


def load(name: str):
    """Imports the experiment module ``name`` (a ValueError lists the known ones)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])

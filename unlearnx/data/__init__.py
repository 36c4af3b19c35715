"""Datasets for unlearning experiments: loading, forget/retain splits and batching."""

from unlearnx.data.batching import batches, num_batches
from unlearnx.data.dataset import Dataset
from unlearnx.data.sources import load
from unlearnx.data.splits import forget_retain_split

__all__ = ["Dataset", "batches", "forget_retain_split", "load", "num_batches"]

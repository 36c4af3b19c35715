"""Datasets: loading (images, Python-stdlib text), generated worlds (knowledge, captioned shapes),
repeated-data mixtures, forget/retain splits and batching."""

from unlearnx.data import knowledge, knowledge_corpus
from unlearnx.data._repeated_spans import RepeatedSpans, repeated_spans
from unlearnx.data.augment import crop_and_flip
from unlearnx.data.batching import EpochBatches, batches, num_batches
from unlearnx.data.dataset import Dataset
from unlearnx.data.repeated import RepeatedMixture, repeated_mixture
from unlearnx.data.shapes import captioned_shapes
from unlearnx.data.sources import DatasetInfo, describe, load
from unlearnx.data.splits import forget_retain_split

__all__ = [
    "Dataset",
    "DatasetInfo",
    "EpochBatches",
    "RepeatedMixture",
    "RepeatedSpans",
    "batches",
    "captioned_shapes",
    "crop_and_flip",
    "describe",
    "forget_retain_split",
    "knowledge",
    "knowledge_corpus",
    "load",
    "num_batches",
    "repeated_mixture",
    "repeated_spans",
]

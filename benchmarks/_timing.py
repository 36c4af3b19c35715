"""Timing helpers shared by the benchmarks: medians of warm calls, every result blocked until ready."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn within every repeat (so background load drifts hit
    all of them alike), after one warm-up call each that compiles."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after a warm-up call that compiles."""
    return interleaved_medians({"fn": fn}, repeats)["fn"]

"""What every experiment's report shares: mean ± std with one rule for missing and diverged values,
Markdown tables, and figures saved the same way (process 0 only)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from unlearnx import parallel

__all__ = [
    "diverged",
    "diverged_line",
    "figure",
    "finite",
    "fmt",
    "mean_std_plot",
    "markdown_table",
    "mean_std",
    "scored",
    "stat",
]

DIVERGED = "diverged"


def finite(*trees: Any) -> bool:
    """Whether every leaf of ``trees`` (parameters, logits, losses) is finite."""
    import jax

    return all(bool(np.isfinite(np.asarray(leaf)).all()) for leaf in jax.tree.leaves(trees))


def diverged(keys: Iterable[str]) -> dict[str, float]:
    """The metrics of a diverged model (non-finite parameters or outputs): +inf each, so :func:`fmt` shows
    "diverged", a mean over seeds that includes it is +inf too (never a number), and ``metrics.json``
    stores null; the experiment lists the model under ``"diverged"`` there."""
    return dict.fromkeys(keys, float("inf"))


def scored(value: Any, has_diverged: bool) -> Any:
    """``value``, or +inf (:func:`diverged`) when its model has diverged: the form that survives a JSON
    round trip is a stored ``"diverged": true`` next to a null, turned back into +inf here."""
    return float("inf") if has_diverged else value


def diverged_line(labels: Sequence[str]) -> list[str]:
    """The report's mark for diverged models (none: no line)."""
    if not labels:
        return []
    count = len(labels)
    return [
        f"**Diverged ({count}; metrics null in `metrics.json`, shown as diverged):** {', '.join(labels)}."
    ]


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and population standard deviation, ignoring missing (``None``/NaN) entries; NaN when none is
    left; +inf (a diverged model, :func:`diverged`) when any entry is infinite."""
    array = np.asarray([np.nan if v is None else v for v in values], np.float64)
    array = array[~np.isnan(array)]
    if np.isinf(array).any():
        return float("inf"), float("nan")
    if array.size == 0:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std())


def stat(values: Iterable[float | None]) -> dict[str, float]:
    """``{"mean", "std"}`` of :func:`mean_std` (what ``metrics.json`` stores for a quantity over seeds)."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std}


def fmt(value: Mapping[str, Any] | float | None, *, digits: int = 1, scale: float = 1.0) -> str:
    """A table cell: ``mean ± std`` (× ``scale``, ``digits`` decimals) for a :func:`stat`, the number alone
    for a scalar or a zero/undefined std, ``"n/a"`` when nothing was measured (``None``, or NaN: every run
    missing), and ``"diverged"`` for an infinite value; a non-finite value is never shown as a number."""
    if isinstance(value, Mapping):
        mean, std = value.get("mean"), value.get("std")
    else:
        mean, std = value, None
    if mean is None:
        return "n/a"
    if not np.isfinite(mean):
        return DIVERGED if np.isinf(mean) else "n/a"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and np.isfinite(std) and std > 0:
        text += f" ± {std * scale:.{digits}f}"
    return text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std_plot(
    draw: Any, x: Any, stats: Iterable[Mapping[str, float]], *, scale: float = 1.0, **style: Any
):
    """Draws :func:`stat` entries against ``x`` with ``draw`` (an axis's ``errorbar`` or ``bar``): their means
    × ``scale``, with error bars of ± std × ``scale`` (``capsize`` 3 unless ``style`` sets it)."""
    stats = list(stats)
    means, stds = [s["mean"] * scale for s in stats], [s["std"] * scale for s in stats]
    return draw(x, means, yerr=stds, **{"capsize": 3, **style})


@contextlib.contextmanager
def figure(run_dir: str, name: str, *, dpi: int = 120, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """``with figure(run_dir, "accuracy.png", figsize=(7, 4)) as (fig, ax):`` draws one figure and saves
    it to ``run_dir/name`` (tight layout; Agg backend, so no display is needed), on process 0 only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        if parallel.is_main_process():
            fig.tight_layout()
            fig.savefig(os.path.join(run_dir, name), dpi=dpi)
    finally:
        plt.close(fig)

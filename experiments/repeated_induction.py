"""Report and plots of the repeated-data study's span mixture (``repeated_data --preset induction``).

Every training and held-out sequence carries a span followed by its repeat
(:func:`unlearnx.data.repeated_spans`, ``span_lengths``; the repeat up to ``span_gap`` tokens later; the span
random bytes or, with ``span_text``, a chunk of the same split's text), the fallback of
``shared/papers/repeated_data.md`` §7 on which two-layer attention models can form induction heads.
Random-byte spans stand out from text, and with adjacent copies the models copied them without induction
heads; text spans at a random distance leave content matching as the way to copy. The report first
checks that heads formed in the unique-data runs (f = 0): the maximum per-head prefix-matching score
against its chance level, uniform causal attention on the probe
(:func:`unlearnx.eval.induction.chance_prefix_matching`). Then, per (f, E), mean ± std over seeds of:
the maximum prefix-matching score, the span copying loss (loss on the second copies of the held-out
sequences' spans, in context), the text copying loss (held-out text segments of seq_len / 2 bytes repeated
twice), the held-out test loss and the repeated-subset loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.report import diverged_line, figure, fmt, markdown_table, mean_std_plot
from unlearnx.data import RepeatedSpans, repeated_spans
from unlearnx.eval import induction

#: a head counts as an induction head when its prefix-matching score reaches this (half its attention on
#: the token after the earlier occurrence)
FORMED = 0.5

COLUMNS = (
    ("prefix_matching_max", "max prefix matching"),
    ("span_copying_loss", "span copying loss"),
    ("copying_loss", "text copying loss"),
    ("test_loss", "test loss"),
    ("repeated_loss", "repeated-subset loss"),
)


def with_spans(config, rows: np.ndarray, seed: int, source: np.ndarray | None = None) -> RepeatedSpans:
    """``rows`` ``[n, seq_len]`` with a span and its repeat in each (``config.span_lengths``), the repeat up
    to ``config.span_gap`` tokens after it; the span is random bytes, or with ``config.span_text`` a chunk of
    ``source`` (text of the same split, so the span cannot be told from its surroundings by its bytes)."""
    low, high = config.span_lengths
    source = source if getattr(config, "span_text", False) else None
    gap = getattr(config, "span_gap", 0)
    return repeated_spans(
        rows, min_span=low, max_span=high, vocab_size=256, max_gap=gap, source=source, seed=seed
    )


def training_stream(config, tokens: np.ndarray) -> np.ndarray:
    """The training token stream: ``tokens`` itself, or with ``span_lengths`` its seq_len-token rows (the
    mixture's sequence slots) each given a span and its repeat, flattened."""
    if not config.span_lengths:
        return tokens
    rows = np.asarray(tokens)[: len(tokens) // config.seq_len * config.seq_len]
    return with_spans(config, rows.reshape(-1, config.seq_len), 2, np.asarray(tokens)).tokens.reshape(-1)


def final_test_rows(config, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The final test rows (the first ``final_eval_sequences`` of ``held_out``, with spans when
    ``span_lengths``) and the copy mask over the probe batch (test rows, then 2 · ``probe_batch`` probes)."""
    final = held_out[: config.final_eval_sequences]
    mask = np.zeros((len(held_out) + config.probe_batch, config.seq_len), bool)
    if config.span_lengths:
        spanned = with_spans(config, final, 3, np.asarray(held_out).reshape(-1))
        final, mask[: len(final)] = spanned.tokens, spanned.copy_mask()
    return final, mask


def chance(config) -> float:
    """The probe's chance level: rows of seq_len / 2 random bytes repeated twice."""
    return induction.chance_prefix_matching(config.seq_len, config.seq_len // 2)


def formation(config, metrics: dict[str, Any]) -> dict[str, Any]:
    """Per attention-only size, the f = 0 runs' maximum prefix-matching score per seed, its ratio to chance
    and whether every seed has a head at or above :data:`FORMED`."""
    out = {}
    unique = [i for i, run in enumerate(metrics["runs"]) if run["fraction"] == 0]
    for label, size in metrics["sizes"].items():
        scores = np.asarray(size["per_run"]["prefix_matching"], np.float64)[unique].max(axis=(1, 2))
        out[label] = {
            "max_per_seed": scores.tolist(),
            "chance": chance(config),
            "ratio_to_chance": (scores / chance(config)).tolist(),
            "formed": bool(np.all(scores >= FORMED)),
        }
    return out


def _setting_label(entry: dict[str, Any]) -> str:
    return "f = 0 (unique)" if entry["fraction"] == 0 else f"f = {entry['fraction']:g}, E = {entry['epochs']}"


def table(metrics: dict[str, Any], label: str) -> str:
    """One size's settings × the measures, mean ± std over seeds."""
    size = metrics["sizes"][label]
    repeated = _repeated_sequences(metrics)
    rows = []
    for entry in size["settings"]:
        cells = [fmt(entry.get(key), digits=3) for key, _ in COLUMNS]
        if entry["fraction"] == 0:
            cells[-1] = "–"
        rows.append([_setting_label(entry), repeated.get((entry["fraction"], entry["epochs"]), 0), *cells])
    return markdown_table(["setting", "repeated sequences m", *(name for _, name in COLUMNS)], rows)


def _repeated_sequences(metrics: dict[str, Any]) -> dict[tuple[float, int], int]:
    runs, counts = metrics["runs"], metrics["repeated_sequences"]
    return {(run["fraction"], run["epochs"]): count for run, count in zip(runs, counts, strict=True)}


def add_summary(config, metrics: dict[str, Any], mixtures) -> None:
    """Adds ``repeated_sequences`` (m per run) and ``formation`` to ``metrics`` in place."""
    metrics["repeated_sequences"] = [mixture.num_repeated_sequences for mixture in mixtures]
    metrics["formation"] = formation(config, metrics)


def report(config, metrics: dict[str, Any], timing: dict[str, Any]) -> str:
    """``report.md`` of the span mixture: head formation at f = 0, then the measures per (f, E)."""
    budget = config.steps * config.batch_size * config.seq_len
    low, high = config.span_lengths
    lines = [
        "# Repeated data on a span mixture: induction heads and copying vs repetition",
        "",
        f"Corpus `{config.dataset}` bytes cut into sequences of {config.seq_len}; each sequence carries a "
        f"{'text chunk of the same split' if getattr(config, 'span_text', False) else 'random byte span'} "
        f"of ℓ ∈ [{low}, {high}] followed by its repeat "
        + (f"0–{config.span_gap} tokens later" if getattr(config, "span_gap", 0) else "right after it")
        + f" (random start). Budget D = "
        f"{budget:,} tokens ({config.steps} steps × {config.batch_size} × {config.seq_len}), one pass; "
        f"f = {config.fraction:g} with E ∈ {list(config.repeat_epochs)}"
        + (
            f", fractions {list(config.sweep_fractions)} at E = {config.sweep_epochs}"
            if config.sweep_fractions
            else ""
        )
        + f"; seeds {list(config.seeds)}; "
        f"AdamW {config.lr:g} (warm-up {config.warmup_steps}, cosine). Losses in nats per byte, "
        "mean ± std over seeds. Not tuned.",
        "",
        *diverged_line(metrics["diverged"]),
        "## Do induction heads form without repetition? (f = 0)",
        "",
        f"Prefix-matching probe: {config.probe_batch} rows of {config.seq_len // 2} random "
        f"{'printable-ASCII bytes (32–126)' if getattr(config, 'span_text', False) else 'bytes'} repeated "
        f"twice; chance (uniform causal attention) = {chance(config):.4f}. A head counts as an induction "
        f"head at a score ≥ {FORMED}.",
        "",
    ]
    for label, entry in metrics["formation"].items():
        scores = ", ".join(f"{s:.3f} ({r:.0f}× chance)" for s, r in
                           zip(entry["max_per_seed"], entry["ratio_to_chance"], strict=True))  # fmt: skip
        verdict = "formed in every seed" if entry["formed"] else "not formed in every seed"
        lines.append(f"- {label}: max prefix matching per seed {scores}: {verdict}.")
    for label in metrics["sizes"]:
        lines += ["", f"## {label}: measures per setting", "", table(metrics, label)]
    lines += ["", f"Wall time: {timing['total']:.1f} s on {timing['devices']} device(s).", ""]
    return "\n".join(lines)


def _against_epochs(ax, config, size: dict[str, Any], key: str, colour: int) -> None:
    """``key`` against E at f = ``config.fraction`` (circles), the fraction sweep (squares) and f = 0
    (dashed), mean ± std over seeds."""
    main = [e for e in size["settings"] if e["fraction"] == config.fraction]
    style = dict(marker="o", color=f"C{colour}", label=f"f = {config.fraction:g}")
    mean_std_plot(ax.errorbar, [e["epochs"] for e in main], [e[key] for e in main], **style)
    sweep = [e for e in size["settings"] if e["fraction"] not in (0, config.fraction)]
    for j, entry in enumerate(sweep):
        style = dict(marker="s", color=f"C{colour + j + 1}", label=f"f = {entry['fraction']:g}")
        mean_std_plot(ax.errorbar, [entry["epochs"]], [entry[key]], **style)
    ax.axhline(size["settings"][0][key]["mean"], color=f"C{colour}", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("repeat epochs E; dashed: f = 0")


def plot(config, metrics: dict[str, Any], run_dir: str) -> None:
    """``induction_vs_epochs.png``: per size (rows) each measure (columns) against E; ``prefix_matching.png``:
    the per-head scores at f = 0 and at the largest E of f = ``config.fraction``."""
    sizes, measures = metrics["sizes"], COLUMNS[:4]
    shape = dict(nrows=len(sizes), ncols=len(measures), squeeze=False)
    size_in = (4.2 * len(measures), 3.6 * len(sizes))
    with figure(run_dir, "induction_vs_epochs.png", figsize=size_in, **shape) as (fig, axes):
        for row, (label, size) in enumerate(sizes.items()):
            for ax, (key, name) in zip(axes[row], measures, strict=True):
                _against_epochs(ax, config, size, key, 0)
                ax.set_title(f"{label}: {name}", fontsize="small")
            axes[row][0].axhline(chance(config), color="grey", linestyle=":", linewidth=1, label="chance")
            axes[row][0].legend(fontsize="x-small")
    shape = dict(nrows=len(sizes), ncols=2, figsize=(7, 2.4 * len(sizes) + 0.6), squeeze=False)
    with figure(run_dir, "prefix_matching.png", dpi=110, **shape) as (fig, axes):
        for row, (label, size) in enumerate(sizes.items()):
            last = max(size["settings"], key=lambda e: (e["fraction"] == config.fraction, e["epochs"]))
            for ax, entry in zip(axes[row], (size["settings"][0], last), strict=True):
                image = ax.imshow(np.asarray(entry["prefix_matching"]), vmin=0, vmax=1, cmap="magma")
                ax.set_title(f"{label}: {_setting_label(entry)}", fontsize="small")
                ax.set_xlabel("head")
                ax.set_ylabel("layer")
            fig.colorbar(image, ax=axes[row].tolist(), label="prefix matching")

"""The repeated-data study's span mixture (``repeated_data --preset induction``): the data, an end-to-end
smoke run with its report and plots, and config errors."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import __main__ as cli
from experiments import repeated_data, repeated_induction
from unlearnx.data import text

SPANS = dataclasses.replace(
    repeated_data.PRESETS["smoke"], sizes=(), span_lengths=(3, 8), steps=8, eval_points=3,
    repeat_epochs=(2,), sweep_fractions=(0.5,), seeds=(0, 1),
)  # fmt: skip


def _has_repeated_span(row: np.ndarray, shortest: int) -> bool:
    length = len(row)
    return any(
        np.array_equal(row[a : a + n], row[a + n : a + 2 * n])
        for n in range(shortest, length // 2 + 1)
        for a in range(length - 2 * n + 1)
    )


def test_every_training_and_test_sequence_carries_a_span_and_its_repeat():
    data = repeated_data.Data(SPANS)
    low, high = SPANS.span_lengths
    for run in range(len(data.runs)):
        batch = data.batch(0, SPANS.batch_size, [run])[0]
        assert all(_has_repeated_span(row, low) for row in batch)
    assert all(_has_repeated_span(row, low) for row in data.final_test)
    # the copy mask marks second-copy targets of the final test rows only, (ℓ − 1) per row
    final = SPANS.final_eval_sequences
    mask = data.copy_mask
    assert mask.shape == data.probes.shape and not mask[final:].any()
    counts = mask[:final].sum(axis=1)
    assert np.all((counts >= low - 1) & (counts <= high - 1))
    rows, marked = np.nonzero(mask[:final])
    for i, t in zip(rows, marked, strict=True):
        n = counts[i] + 1
        assert data.final_test[i, t] == data.final_test[i, t - n]
    # the text copy probes and the random-token probes are the plain-text mode's
    plain = repeated_data.Data(dataclasses.replace(SPANS, span_lengths=()))
    np.testing.assert_array_equal(data.probes[final:], plain.probes[final:])
    raw = text.load(SPANS.dataset, "test").tokens
    assert not np.array_equal(data.final_test, plain.final_test) and len(raw) > 0


def test_text_spans_with_a_gap_come_from_the_split_and_repeat_after_the_gap():
    config = dataclasses.replace(SPANS, seq_len=32, span_lengths=(4, 6), span_gap=8, span_text=True)
    train = np.asarray(text.load(config.dataset, "train").tokens)
    rows = np.zeros((12, config.seq_len), np.int64) + 1000  # ids outside the byte range mark the base
    spanned = repeated_induction.with_spans(config, rows, 0, train)
    assert spanned.gaps.max() > 0 and np.all(spanned.gaps <= 8)
    windows = {n: np.lib.stride_tricks.sliding_window_view(train, n) for n in range(4, 7)}
    for i in range(len(rows)):
        a, n, g = int(spanned.starts[i]), int(spanned.lengths[i]), int(spanned.gaps[i])
        span = spanned.tokens[i, a : a + n]
        np.testing.assert_array_equal(span, spanned.tokens[i, a + n + g : a + 2 * n + g])
        assert np.any(np.all(windows[n] == span, axis=1))  # a chunk of the training text
    # the flags off: random bytes right after the span, as before
    plain = repeated_induction.with_spans(SPANS, rows, 0, train)
    assert not plain.gaps.any()
    # with text spans the induction probe's random bytes are printable ASCII, the same draw shifted
    probes = repeated_data.Data(config).probes[-config.probe_batch :]
    reference = repeated_data.Data(dataclasses.replace(config, span_text=False)).probes[-config.probe_batch :]
    assert probes.min() >= 32 and probes.max() <= 126 and reference.max() > 126
    half = config.seq_len // 2
    np.testing.assert_array_equal(probes[:, :half], probes[:, half:])


def test_smoke_run_reports_head_formation_and_the_span_measures(tmp_path, monkeypatch):
    monkeypatch.setitem(repeated_data.PRESETS, "spans_test", SPANS)
    run_dir = cli.run_one("repeated_data", "spans_test", [], out=str(tmp_path), resume=False)
    for name in ("metrics.json", "report.md", "induction_vs_epochs.png", "prefix_matching.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    (label,) = metrics["sizes"]
    size = metrics["sizes"][label]
    span_loss = np.asarray(size["per_run"]["span_copying_loss"], np.float64)
    assert span_loss.shape == (len(metrics["runs"]),) and np.all(np.isfinite(span_loss))
    chance = repeated_induction.chance(SPANS)
    assert chance == pytest.approx(np.mean(1.0 / np.arange(17, 33)))  # t = 16..31 of a 32-token probe
    formation = metrics["formation"][label]
    prefix = np.asarray(size["per_run"]["prefix_matching"])
    unique = [i for i, run in enumerate(metrics["runs"]) if run["fraction"] == 0]
    np.testing.assert_allclose(formation["max_per_seed"], prefix[unique].max(axis=(1, 2)))
    assert formation["formed"] is False  # 8 steps form no head
    m = dict(zip(map(str, range(len(metrics["runs"]))), metrics["repeated_sequences"], strict=True))
    assert m["0"] == 0 and all(v >= 1 for k, v in m.items() if metrics["runs"][int(k)]["fraction"] > 0)
    report_text = open(os.path.join(run_dir, "report.md")).read()
    assert f"chance (uniform causal attention) = {chance:.4f}" in report_text
    assert "| f = 0.1, E = 2 |" in report_text and "span copying loss" in report_text


def test_span_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"span_lengths must be \(\) or \(min, max\)"):
        repeated_data.main(dataclasses.replace(SPANS, span_lengths=(3,)), str(tmp_path))
    with pytest.raises(ValueError, match="max_span must lie in"):
        repeated_data.Data(dataclasses.replace(SPANS, span_lengths=(3, 17)))
    with pytest.raises(ValueError, match="at least 3 sizes"):  # plain text still needs the scaling fit
        repeated_data.main(dataclasses.replace(SPANS, span_lengths=()), str(tmp_path))

"""The RESTOR experiment: registered, its presets are consistent, and a smoke run writes every output with
metrics that obey the definitions (R and F recomputed from the accuracies, cached checkpoints reused)."""

import json
import os

import pytest

import experiments
from experiments import __main__ as cli
from experiments import restor_recovery


def test_registered_and_presets_are_valid():
    assert experiments.load("restor_recovery") is restor_recovery
    for name in ("smoke", "quick", "paper"):
        config = restor_recovery.PRESETS[name]
        assert set(config.methods) <= set(restor_recovery.METHODS)
        assert set(config.masks) <= set(restor_recovery.MASKS)
    assert set(restor_recovery.PRESETS["paper"].ks) == {0, 1, 2, 3}


@pytest.mark.slow
def test_smoke_run(tmp_path, capsys):
    run_dir = cli.run_one("restor_recovery", "smoke", [], out=str(tmp_path), resume=False)
    for name in ("config.json", "metrics.json", "timing.json", "report.md", "recovery_vs_forgetting.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    printed = capsys.readouterr().out
    assert "## Localisation ablation" in printed and "## Logit probe" in printed
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    config = restor_recovery.PRESETS["smoke"]
    assert list(metrics["k"]) == [str(k) for k in config.ks]
    clean_acc = metrics["clean"]["acc_correct"]
    for entry in metrics["k"].values():
        corrupted = entry["corrupted"]
        expected = {
            f"{m}/{mask}/{'ssd_local' if local else 'full'}"
            for m in config.methods
            for mask in config.masks
            for local in (config.localize if m != "ssd" else (False,))
        }
        assert set(entry["runs"]) == expected
        for run in entry["runs"].values():
            if run["recovery"] is not None:
                gap = clean_acc - corrupted["acc_correct"]
                assert run["recovery"] == pytest.approx((run["acc_correct"] - corrupted["acc_correct"]) / gap)
            if run["forgetting"] is not None:
                ratio = run["rate_corrupted"] / corrupted["rate_corrupted"]
                assert run["forgetting"] == pytest.approx(1 - ratio)
        assert 0.0 <= entry["selected_fraction"]["doc"] <= 1.0
    # Clean and corrupted models are cached as checkpoints; a resumed run reuses them and reproduces metrics.
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "clean"))
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", f"corrupt_k{config.ks[0]}"))
    again = cli.run_one("restor_recovery", "smoke", [], out=str(tmp_path), resume=True)
    assert again == run_dir
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        assert json.load(handle) == metrics

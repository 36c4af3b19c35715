"""The experiment entrypoints: overrides, a smoke run's outputs, and an interrupted run resumed exactly."""

import json
import os

import pytest

from experiments import __main__ as cli
from experiments import report, runner, ssd_forget


def test_overrides_parse_by_annotation():
    config = runner.apply_overrides(
        ssd_forget.PRESETS["quick"],
        ["--seeds", "4,5", "--alpha=2.5", "--data-dir", "none", "--progress", "false", "--epochs", "7"],
    )
    assert config.seeds == (4, 5) and config.alpha == 2.5 and config.data_dir is None
    assert config.progress is False and config.epochs == 7
    with pytest.raises(ValueError, match="unknown option --alhpa"):
        runner.apply_overrides(config, ["--alhpa", "1"])
    with pytest.raises(ValueError, match="--epochs: cannot read 'many'"):
        runner.apply_overrides(config, ["--epochs", "many"])


def test_markdown_and_mean_std():
    assert report.markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert report.mean_std([1.0, 3.0, float("nan")]) == (2.0, 1.0)
    assert report.mean_std([None, 4.0, 0.0, None]) == (2.0, 2.0)  # missing values are left out
    assert all(value != value for value in report.mean_std([None, float("nan")]))  # nothing left: NaN


@pytest.mark.slow
def test_smoke_run_then_interrupted_and_resumed_run_give_the_same_metrics(tmp_path, capsys):
    straight = cli.run_one("ssd_forget", "smoke", [], out=str(tmp_path / "a"), resume=False)
    for name in (
        "config.json",
        "metrics.json",
        "timing.json",
        "report.md",
        "accuracy.png",
        "alpha_sweep.png",
        "class_sweep.png",
        "train_log.jsonl",
    ):
        assert os.path.getsize(os.path.join(straight, name)) > 0, name
    assert "| ssd |" in capsys.readouterr().out  # the table is printed

    # Stopped mid-epoch in the retrain oracle, then (resumed) mid-epoch in NegGrad+, then resumed to the end.
    for loop, step, resume in (("seed0/class3/retrain", 30, False), ("seed0/class3/neggrad+", 5, True)):
        with pytest.raises(SystemExit, match="rerun with --resume"):
            cli.run_one(
                "ssd_forget", "smoke", [], out=str(tmp_path / "b"), resume=resume, interrupt=(loop, step)
            )
    resumed = cli.run_one("ssd_forget", "smoke", [], out=str(tmp_path / "b"), resume=True)
    assert len(os.listdir(tmp_path / "b" / "ssd_forget")) == 1  # the interrupted run's directory was reused
    with open(os.path.join(resumed, "train_log.jsonl")) as handle:
        retrain_steps = [
            record["step"] for record in map(json.loads, handle) if record["phase"] == "seed0/class3/retrain"
        ]
    assert retrain_steps == sorted(set(retrain_steps))  # the resumed loop logged each epoch once
    with (
        open(os.path.join(straight, "metrics.json"), "rb") as a,
        open(os.path.join(resumed, "metrics.json"), "rb") as b,
    ):
        assert a.read() == b.read()

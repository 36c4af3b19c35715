"""The permuted-task rehearsal experiment: a smoke run's outputs, exact rehearsal budgets and determinism."""

import json
import os

import numpy as np
import pytest

from experiments import __main__ as cli
from experiments import powerlaw_rehearsal


@pytest.mark.slow
def test_smoke_run_writes_the_report_spends_the_budget_and_is_deterministic(tmp_path, capsys):
    run_dir = cli.run_one("powerlaw_rehearsal", "smoke", [], out=str(tmp_path / "a"), resume=False)
    for name in (
        "config.json",
        "metrics.json",
        "timing.json",
        "report.md",
        "accuracy_matrix.png",
        "task0_accuracy.png",
        "facilitation.png",
        "sweeps.png",
    ):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    printed = capsys.readouterr().out
    assert "## ACC / BWT / FWT / forgetting" in printed and "| power_law_1 |" in printed

    config = powerlaw_rehearsal.PRESETS["smoke"]
    tasks = config.num_tasks
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert set(metrics["runs"]) == set(config.methods)
    for method, by_seed in metrics["runs"].items():
        kind = powerlaw_rehearsal.SPECS[method][0]
        assert set(by_seed) == {str(seed) for seed in config.seeds}
        for run in by_seed.values():
            matrix = np.asarray(run["R"])
            assert matrix.shape == (tasks, tasks)
            assert np.all((matrix >= 0) & (matrix <= 1))
            assert [len(c) for c in run["counts"]] == list(range(tasks))
            for phase in range(tasks):
                spent = config.budget if kind != "none" and phase > 0 else 0
                assert sum(run["counts"][phase]) == spent, (method, phase)
                assert run["replayed"][phase] == spent, (method, phase)

    again = cli.run_one("powerlaw_rehearsal", "smoke", [], out=str(tmp_path / "b"), resume=False)
    with open(os.path.join(again, "metrics.json")) as first, open(os.path.join(run_dir, "metrics.json")) as b:
        assert json.load(first) == json.load(b)

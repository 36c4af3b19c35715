"""The permuted-task rehearsal experiment: a smoke run's outputs, exact rehearsal budgets, and a run stopped
twice mid-sequence (mid-phase, with finished sequences, carries and loop checkpoints on disk) that resumes
to the same ``metrics.json`` as an uninterrupted run."""

import json
import os

import numpy as np
import pytest

from experiments import __main__ as cli
from experiments import powerlaw_rehearsal


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        return json.load(handle)


def _check_smoke_outputs(run_dir, printed):
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
    assert "## ACC / BWT / FWT / forgetting" in printed and "| power_law_1 |" in printed

    config = powerlaw_rehearsal.PRESETS["smoke"]
    tasks = config.num_tasks
    metrics = _metrics(run_dir)
    assert set(metrics["runs"]) == set(config.methods)
    for method, by_seed in metrics["runs"].items():
        kind = powerlaw_rehearsal.SPECS[method][0]
        assert set(by_seed) == {str(seed) for seed in config.seeds}
        for run in by_seed.values():
            matrix = np.asarray(run["R"])
            assert matrix.shape == (tasks, tasks)
            assert np.all((matrix >= 0) & (matrix <= 1))
            assert [len(c) for c in run["counts"]] == list(range(tasks))
            assert len(run["aulc"]) == len(run["first_epoch_acc"]) == tasks
            for phase in range(tasks):
                spent = config.budget if kind != "none" and phase > 0 else 0
                assert sum(run["counts"][phase]) == spent, (method, phase)
                assert run["replayed"][phase] == spent, (method, phase)
    assert set(metrics["sweeps"]["budget"]["16"]) == set(config.sweep_methods)
    # Finished sequences are kept as results; their checkpoints are gone.
    results = os.listdir(os.path.join(run_dir, "results"))
    assert len(results) == len(config.methods) * len(config.seeds) + 2 * len(config.seeds)
    assert os.listdir(os.path.join(run_dir, "checkpoints")) == []


def _assert_stopped_in(run_dir, tag, *, phase, step):
    """The sequence ``tag`` holds its carry (saved after phase 0, whose checkpoint is then deleted) and the
    stopped phase's loop checkpoint at the stop step."""
    directory = os.path.join(run_dir, "checkpoints", tag)
    held = set(os.listdir(directory))
    assert {"carry", f"task{phase}"} <= held and "task0" not in held, held
    assert str(step) in os.listdir(os.path.join(directory, f"task{phase}"))


@pytest.mark.slow
def test_smoke_run_spends_the_budget_and_resumes_after_stops_to_the_same_metrics(tmp_path, capsys):
    run_dir = cli.run_one("powerlaw_rehearsal", "smoke", [], out=str(tmp_path / "a"), resume=False)
    _check_smoke_outputs(run_dir, capsys.readouterr().out)

    # Stop inside a rehearsal sequence (replay buffer in the carry), then, resumed, inside an EWC sequence of
    # the second seed (Fisher lists in the carry); each stop is mid-phase, after finished phases.
    out = str(tmp_path / "b")
    with pytest.raises(SystemExit, match="rerun with --resume"):
        cli.run_one(
            "powerlaw_rehearsal", "smoke", [], out=out, resume=False, interrupt=("power_law_1-seed0-task2", 3)
        )
    (stopped,) = [
        os.path.join(out, "powerlaw_rehearsal", d)
        for d in os.listdir(os.path.join(out, "powerlaw_rehearsal"))
    ]
    assert not os.path.exists(os.path.join(stopped, "metrics.json"))
    assert sorted(os.listdir(os.path.join(stopped, "results"))) == ["naive-seed0.json"]
    _assert_stopped_in(stopped, "power_law_1-seed0", phase=2, step=3)
    with pytest.raises(SystemExit, match="rerun with --resume"):
        cli.run_one("powerlaw_rehearsal", "smoke", [], out=out, resume=True, interrupt=("ewc-seed1-task1", 7))
    _assert_stopped_in(stopped, "ewc-seed1", phase=1, step=7)
    resumed = cli.run_one("powerlaw_rehearsal", "smoke", [], out=out, resume=True)
    assert resumed == stopped
    with (
        open(os.path.join(run_dir, "metrics.json"), "rb") as a,
        open(os.path.join(resumed, "metrics.json"), "rb") as b,
    ):
        assert a.read() == b.read()


def test_methods_and_sweep_cells():
    assert powerlaw_rehearsal.METHODS == tuple(powerlaw_rehearsal.SPECS)
    config = powerlaw_rehearsal.PRESETS["sweeps"]
    cells = powerlaw_rehearsal.sweep_cells(config)
    assert [(axis, value) for axis, value, _ in cells] == [
        ("num_tasks", 5),
        ("width", 50),
        ("width", 200),
        ("budget", 100),
        ("budget", 1000),
    ]
    assert cells[0][2] == {"num_tasks": 5, "width": 100, "budget": 300}
    with pytest.raises(ValueError, match="need methods from"):
        powerlaw_rehearsal.main(powerlaw_rehearsal.Config(methods=("nope",)), "unused")

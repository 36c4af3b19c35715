"""The permuted-task rehearsal experiment: a smoke run's outputs, exact rehearsal budgets, and a run stopped
twice mid-sequence (mid-phase, with finished sequences, carries and loop checkpoints on disk) that resumes
to the same ``metrics.json`` as an uninterrupted run."""

import dataclasses
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


@pytest.mark.slow
def test_count_matrix_smoke_run_presents_exactly_the_environment(tmp_path, capsys):
    """``smoke_env``: every phase trains on N[j, i] examples of each task j ≤ i (its logged replay equals
    ``count_matrix``'s column), the baselines and budgets are as specified, and the outputs are written."""
    from unlearnx import continual

    run_dir = cli.run_one("powerlaw_rehearsal", "smoke_env", [], out=str(tmp_path), resume=False)
    printed = capsys.readouterr().out
    assert "## ACC % at equal replayed-example budgets" in printed and "| uniform@0.25 |" in printed
    for name in ("metrics.json", "report.md", "budget_accuracy.png", "accuracy_matrix.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    config = powerlaw_rehearsal.PRESETS["smoke_env"]
    n0, tasks = config.new_count, config.num_tasks
    metrics = _metrics(run_dir)
    expected = {
        "naive": ("lower", None), "upper": ("upper", None), "ewc": ("lower", None),
        "power_law_unrestricted": ("power_law_unrestricted", None), "uniform@1": ("uniform", 1.0),
        "uniform@0.25": ("uniform", 0.25), "power_law_1@1": ("power_law", 1.0),
        "power_law_1@0.25": ("power_law", 0.25),
    }  # fmt: skip
    assert set(metrics["runs"]) == set(expected)
    for name, (environment, ratio) in expected.items():
        matrix = continual.count_matrix(environment, num_tasks=tasks, new_count=n0, ratio=ratio)
        (run,) = metrics["runs"][name].values()
        for phase in range(tasks):
            assert run["counts"][phase] == matrix[:phase, phase].tolist(), (name, phase)
        consumed = metrics["summary"][name]["consumed"]
        assert consumed["replayed"] == int(np.triu(matrix, 1).sum())
        assert consumed["trained"] == int(matrix.sum()) * config.epochs
    # by hand: n₀ = 200, r = 0.25 → 50 replayed per phase; upper: 200 + 400; unrestricted ages 1, 2, 1
    assert metrics["summary"]["uniform@0.25"]["consumed"]["replayed"] == 100
    assert metrics["summary"]["upper"]["consumed"]["replayed"] == 600
    assert metrics["runs"]["power_law_unrestricted"]["0"]["counts"][2] == [72, 117]


def test_phase_arrays_draw_each_task_from_its_own_permutation():
    from experiments import powerlaw_environment

    config = dataclasses.replace(powerlaw_rehearsal.PRESETS["smoke_env"], new_count=40)
    tasks = powerlaw_rehearsal.Tasks(config, 0)
    assert tasks.input_shape == (10, 10, 1)  # digits 8 × 8 padded to 10 × 10
    assert np.all(tasks.train(0)["x"][:, 0, :, :] == 0)  # the padding row of the unpermuted task
    spec = powerlaw_rehearsal.ENV_SPECS["upper"]
    arrays, counts = powerlaw_environment.phase_arrays(config, spec, tasks, seed=0, phase=2, num_tasks=3,
                                                       ratio=None)  # fmt: skip
    assert counts == [40, 40] and len(arrays["y"]) == 120
    rows = {task: {row.tobytes() for row in tasks.train(task)["x"]} for task in range(3)}
    for block, task in zip(np.split(arrays["x"], 3), range(3), strict=True):
        assert all(row.tobytes() in rows[task] for row in block), task


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"new_count": 0}, "new_count"),
        ({"replay_ratios": (0.5, 1.5)}, "replay_ratios"),
        ({"replay_ratios": (0.5, 0.5)}, "replay_ratios"),
        ({"replay_ratios": ()}, "replay_ratios"),
        ({"unrestricted_offset": 0.0}, "unrestricted_offset"),
        ({"unrestricted_decay": -1.0}, "unrestricted_decay"),
        ({"sweeps": True}, "sweeps"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden_layers": 0}, "hidden_layers"),
        ({"pad_to": 0}, "pad_to"),
        ({"model": "cnn"}, "apply to model 'mlp'"),
        ({"methods": ("naive", "nope")}, "need methods from"),
    ],
)
def test_count_matrix_config_errors_name_the_field_before_any_work(changes, match):
    config = dataclasses.replace(powerlaw_rehearsal.PRESETS["smoke_env"], **changes)
    with pytest.raises(ValueError, match=match):
        config.validate()
    with pytest.raises(ValueError, match=match):
        powerlaw_rehearsal.main(config, "unused")  # raises before reading data or writing anything
    legacy = dataclasses.replace(powerlaw_rehearsal.PRESETS["quick"], methods=("upper",))
    with pytest.raises(ValueError, match="need methods from"):
        legacy.validate()  # upper and the unrestricted power law exist only in count-matrix mode


def test_paper_preset_is_the_public_environment():
    paper = powerlaw_rehearsal.PRESETS["paper"]
    assert (paper.num_tasks, paper.new_count, paper.width, paper.hidden_layers) == (10, 57927, 1000, 4)
    assert (paper.batch_norm, paper.dropout, paper.pad_to, paper.batch_size, paper.epochs) == (
        True, 0.5, 32, 2048, 100,
    )  # fmt: skip
    assert paper.replay_ratios == (1.0, 0.75, 0.5, 0.25, 0.1) and paper.ewc_strength == 500.0
    assert paper.train_examples == 57927  # the public code draws from the first 57,927 training images
    assert {"naive", "upper", "ewc", "power_law_unrestricted", "uniform", "exponential"} <= set(paper.methods)

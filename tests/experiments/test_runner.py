"""experiments.runner: atomic JSON writes and a --resume that survives a damaged run folder."""

import json
import os

import pytest

from experiments import runner


def test_write_json_is_atomic_and_strict(tmp_path):
    path = tmp_path / "m.json"
    runner.write_json(path, {"a": float("nan"), "b": (1, 2)})
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2]}
    assert os.listdir(tmp_path) == ["m.json"]  # no temporary file left behind


def test_resume_skips_an_unreadable_config_and_finds_the_matching_run(tmp_path, capsys):
    config = {"seed": 1, "lr": 0.5}
    first = runner.run_directory(tmp_path, "exp", config, resume=False)
    broken = tmp_path / "exp" / "99999999-999999-999999"  # sorts first, as the newest run would
    broken.mkdir()
    (broken / "config.json").write_text('{"seed": 1, "lr"')  # cut by a kill
    assert runner.run_directory(tmp_path, "exp", config, resume=True) == first
    assert "skipping" in capsys.readouterr().err and "config.json" in str(broken / "config.json")
    other = runner.run_directory(tmp_path, "exp", {"seed": 2, "lr": 0.5}, resume=True)
    assert other not in (first, str(broken))


def test_every_preset_passes_the_config_check():
    import experiments

    checked = 0
    for name in experiments.EXPERIMENTS:
        for config in experiments.load(name).PRESETS.values():
            assert runner.check_config(config) is None  # raises on a bad preset
            checked += 1
    assert checked >= 6 * 3  # smoke, quick and paper of each experiment at least


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ssd_forget", "--seeds", ""], "--seeds must name at least one seed"),
        (["ssd_forget", "--seeds", "1,1"], "--seeds must be distinct non-negative ints"),
        (["ssd_forget", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        (["ssd_forget", "--alpha", "nan"], "--alpha must be finite, got nan"),
        (["granet_sparse", "--sparsities", "1.0"], r"--sparsities must lie in \[0, 1\)"),
        (["powerlaw_rehearsal", "--budget", "-5"], "--budget must be >= 0, got -5"),
        (["ssd_forget", "--bogus", "1"], "unknown option --bogus"),
        (["ssd_forget", "--preset", "nope"], "unknown preset 'nope'"),
    ],
)
def test_bad_command_lines_stop_before_any_work_with_one_line(args, message, tmp_path):
    from experiments import __main__ as cli

    with pytest.raises(SystemExit, match=message):
        cli.main([*args, "--out", str(tmp_path)])
    assert not (tmp_path / args[0]).exists()  # no run folder: nothing started

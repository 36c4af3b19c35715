"""experiments.runner: atomic JSON writes and a --resume that survives a damaged run folder."""

import json
import os

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

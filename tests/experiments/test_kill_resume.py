"""SIGKILL a real experiment run at random moments (checkpoint writes included), resume it with
``--resume``, and get a ``metrics.json`` byte-identical to an uninterrupted run's."""

import glob
import os
import random
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILLS = 2


def _command(name: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments", name, "--preset", "smoke", "--out", out, *extra]


def _metrics(out: str, name: str) -> bytes:
    # Exactly one finished run: every rerun resumed the same folder.
    (path,) = glob.glob(os.path.join(out, name, "*", "metrics.json"))
    with open(path, "rb") as handle:
        return handle.read()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssd_forget", "granet_sparse", "powerlaw_rehearsal"])
def test_killed_at_random_moments_then_resumed_gives_identical_metrics(tmp_path, name):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    subprocess.run(
        _command(name, str(tmp_path / "straight")),
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    duration = time.perf_counter() - started
    moments = random.Random(name).sample(range(10, 91), KILLS)  # % of an uninterrupted run's wall time
    killed = 0
    for percent in sorted(moments):
        process = subprocess.Popen(
            _command(name, str(tmp_path / "killed"), "--resume"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=duration * percent / 100)
        except subprocess.TimeoutExpired:
            process.kill()  # SIGKILL: no handler runs, whatever was being written stays half-written
            process.wait()
            killed += 1
    assert killed >= 1  # at least one run really died mid-way
    subprocess.run(
        _command(name, str(tmp_path / "killed"), "--resume"),
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    assert _metrics(str(tmp_path / "killed"), name) == _metrics(str(tmp_path / "straight"), name)

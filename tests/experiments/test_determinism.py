"""Same seed ⇒ the same ``metrics.json``, byte for byte. ``repeated_data`` runs its smoke preset twice from
scratch here. The others check it on runs their tests make anyway: ``ssd_forget``, ``granet_sparse`` and
``powerlaw_rehearsal`` in ``test_kill_resume.py`` (a run SIGKILLed and resumed from the same seed must give
the uninterrupted run's bytes, which no run with an unseeded source of randomness could), ``rece_erase`` in
``test_rece_erase.py`` (a byte-identical rerun reading the cached testbed, and an interrupted-and-resumed
run against a fresh one) and ``restor_recovery`` in ``test_restor_recovery.py`` (an interrupted-and-resumed
run against an uninterrupted one)."""

import os

import pytest

from experiments import __main__ as cli

CASES = {
    "repeated_data": ["--steps", "8", "--eval_points", "3", "--repeat_epochs", "2", "--sweep_fractions", ""],
}


def _metrics(run_dir: str) -> bytes:
    with open(os.path.join(run_dir, "metrics.json"), "rb") as handle:
        return handle.read()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_the_same_seed_gives_byte_identical_metrics(tmp_path, name):
    first = cli.run_one(name, "smoke", CASES[name], out=str(tmp_path / "first"), resume=False)
    second = cli.run_one(name, "smoke", CASES[name], out=str(tmp_path / "second"), resume=False)
    assert first != second
    assert _metrics(first) == _metrics(second)

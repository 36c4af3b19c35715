"""Same seed ⇒ the same ``metrics.json``, byte for byte: the smoke presets run twice from scratch in separate
output folders. The two slowest experiments check it in their own files, on runs those tests make anyway:
``rece_erase`` reruns its smoke preset (``test_rece_experiment.py``: byte-identical, the second run reading
the cached testbed; a fresh testbed against an interrupted-and-resumed one in the resume test) and
``restor_recovery`` compares a fresh run interrupted twice and resumed with an uninterrupted one
(``test_restor_experiment.py``)."""

import os

import pytest

from experiments import __main__ as cli

CASES = {
    "ssd_forget": ["--alpha_sweep", "10", "--class_sweep", "false"],
    "granet_sparse": ["--methods", "dense,granet_d2s", "--sparsities", "0.9"],
    "powerlaw_rehearsal": ["--methods", "naive,ewc", "--sweeps", "false"],
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

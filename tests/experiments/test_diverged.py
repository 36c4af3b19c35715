"""A diverged model is never scored: a learning rate of 1e30 sends the smoke runs to non-finite parameters,
and every experiment lists those models under ``"diverged"`` in ``metrics.json`` (their metrics null), marks
them in ``report.md`` and shows their table cells as "diverged", never as a number."""

import json
import math
import os

import numpy as np
import pytest

from experiments import __main__ as cli
from experiments import report, restor_report


def _outputs(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    with open(os.path.join(run_dir, "report.md")) as handle:
        return metrics, handle.read()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("ssd_forget", ["--finetune_lr", "1e30", "--alpha_sweep", "10"]),
        ("granet_sparse", ["--lr", "1e30", "--methods", "dense,granet_d2s", "--sparsities", "0.9"]),
        ("powerlaw_rehearsal", ["--lr", "1e30", "--methods", "naive,ewc", "--sweeps", "false"]),
    ],
)
def test_a_diverged_run_is_marked_and_never_scored(tmp_path, name, overrides):
    run_dir = cli.run_one(name, "smoke", overrides, out=str(tmp_path), resume=False)
    metrics, text = _outputs(run_dir)
    assert metrics["diverged"], "the 1e30 learning rate diverged nothing"
    assert "**Diverged (" in text and "| diverged |" in text.replace(" diverged ± ", " diverged |")
    if name == "granet_sparse":
        assert all(metrics["runs"][label]["test_acc"] is None for label in metrics["diverged"])
        assert metrics["summary"]["dense"]["0"]["test_acc"]["mean"] is None
    if name == "ssd_forget":
        (result,) = metrics["classes"].values()
        assert metrics["diverged"] == ["seed 0 class 3 finetune"]
        assert result["summary"]["finetune"]["retain_test_acc"]["mean"] is None
        assert result["summary"]["ssd"]["retain_test_acc"]["mean"] > 0.5
    if name == "powerlaw_rehearsal":
        assert all(s["acc"]["mean"] is None for s in metrics["summary"].values())


@pytest.mark.slow
def test_a_diverged_original_model_ends_the_ssd_run(tmp_path):
    with pytest.raises(FloatingPointError, match="original model diverged"):
        cli.run_one("ssd_forget", "smoke", ["--lr", "1e30"], out=str(tmp_path), resume=False)


def test_the_shared_rule_for_diverged_values():
    values = report.diverged(["acc", "loss"])
    assert values == {"acc": math.inf, "loss": math.inf}
    assert report.fmt(report.stat([0.9, values["acc"], 0.8])) == "diverged"  # any diverged seed
    assert report.fmt(report.stat([0.9, None, float("nan")])) == "0.9"  # missing values are left out
    assert report.fmt(report.stat([None])) == "n/a"
    assert report.scored(0.5, False) == 0.5 and report.scored(None, True) == math.inf
    assert not report.finite({"w": np.array([1.0, np.nan])}) and report.finite({"w": np.ones(3)})
    assert report.diverged_line([]) == [] and "k1/ga" in report.diverged_line(["k1/ga"])[0]


def test_restor_scores_of_a_diverged_model_are_null_and_its_verdict_says_so():
    fine = {"diverged": False, "predicted": np.array([0, 1]), "margin": np.array([1.0, 2.0])}
    fine.update(acc_correct=1.0, rate_corrupted=0.0, acc_nontarget=1.0, acc_interleaved=None, heldout_ppl=3.0)
    fine.update(finite=True, probe={"correct": -1.0, "corrupted": -2.0, "random": -3.0})
    broken = {**fine, "diverged": True, "acc_correct": 0.5}  # a number argmax would still give
    scores = restor_report.scores(np.array([0, 1]), fine, fine, broken)
    assert scores["diverged"] and scores["acc_correct"] is None and scores["recovery"] is None
    assert restor_report.verdict(scores, restor_report.flat(fine)) == "diverged"
    metrics = {"clean": restor_report.flat(fine), "k": {"1": {"corrupted": restor_report.flat(fine),
                                                               "runs": {"ga/doc/full": scores}}}}  # fmt: skip
    assert restor_report.diverged(metrics) == ["k1/ga/doc/full"]

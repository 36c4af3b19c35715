"""The sparse-training experiment: a smoke run's outputs and the exact final sparsity of every method."""

import json
import os

import jax
import pytest

from experiments import __main__ as cli
from experiments import granet_sparse, runner
from unlearnx import sparse, tree
from unlearnx.checkpoint import Checkpointer


def _target_zeros(params, method: str, sparsity: float, distribution: str) -> int:
    """The zeros a method's final masks must hold: global pruning (GMP, GraNet) keeps round((1 − s)·N) of
    all N selected weights; ERK masks (static, SET, RigL) keep round((1 − s_l)·N_l) per tensor."""
    sizes = granet_sparse.selected_paths(params)
    total = sum(sizes.values())
    if method in ("gmp", "granet_d2s", "granet_s2s"):
        return total - round((1.0 - sparsity) * total)
    assert distribution == "erk"
    per_tensor = dict(tree.leaves_with_paths(sparse.erk_sparsities(params, sparsity)))
    return total - sum(round((1.0 - per_tensor[path]) * size) for path, size in sizes.items())


def test_presets_build_every_optimizer():
    for name, config in granet_sparse.PRESETS.items():
        assert set(config.methods) == set(granet_sparse.METHODS), name
        schedule = granet_sparse.Schedule(
            22, 10 * config.frequency, 5 * config.frequency, 8 * config.frequency, ()
        )
        for method in config.methods:
            granet_sparse.make_optimizer(config, schedule, method, config.sparsities[0], seed=0)
    config = runner.apply_overrides(granet_sparse.PRESETS["quick"], ["--sparsities", "0.5,0.7"])
    assert config.sparsities == (0.5, 0.7)


@pytest.mark.slow
def test_smoke_run_writes_the_report_and_ends_at_exactly_the_target_sparsity(tmp_path, capsys):
    run_dir = cli.run_one("granet_sparse", "smoke", [], out=str(tmp_path), resume=False)
    for name in (
        "config.json",
        "metrics.json",
        "timing.json",
        "report.md",
        "accuracy.png",
        "sparsity_schedule.png",
    ):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    printed = capsys.readouterr().out
    assert "## Test accuracy %" in printed and "| granet_s2s |" in printed  # the tables are printed
    assert "## Training FLOPs relative to dense" in printed

    config = granet_sparse.PRESETS["smoke"]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    study_model = runner.build_model(config.model, (8, 8, 1), 10, config.width, config.channels)
    params = jax.eval_shape(study_model.init, jax.random.key(0))["params"]
    total = sum(granet_sparse.selected_paths(params).values())
    runs = metrics["runs"]
    assert len(runs) == 1 + (len(granet_sparse.METHODS) - 1) * len(config.sparsities)
    for label, run in runs.items():
        assert run["inactive_nonzeros"] == 0, label  # the parameters are exactly masked
        if run["method"] == "dense":
            assert run["mask_zeros"] == 0 and run["param_zeros"] == 0, label
            assert run["train_flops"] == 1.0
            continue
        expected = _target_zeros(params, run["method"], run["sparsity"], config.distribution)
        assert run["mask_zeros"] == expected, label
        assert run["mask_sparsity"] == expected / total, label
        assert abs(run["mask_sparsity"] - run["sparsity"]) < 0.003, label  # ERK rounds per tensor
        if run["method"] == "set":
            # Random regrowth can activate weights whose gradient is identically zero (into or out of a
            # dead ReLU unit); they stay exactly 0, so SET's parameters may hold a few more zeros.
            assert run["param_zeros"] == expected + run["active_zeros"], label
        else:
            assert run["param_zeros"] == expected and run["param_sparsity"] == run["mask_sparsity"], label
        curve = run["sparsity_curve"]
        assert len(curve) == config.epochs + 1 and curve[-1] == run["mask_sparsity"]
        assert 0.0 < run["train_flops"] <= 1.0
        if run["method"] in ("gmp", "granet_d2s"):
            assert curve[0] == 0.0  # dense-to-sparse starts dense
        if run["method"] in ("static", "set", "rigl"):
            assert len(set(curve)) == 1  # constant sparsity


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_metrics(tmp_path):
    overrides = ["--methods", "dense,gmp", "--sparsities", "0.9"]
    straight = cli.run_one("granet_sparse", "smoke", overrides, out=str(tmp_path / "a"), resume=False)
    # Step 30 of 3 × 22: inside epoch 2, so the resumed loop also restores an unfinished epoch's metrics.
    with pytest.raises(SystemExit, match="rerun with --resume"):
        cli.run_one(
            "granet_sparse",
            "smoke",
            overrides,
            out=str(tmp_path / "b"),
            resume=False,
            interrupt=("gmp-s0.9-seed0", 30),
        )
    (interrupted,) = (tmp_path / "b" / "granet_sparse").iterdir()
    with Checkpointer(granet_sparse.checkpoint_dir(str(interrupted), "gmp-s0.9-seed0")) as checkpointer:
        assert checkpointer.all_steps() == [30]  # the stop request saved the unfinished run
    assert os.listdir(interrupted / "results") == ["dense-seed0.json"]
    resumed = cli.run_one("granet_sparse", "smoke", overrides, out=str(tmp_path / "b"), resume=True)
    assert resumed == str(interrupted)
    assert not os.path.exists(granet_sparse.checkpoint_dir(resumed, "gmp-s0.9-seed0"))  # results kept instead
    with open(os.path.join(resumed, "timing.json")) as handle:
        assert json.load(handle)["resumed_runs"] == ["dense-seed0"]  # finished runs are not rerun
    with (
        open(os.path.join(straight, "metrics.json"), "rb") as a,
        open(os.path.join(resumed, "metrics.json"), "rb") as b,
    ):
        assert a.read() == b.read()

"""The RESTOR experiment: registered, its presets are consistent, a smoke run writes every output with
metrics that obey the definitions (R and F recomputed from the accuracies), a run interrupted inside the
corruption and the unlearning loops resumes to the same metrics, and the corruption loop stops when the
corrupted rate reaches its target (and a rerun reuses that checkpoint)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

import experiments
from experiments import __main__ as cli
from experiments import restor_recovery, restor_world
from unlearnx import train
from unlearnx.checkpoint import Checkpointer


def test_registered_and_presets_are_valid():
    assert experiments.load("restor_recovery") is restor_recovery
    for name in ("smoke", "quick", "localisation", "paper"):
        config = restor_recovery.PRESETS[name]
        assert set(config.methods) <= set(restor_recovery.METHODS)
        assert set(config.masks) <= set(restor_recovery.MASKS)
        assert set(config.localize) <= set(restor_recovery.LOCALIZATIONS)
    assert set(restor_recovery.PRESETS["paper"].ks) == {0, 1, 2, 3}
    assert {v.split("/")[0] for v in restor_recovery.VARIANTS} == set(restor_recovery.MASKS)
    # The localisation preset is the quick world and models with a larger unlearning budget.
    quick, local = restor_recovery.PRESETS["quick"], restor_recovery.PRESETS["localisation"]
    world = ("num_people", "d_model", "num_layers", "clean_epochs", "corrupt_lr", "corrupt_max_epochs")
    assert all(getattr(quick, f) == getattr(local, f) for f in (*world, "seed"))
    assert set(local.localize) == {"none", "ssd", "random"}
    assert local.unlearn_steps * local.unlearn_lr > quick.unlearn_steps * quick.unlearn_lr
    assert restor_recovery.variants(quick) == ["doc/full", "span/full", "doc/ssd_local", "span/ssd_local"]


def test_movement_matches_hand_computed_values():
    before = {"a": np.array([3.0, 4.0], np.float32), "b": np.array([[0.0]], np.float32)}
    after = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[0.0]], np.float32)}
    moved = restor_recovery.movement(before, after)
    assert moved["param_change"] == pytest.approx(0.8)  # ‖(0, −4)‖ / ‖(3, 4)‖
    assert moved["changed_fraction"] == pytest.approx(1 / 3)
    still = restor_recovery.movement(before, before)
    assert still == {"param_change": 0.0, "changed_fraction": 0.0}


def test_unknown_method_or_mask_is_rejected(tmp_path):
    smoke = restor_recovery.PRESETS["smoke"]
    for change in ({"methods": ("npo", "nope")}, {"masks": ("doc", "spam")}, {"localize": ("none", "lasso")}):
        with pytest.raises(ValueError, match="unknown"):
            restor_recovery.main(dataclasses.replace(smoke, **change), str(tmp_path))


def _metrics(run_dir: str) -> bytes:
    with open(os.path.join(run_dir, "metrics.json"), "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("restor_smoke")
    return cli.run_one("restor_recovery", "smoke", [], out=str(out), resume=False)


@pytest.mark.slow
def test_smoke_run(smoke_run, capsys):
    run_dir = smoke_run
    for name in ("config.json", "metrics.json", "timing.json", "report.md", "recovery_vs_forgetting.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    with open(os.path.join(run_dir, "report.md")) as handle:
        text = handle.read()
    assert "## Localisation ablation" in text and "## Logit probe" in text
    before = _metrics(run_dir)
    metrics = json.loads(before)
    config = restor_recovery.PRESETS["smoke"]
    assert list(metrics["k"]) == [str(k) for k in config.ks]
    clean_acc = metrics["clean"]["acc_correct"]
    for k, entry in metrics["k"].items():
        corrupted = entry["corrupted"]
        expected = {
            restor_recovery.run_name(m, mask, local)
            for m in config.methods
            for mask in config.masks
            for local in (config.localize if m != "ssd" else ("none",))
        }
        assert set(entry["runs"]) == expected
        assert {name.split("/")[2] for name in expected} == {"full", "ssd_local", "random_local"}
        size = metrics["sizes"]["params"]
        for run in entry["runs"].values():
            if run["recovery"] is not None:
                gap = clean_acc - corrupted["acc_correct"]
                assert run["recovery"] == pytest.approx((run["acc_correct"] - corrupted["acc_correct"]) / gap)
            if run["forgetting"] is not None:
                ratio = run["rate_corrupted"] / corrupted["rate_corrupted"]
                assert run["forgetting"] == pytest.approx(1 - ratio)
        # Localised runs change at most the selected count (random_local draws SSD's count); full runs move.
        for name, run in entry["runs"].items():
            mask, where = name.split("/")[1:]
            if where != "full":
                assert run["changed_fraction"] * size <= entry["selected_count"][mask], name
            elif not name.startswith("ssd/"):
                assert run["param_change"] > 0 and run["changed_fraction"] > 0, name
        assert 0.0 <= entry["selected_fraction"]["doc"] <= 1.0
        assert 1 <= entry["corrupt_epochs"] <= config.corrupt_max_epochs
        # Every unlearning run is cached as a unit and its checkpoints are gone.
        assert len(os.listdir(os.path.join(run_dir, "units", f"k{k}"))) == len(expected)
        assert not os.listdir(os.path.join(run_dir, "checkpoints", f"unlearn_k{k}"))
    # Clean and corrupted models are checkpointed; rerunning the finished run reuses them.
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "clean"))
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", f"corrupt_k{config.ks[0]}"))
    again = cli.run_one(
        "restor_recovery", "smoke", [], out=os.path.dirname(os.path.dirname(run_dir)), resume=True
    )
    assert again == run_dir
    assert _metrics(run_dir) == before


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_metrics(smoke_run, tmp_path):
    k = restor_recovery.PRESETS["smoke"].ks[0]
    first_unlearn = f"unlearn_k{k}/{restor_recovery.run_name('npo', 'doc', 'none')}"
    for stop in ((f"corrupt_k{k}", 1), (first_unlearn, 1)):
        with pytest.raises(SystemExit, match="rerun with --resume"):
            cli.run_one("restor_recovery", "smoke", [], out=str(tmp_path), resume=True, interrupt=stop)
    run_dir = cli.run_one("restor_recovery", "smoke", [], out=str(tmp_path), resume=True)
    assert _metrics(run_dir) == _metrics(smoke_run)


@pytest.mark.slow
def test_corruption_stops_at_the_target_rate_and_is_reused(tmp_path):
    config = dataclasses.replace(
        restor_recovery.PRESETS["smoke"], corrupt_target_rate=0.0, corrupt_max_epochs=3, checkpoint_seconds=0
    )
    s = restor_world.build(config)
    k = config.ks[0]
    clean = s.model.init(jax.random.key(0))
    variables, epochs = restor_world.corrupt(s, clean, k, str(tmp_path / "a"), None)
    assert epochs == 1  # any rate reaches 0.0: the loop stopped after its first epoch
    with Checkpointer(tmp_path / "a" / "checkpoints" / f"corrupt_k{k}") as saved:
        per_epoch = saved.latest_step()
    again, epochs_again = restor_world.corrupt(s, clean, k, str(tmp_path / "a"), None)
    assert epochs_again == 1
    jax.tree.map(np.testing.assert_array_equal, again, variables)
    with Checkpointer(tmp_path / "a" / "checkpoints" / f"corrupt_k{k}") as saved:
        assert saved.latest_step() == per_epoch  # reused, not trained further
    # A target never reached: the loop runs to the cap, and a stop request is a real preemption.
    never = dataclasses.replace(s, config=dataclasses.replace(config, corrupt_target_rate=1.5))
    train.stop_at(f"corrupt_k{k}", per_epoch)
    try:
        with pytest.raises(train.Preempted):
            restor_world.corrupt(never, clean, k, str(tmp_path / "b"), None)
    finally:
        train.clear_stop()
    assert restor_world.corrupt(never, clean, k, str(tmp_path / "b"), None)[1] == 3

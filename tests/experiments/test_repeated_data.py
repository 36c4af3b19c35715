"""The repeated-data experiment: a smoke run end to end, exact resume, 8 devices = 1 device, config errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from problems import eight_device_env

from experiments import __main__ as cli
from experiments import repeated_data, repeated_report
from unlearnx import parallel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dataclasses.replace(
    repeated_data.PRESETS["smoke"], steps=8, eval_points=3, repeat_epochs=(2,), sweep_fractions=()
)
FAMILIES = (("16x1x2", 4), ("16x2x2", 0))


def family_results(run_dir: str, config=TINY) -> dict[str, np.ndarray]:
    """Trains the tiny config's two families on all devices; their curves and probes as flat arrays."""
    data = repeated_data.Data(config)
    mesh = parallel.data_mesh()
    out = {}
    for size, mlp_ratio in FAMILIES:
        result = repeated_data.train_family(config, data, size, mlp_ratio, run_dir, mesh)
        for key in ("test_curve", "repeated_curve", "test_loss", "icl", "copying_loss", "prefix_matching"):
            out[f"{size}/{key}"] = np.asarray(result[key])
        if mlp_ratio == 0:
            out[f"{size}/ov_copying"] = result["ov_copying"]
    return out


SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/.."]
    from test_repeated_data import TINY, family_results
    from experiments import repeated_data
    from unlearnx import parallel

    assert jax.device_count() == 8, jax.devices()
    # the loop splits the examples (axis 1 of [runs, examples, seq_len]) over the devices, not the runs
    data = repeated_data.Data(TINY)
    batch = data.batch(0, TINY.batch_size, list(range(len(data.runs))))
    placed = parallel.shard_batch(batch, parallel.data_mesh(), repeated_data.BATCH_AXIS)
    assert batch.shape[0] % 8 and len(placed.sharding.device_set) == 8 and placed.sharding.spec[1] == "data"
    np.savez(sys.argv[1], **family_results(sys.argv[3]))
    """
)


@pytest.mark.slow
def test_eight_devices_train_and_measure_like_one(tmp_path):
    output = tmp_path / "eight.npz"
    env = eight_device_env()
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(output), here, str(tmp_path / "eight")],
        env=env,
        check=True,
        timeout=900,
        cwd=REPO,
    )
    eight = np.load(output)
    one = family_results(str(tmp_path / "one"))
    assert set(eight.files) == set(one)
    for key, value in one.items():
        np.testing.assert_allclose(eight[key], value, rtol=2e-4, atol=2e-5, err_msg=key)


@pytest.mark.slow
def test_smoke_run_then_interrupted_and_resumed_run_give_the_same_metrics(tmp_path, capsys):
    args = []  # default checkpoint_seconds: the interrupted loop saves only at its stop and final steps
    straight = cli.run_one("repeated_data", "smoke", args, out=str(tmp_path / "a"), resume=False)
    for name in (
        "config.json",
        "metrics.json",
        "timing.json",
        "report.md",
        "test_loss_vs_epochs.png",
        "training_curves.png",
        "effective_size.png",
        "prefix_matching.png",
        "copying_icl.png",
        "linear_regression.png",
    ):
        assert os.path.getsize(os.path.join(straight, name)) > 0, name
    printed = capsys.readouterr().out
    assert "## Final held-out test loss, f = 0.1" in printed and "| 16x1x2 |" in printed
    config = repeated_data.PRESETS["smoke"]
    with open(os.path.join(straight, "metrics.json")) as handle:
        metrics = json.load(handle)
    runs = repeated_data.runs(config)
    assert metrics["runs"] == runs and len(runs) == 4  # f = 0, E = 2, E = 8, f = 0.3 at E = 2
    assert set(metrics["sizes"]) == {*config.sizes, "attn-only 16x2x2"}
    assert set(metrics["fit"]) >= {"a", "alpha", "l_inf"} or "error" in metrics["fit"]
    for label, size in metrics["sizes"].items():
        assert len(size["settings"]) == 4
        prefix = np.asarray(size["per_run"]["prefix_matching"])
        layers = 2 if label.startswith("attn-only") else 1
        assert prefix.shape == (4, layers, 2) and np.all((prefix >= 0) & (prefix <= 1))
        curves = np.asarray(size["per_run"]["test_curve"], np.float64)
        assert curves.shape == (4, len(size["eval_steps"])) and np.all(np.isfinite(curves))
        repeated = np.asarray(size["per_run"]["repeated_curve"], np.float64)
        assert np.all(np.isnan(repeated[0])) and np.all(np.isfinite(repeated[1:]))  # f = 0 has no subset
        for entry in size["settings"]:
            assert entry["bump"]["mean"] >= 0
        if label.startswith("attn-only"):
            ov = np.asarray(size["per_run"]["ov_copying"])
            assert ov.shape == (4, 2, 2) and np.all(np.abs(ov) <= 1 + 1e-6)

    with pytest.raises(SystemExit, match="rerun with --resume"):
        cli.run_one(
            "repeated_data",
            "smoke",
            args,
            out=str(tmp_path / "b"),
            resume=False,
            interrupt=("train_lm_24x1x2", 5),  # between the evaluation steps 3 and 8
        )
    (interrupted,) = os.listdir(tmp_path / "b" / "repeated_data")
    saved = os.listdir(tmp_path / "b" / "repeated_data" / interrupted / "checkpoints" / "train_lm_24x1x2")
    assert "5" in saved and str(config.steps) not in saved
    resumed = cli.run_one("repeated_data", "smoke", args, out=str(tmp_path / "b"), resume=True)
    assert os.listdir(tmp_path / "b" / "repeated_data") == [interrupted]
    with open(os.path.join(resumed, "train_log.jsonl")) as handle:
        logged = [json.loads(line) for line in handle]
    for phase in ("train_lm_16x1x2", "train_lm_24x1x2", "train_lm_32x1x2", "train_attn_16x2x2"):
        assert [r["step"] for r in logged if r["phase"] == phase] == list(range(1, config.steps + 1)), phase
    with open(os.path.join(straight, "metrics.json")) as a, open(os.path.join(resumed, "metrics.json")) as b:
        assert a.read() == b.read()


def test_runs_eval_steps_and_max_rise():
    config = repeated_data.PRESETS["quick"]
    runs = repeated_data.runs(config)
    assert len(runs) == 2 * (1 + 4 + 2)
    assert runs[0] == {"fraction": 0.0, "epochs": 1, "seed": 0}
    assert {(r["fraction"], r["epochs"]) for r in runs} >= {(0.1, 100), (0.3, 10), (0.03, 10)}
    steps = repeated_data.eval_steps(config)
    assert steps[0] == 1 and steps[-1] == config.steps and steps == sorted(set(steps))
    assert repeated_report.max_rise([3.0, 2.0, 2.5, 1.0, 1.2]) == pytest.approx(0.5)
    assert repeated_report.max_rise([3.0, 2.0, 1.0]) == 0.0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sizes": ("32x2",)}, "d_model x layers x heads"),
        ({"sizes": ("16x1x2", "24x1x2")}, "at least 3 sizes"),
        ({"seq_len": 31}, "seq_len must be even"),
    ],
)
def test_config_errors(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        repeated_data.main(dataclasses.replace(repeated_data.PRESETS["smoke"], **changes), str(tmp_path))


@pytest.mark.slow
def test_runs_in_separate_loops_with_microbatches_match_the_stacked_loop(tmp_path):
    """The paper preset's layout (one run per loop, 4 accumulated parts, FSDP) trains the same models as
    every run stacked in one loop with whole batches (to float32 rounding)."""
    stacked = family_results(str(tmp_path / "stacked"))
    layout = dataclasses.replace(TINY, runs_per_loop=1, microbatches=4, shard_params=True)
    separate = family_results(str(tmp_path / "separate"), layout)
    assert stacked.keys() == separate.keys()
    for key, value in stacked.items():
        np.testing.assert_allclose(separate[key], value, rtol=2e-4, atol=2e-5, err_msg=key)
    assert len(os.listdir(tmp_path / "separate" / "checkpoints")) == 2 * len(repeated_data.runs(TINY))

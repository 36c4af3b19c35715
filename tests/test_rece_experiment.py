"""The RECE erasure experiment end to end on the smoke preset: outputs, table, grids, seed-determined metrics,
the testbed cache reused by a rerun, and exact resume after interrupts in the testbed and ESD-x loops."""

import json
import os

import pytest

from experiments import __main__ as cli
from experiments import rece_erase, rece_report, runner
from unlearnx import testbed as testbeds


def test_presets_and_overrides():
    assert set(rece_erase.PRESETS) >= {"smoke", "quick", "paper"}
    quick = rece_erase.PRESETS["quick"]
    assert quick.uce_lamb == 0.5 and quick.uce_erase_scale == 1.0 and quick.uce_preserve_scale is None
    assert (quick.round_erase_scale, quick.round_preserve_scale, quick.round_lamb) == (1.0, 0.1, 0.1)
    assert quick.rece_epochs == (1, 2, 3)
    config = runner.apply_overrides(quick, ["--concepts", "square,blue", "--rece-epochs", "1"])
    assert config.concepts == ("square", "blue") and config.rece_epochs == (1,)
    assert config.testbed() == quick.testbed()  # the testbed (cache key) ignores the erasure settings
    assert config.testbed().key() == quick.testbed().key()
    assert runner.apply_overrides(quick, ["--steps", "10"]).testbed().key() != quick.testbed().key()
    assert "SD v1.4" in rece_erase.PAPER_NOTES and "cross_attention_kv" in rece_erase.PAPER_NOTES
    with pytest.raises(ValueError, match="neither a shape"):  # checked before any training
        runner.apply_overrides(quick, ["--concepts", "circle,purple"])


def test_concepts_of_the_testbed():
    config = testbeds.TestbedConfig()
    assert testbeds.concept(config, "triangle") == ("triangle", "shape", 2, ("circle", "square", "star"))
    assert testbeds.concept(config, "red") == ("red", "colour", 0, ("green", "blue", "yellow"))
    with pytest.raises(ValueError, match="neither a shape"):
        testbeds.concept(config, "nudity")


@pytest.mark.slow
def test_smoke_run_writes_the_tables_and_grids_and_reuses_the_cache(tmp_path):
    run_dir = cli.run_one("rece_erase", "smoke", [], out=str(tmp_path), resume=False)
    for name in (
        "config.json",
        "metrics.json",
        "timing.json",
        "report.md",
        "samples_circle.png",
        "samples_red.png",
    ):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    config = rece_erase.PRESETS["smoke"]
    methods = ["original", "uce", *(f"rece_{e}" for e in config.rece_epochs), "esd_x"]
    for concept, kind in (("circle", "shape"), ("red", "colour")):
        result = metrics["concepts"][concept]
        assert result["kind"] == kind
        assert sorted(result["metrics"]) == sorted(methods)  # metrics.json sorts keys
        assert result["preserve_scale"] == 0.25  # max(0.1, 1/|P|) with P = "" + 3 other concepts
        for method, values in result["metrics"].items():
            for key, _ in rece_report.COLUMNS:
                assert 0.0 <= values[key] <= (1.0 if key != "kv_change" else 10.0), (concept, method, key)
        assert result["metrics"]["original"]["kv_change"] == 0.0
        assert result["metrics"]["uce"]["kv_change"] > 0.0
        assert result["metrics"]["esd_x"]["kv_change"] > 0.0
    with open(os.path.join(run_dir, "report.md")) as handle:
        text = handle.read()
    assert "Quality gate" in text and "| rece_2 |" in text and "Erasing shape “circle”" in text
    with open(os.path.join(run_dir, "train_log.jsonl")) as handle:
        phases = {json.loads(line)["phase"] for line in handle}
    assert phases == {"testbed", "testbed_classifier", "esd_x_circle", "esd_x_red"}

    rerun = cli.run_one("rece_erase", "smoke", [], out=str(tmp_path), resume=False)
    assert rerun != run_dir
    with open(os.path.join(rerun, "metrics.json")) as handle:
        assert json.load(handle) == metrics  # seed-determined; the testbed came from the cache
    with open(os.path.join(rerun, "timing.json")) as handle:
        timing = json.load(handle)
    with open(os.path.join(run_dir, "timing.json")) as handle:
        assert timing["testbed_train_seconds"] < json.load(handle)["testbed_train_seconds"]


@pytest.mark.slow
def test_interrupted_testbed_and_esd_resume_to_identical_metrics(tmp_path):
    overrides = ["--concepts", "circle"]
    reference = cli.run_one("rece_erase", "smoke", overrides, out=str(tmp_path / "a"), resume=False)
    out = str(tmp_path / "b")
    with pytest.raises(SystemExit, match="rerun with --resume"):
        cli.run_one("rece_erase", "smoke", overrides, out=out, resume=False, interrupt=("testbed", 11))
    cache = os.path.join(out, "rece_erase", "testbed_cache")
    (testbed_dir,) = os.listdir(cache)
    assert os.listdir(os.path.join(cache, testbed_dir, "diffusion")) == ["11"]  # saved where it stopped
    with pytest.raises(SystemExit, match="rerun with --resume"):
        cli.run_one("rece_erase", "smoke", overrides, out=out, resume=True, interrupt=("esd_x_circle", 1))
    resumed = cli.run_one("rece_erase", "smoke", overrides, out=out, resume=True)
    assert os.path.dirname(resumed) != os.path.dirname(reference)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints", "esd_x_circle"))) == ["1", "2"]
    with open(os.path.join(reference, "metrics.json"), "rb") as handle:
        expected = handle.read()
    with open(os.path.join(resumed, "metrics.json"), "rb") as handle:
        assert handle.read() == expected

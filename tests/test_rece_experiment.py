"""The RECE erasure experiment end to end on the smoke preset: outputs, table, grids, seed-determined metrics
and the testbed cache reused by a rerun."""

import json
import os

import pytest

from experiments import __main__ as cli
from experiments import rece_erase, rece_report, runner


def test_presets_and_overrides():
    assert set(rece_erase.PRESETS) >= {"smoke", "quick", "paper"}
    quick = rece_erase.PRESETS["quick"]
    assert quick.uce_lamb == 0.5 and quick.uce_erase_scale == 1.0 and quick.uce_preserve_scale is None
    assert (quick.round_erase_scale, quick.round_preserve_scale, quick.round_lamb) == (1.0, 0.1, 0.1)
    assert quick.rece_epochs == (1, 2, 3)
    config = runner.apply_overrides(quick, ["--concepts", "square,blue", "--rece-epochs", "1"])
    assert config.concepts == ("square", "blue") and config.rece_epochs == (1,)
    assert config.testbed() == quick.testbed()  # the testbed (cache key) ignores the erasure settings
    assert "SD v1.4" in rece_erase.PAPER_NOTES and "cross_attention_kv" in rece_erase.PAPER_NOTES


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
    with open(os.path.join(run_dir, "report.md")) as handle:
        text = handle.read()
    assert "Quality gate" in text and "| rece_2 |" in text and "Erasing shape “circle”" in text

    rerun = cli.run_one("rece_erase", "smoke", [], out=str(tmp_path), resume=False)
    assert rerun != run_dir
    with open(os.path.join(rerun, "metrics.json")) as handle:
        assert json.load(handle) == metrics  # seed-determined; the testbed came from the cache
    with open(os.path.join(rerun, "timing.json")) as handle:
        timing = json.load(handle)
    with open(os.path.join(run_dir, "timing.json")) as handle:
        assert timing["testbed_train_seconds"] < json.load(handle)["testbed_train_seconds"]

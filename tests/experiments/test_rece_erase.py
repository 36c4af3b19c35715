"""The RECE erasure experiment end to end on the smoke preset: outputs, table, grids, seed-determined metrics,
the testbed cache reused by a rerun, and exact resume after interrupts in the testbed and ESD-x loops."""

import glob
import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from problems import eight_device_env

from experiments import __main__ as cli
from experiments import rece_erase, rece_report, runner
from unlearnx import diffusers_io, erase, tree
from unlearnx import testbed as testbeds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    assert rece_erase.PRESETS["paper"].backend == "sd-v1.4"
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
    # Same seed, byte-identical metrics.json (the testbed came from the cache).
    first, second = (os.path.join(folder, "metrics.json") for folder in (run_dir, rerun))
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()
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


def _tiny_unet_and_states(folder, d_in=12, length=8):
    """A UNet file with SD v1.4 key names (four attn2 blocks, small widths, fp16, plus untouched tensors)
    and the prompts' states file the paper preset reads."""
    rng = np.random.default_rng(0)
    tensors = {"conv_in.weight": rng.normal(size=(8, 4, 3, 3)).astype(np.float16)}
    for prefix, width in (("down_blocks.0.attentions.0", 8), ("down_blocks.1.attentions.1", 16),
                          ("mid_block.attentions.0", 16), ("up_blocks.3.attentions.2", 8)):  # fmt: skip
        block = f"{prefix}.transformer_blocks.0"
        for name, shape in (("attn2.to_k", (width, d_in)), ("attn2.to_v", (width, d_in)),
                            ("attn1.to_k", (width, width))):  # fmt: skip
            tensors[f"{block}.{name}.weight"] = (rng.normal(size=shape) / np.sqrt(shape[1])).astype(
                np.float16
            )
    unet = os.path.join(folder, "unet.safetensors")
    safetensors.numpy.save_file(tensors, unet, metadata={"format": "pt"})
    counts = {"concept": 1, "guide": 1, "preserve": 2, "initial_preserve": 1}
    states = {name: rng.normal(size=(n, length, d_in)).astype(np.float32) for name, n in counts.items()}
    path = os.path.join(folder, "states.npz")
    np.savez(path, **states, concept_tokens=np.array([3]), guide_tokens=np.array([2]))
    return unet, path, tensors, states


def test_paper_preset_edits_a_unet_file_by_the_official_pipeline(tmp_path):
    """The paper preset end to end on a generated SD-named checkpoint: only attn2 to_k/to_v change, each equal
    to erase.rece run by hand with the official rows; everything else byte for byte; and 8 simulated devices
    write the same file."""
    unet, states_path, tensors, states = _tiny_unet_and_states(str(tmp_path))
    args = ["--unet_path", unet, "--states_path", states_path]
    run_dir = cli.run_one("rece_erase", "paper", args, out=str(tmp_path / "runs"), resume=False)
    edited = safetensors.numpy.load_file(os.path.join(run_dir, "unet", "diffusion_pytorch_model.safetensors"))
    assert list(edited) == list(safetensors.numpy.load_file(unet)) and edited.keys() == tensors.keys()
    config = rece_erase.PRESETS["paper"]
    concept, guide = states["concept"][0], states["guide"][0]
    rows, targets = erase.last_word_rows(concept, guide, concept_tokens=3, guide_tokens=2)
    expected, _ = erase.rece(
        diffusers_io.read_cross_attention(unet, dtype=jnp.float32), concept, guide,
        states["preserve"].reshape(-1, 12), epochs=max(config.rece_epochs), reg=config.rece_reg,
        initial_concept_keys=rows, initial_guide_keys=targets,
        initial_preserve_keys=states["initial_preserve"][0],
        erase_scale=1.0, preserve_scale=config.uce_preserve_scale, lamb=config.uce_lamb,
        round_erase_scale=config.round_erase_scale, round_preserve_scale=config.round_preserve_scale,
        round_lamb=config.round_lamb,
    )  # fmt: skip
    kernels = dict(tree.leaves_with_paths(expected))
    changed = 0
    for key, before in tensors.items():
        assert edited[key].dtype == before.dtype and edited[key].shape == before.shape
        if ".attn2.to_" in key:
            path = (
                "params/"
                + re.sub(r"\.(\d+)", r"_\1", key.removesuffix(".weight")).replace(".", "/")
                + "/kernel"
            )
            np.testing.assert_array_equal(edited[key], np.asarray(kernels[path]).T.astype(np.float16))
            changed += not np.array_equal(edited[key], before)
        else:
            assert edited[key].tobytes() == before.tobytes()
    assert changed == 8
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["rece_rounds"] == 3 and metrics["initial_rows"] == 8 - 1
    assert metrics["kernel_relative_change"] > 0
    eight = subprocess.run(
        [sys.executable, "-m", "experiments", "rece_erase", "--preset", "paper", *args,
         "--out", str(tmp_path / "eight")],
        env=eight_device_env(),
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert eight.returncode == 0, eight.stderr[-2000:]
    (other,) = glob.glob(str(tmp_path / "eight" / "rece_erase" / "*" / "unet" / "*.safetensors"))
    for key, value in safetensors.numpy.load_file(other).items():
        np.testing.assert_allclose(value.astype(np.float32), edited[key].astype(np.float32), atol=2e-3)

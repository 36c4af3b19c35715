"""Every ``paper`` preset end to end on 8 simulated devices: TFDS data from ``tfds.testing.mock_data`` (or the
generated world / a generated SD checkpoint), size overrides that keep the preset's model class and data
pipeline, and every training batch split over the 8 devices (each call of ``parallel.shard_batch`` is
recorded and checked). Marked ``paper`` and left out of the default run (about half an hour on 2 cores);
CI runs them as their own step: ``python -m pytest -m paper tests/paper``."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from problems import eight_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import tensorflow_datasets as tfds
    from unlearnx import parallel

    name, preset, out, result, examples, *overrides = sys.argv[1:]
    placed = []
    original = parallel.shard_batch

    def recording(batch, mesh, axis=0):
        placed_batch = original(batch, mesh, axis)
        leaf = jax.tree.leaves(placed_batch)[0]
        sharding = leaf.sharding
        placed.append([leaf.shape[axis], len(sharding.device_set), not sharding.is_fully_replicated])
        return placed_batch

    parallel.shard_batch = recording
    from experiments import __main__ as cli

    with tfds.testing.mock_data(num_examples=int(examples)):
        run_dir = cli.run_one(name, preset, overrides, out=out, resume=False)
    json.dump({"run_dir": run_dir, "placed": placed, "devices": jax.device_count()}, open(result, "w"))
    """
)

SMALL_IMAGE_RUN = ["--seeds", "0", "--width", "4", "--batch_size", "32"]
GRANET = [*SMALL_IMAGE_RUN, "--epochs", "2", "--methods", "dense,rigl,granet_s2s", "--sparsities", "0.9"]
GRANET += ["--frequency", "2"]
CASES = {
    ("ssd_forget", "paper"): (
        [*SMALL_IMAGE_RUN, "--forget_classes", "2", "--epochs", "1", "--lr_milestones", "",
         "--finetune_epochs", "1", "--neggrad_epochs", "1", "--amnesiac_epochs", "1", "--alpha_sweep", "10",
         "--importance_batch_size", "32", "--empirical_chunk_size", "8"],
        1500,  # the loss MIA needs ≥ 5 test examples of the forget class (random mock labels over 100)
    ),
    ("granet_sparse", "paper"): (GRANET, 200),
    ("granet_sparse", "paper_cifar100"): (GRANET, 200),
    ("granet_sparse", "paper_vgg19"): (GRANET, 200),
    ("granet_sparse", "paper_vgg19_cifar100"): (GRANET, 200),
    ("powerlaw_rehearsal", "paper"): (
        ["--seeds", "0", "--num_tasks", "2", "--width", "16", "--epochs", "1", "--batch_size", "32",
         "--new_count", "96", "--replay_ratios", "0.5", "--fisher_examples", "40", "--probe_size", "32",
         "--methods", "naive,power_law_unrestricted,uniform,ewc"],
        150,
    ),
    ("restor_recovery", "paper"): (
        ["--num_people", "40", "--d_model", "32", "--num_heads", "4", "--batch_size", "16", "--clean_epochs",
         "1", "--clean_warmup_steps", "2", "--corrupt_max_epochs", "1", "--ks", "1", "--unlearn_steps", "2",
         "--unlearn_batch_size", "8", "--methods", "npo,ssd", "--importance_docs", "16",
         "--utility_people", "4", "--heldout_docs", "8"],
        10,
    ),
    ("repeated_data", "paper"): (
        ["--sizes", "32x6x2,48x6x2,64x6x2", "--attention_only_sizes", "32x2x2", "--seq_len", "32",
         "--batch_size", "16", "--steps", "4", "--warmup_steps", "1", "--repeat_epochs", "2",
         "--sweep_fractions", "", "--eval_points", "2", "--eval_sequences", "8", "--repeated_eval_sequences",
         "8", "--final_eval_sequences", "16", "--probe_batch", "8", "--icl_early", "2,6", "--icl_late",
         "26,32", "--linear_seeds", "2", "--linear_epochs", "1,4"],
        600,  # mock lm1b lines are ~15 bytes: the unique stream needs 2,048 distinct tokens
    ),
}  # fmt: skip


@pytest.mark.paper
@pytest.mark.parametrize(("name", "preset"), list(CASES), ids=[f"{n}-{p}" for n, p in CASES])
def test_paper_preset_runs_end_to_end_on_eight_devices(tmp_path, name, preset):
    overrides, examples = CASES[name, preset]
    result = tmp_path / "result.json"
    env = eight_device_env()
    env["TFDS_DATA_DIR"] = str(tmp_path / "tfds")  # mock_data never reads it, but nothing else may either
    command = [sys.executable, "-c", SCRIPT, name, preset, str(tmp_path / "runs"), str(result), str(examples)]
    done = subprocess.run(
        [*command, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads(result.read_text())
    assert record["devices"] == 8
    placed = record["placed"]
    assert placed, "no batch was placed on the mesh"
    assert all(devices == 8 and split for _, devices, split in placed), placed[:5]
    run_dir = record["run_dir"]
    for output in ("metrics.json", "report.md", "plan.json", "config.json"):
        assert os.path.getsize(os.path.join(run_dir, output)) > 0, output
    with open(os.path.join(run_dir, "plan.json")) as handle:
        assert json.load(handle)["devices"] == 8
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        assert json.load(handle)["diverged"] == []

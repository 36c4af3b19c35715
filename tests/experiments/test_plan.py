"""--plan: each planned experiment's loops priced without training or reading data."""

import pytest

from experiments import __main__ as cli


@pytest.mark.parametrize(
    ("name", "loops"),
    [
        ("ssd_forget", {"original", "retrain", "finetune", "neggrad+", "amnesiac", "bad_teacher"}),
        ("granet_sparse", {"dense", "static", "set", "rigl", "gmp", "granet_d2s", "granet_s2s"}),
        ("powerlaw_rehearsal", {"task phases"}),
        ("restor_recovery", {"clean", "corrupt_k1", "unlearn npo"}),
        ("repeated_data", {"train_lm_16x1x2", "train_lm_24x1x2", "train_lm_32x1x2", "train_attn_16x2x2"}),
        ("rece_erase", {"testbed", "testbed_classifier"}),
    ],
)
def test_plan_prices_every_loop_of_the_smoke_preset(name, loops):
    """Every experiment's smoke preset: each loop priced (repeats folded into × runs)."""
    text, record = cli.plan_one(name, "smoke", [])
    assert {phase["name"] for phase in record["phases"]} == loops
    for phase in record["phases"]:
        assert phase["flops_per_step"] > 0 and phase["steps"] > 0 and phase["params"] > 0
        assert phase["peak_bytes"] >= phase["argument_bytes"] > 0
    assert record["total_hours"]["TPU v4"] > 0 and "| **total** |" in text


def test_plan_of_the_sd_preset_prices_the_closed_form_edit():
    """The RECE paper preset trains nothing: its plan is UCE + RECE rounds on SD v1.4's 32 kernels."""
    text, record = cli.plan_one("rece_erase", "paper", [])
    (phase,) = record["phases"]
    assert phase["steps"] == 1 and phase["name"].startswith("UCE + 3 RECE rounds")
    # 32 kernels 768 × (320|640|1280) plus three 77 × 768 key blocks.
    kernels = 2 * 768 * (320 * 5 + 640 * 5 + 1280 * 6)
    assert phase["params"] == kernels + 3 * 77 * 768 and phase["flops_per_step"] > 0

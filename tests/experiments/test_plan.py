"""--plan: each planned experiment's loops priced without training or reading data."""

import pytest

from experiments import __main__ as cli


@pytest.mark.parametrize(
    ("name", "loops"),
    [
        ("ssd_forget", {"original", "retrain", "finetune", "neggrad+", "amnesiac", "bad_teacher"}),
        ("granet_sparse", {"dense", "static", "set", "rigl", "gmp", "granet_d2s", "granet_s2s"}),
        ("powerlaw_rehearsal", {"task phases"}),
    ],
)
def test_plan_prices_every_loop_of_the_smoke_preset(name, loops):
    text, record = cli.plan_one(name, "smoke", [])
    assert {phase["name"] for phase in record["phases"]} == loops
    for phase in record["phases"]:
        assert phase["flops_per_step"] > 0 and phase["steps"] > 0 and phase["params"] > 0
        assert phase["peak_bytes"] >= phase["argument_bytes"] > 0
    assert record["total_hours"]["TPU v4"] > 0 and "| **total** |" in text


def test_plan_names_experiments_it_does_not_cover_yet():
    with pytest.raises(SystemExit, match="no plan yet"):
        cli.plan_one("rece_erase", "smoke", [])

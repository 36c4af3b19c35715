"""Count-matrix environments against the public environment's listed counts and NumPy float64 references."""

import math

import numpy as np
import pytest

from unlearnx import continual

#: The public permuted-MNIST environment's unrestricted counts by age 0..9 (spec §3b).
LISTED = [57927, 33969, 20867, 13329, 8802, 5981, 4167, 2968, 2155, 1592]


def test_unrestricted_power_law_matches_the_listed_counts_and_float64():
    matrix = continual.count_matrix("power_law_unrestricted", num_tasks=10)
    by_age = [int(matrix[0, a]) for a in range(10)]
    # equal to the listed counts except age 7: rint(2,967.34) = 2,967 here, 2,968 listed (1 in 2,968)
    assert by_age == [*LISTED[:7], 2967, *LISTED[8:]]
    np.testing.assert_allclose(by_age, LISTED, rtol=4e-4)
    ages = np.arange(10, dtype=np.float64)
    reference = np.rint(57927.0 * np.power((ages + 10.0) / 10.0, -5.6))
    for i in range(10):
        for j in range(10):
            expected = reference[i - j] if j <= i else 0
            assert matrix[j, i] == expected, (j, i)
    # hand-computed: 57,927 · 1.1^−5.6 = 33,968.94 → 33,969
    assert matrix[3, 4] == 33969 and matrix.dtype == np.int64


def test_baselines_by_hand():
    lower = continual.count_matrix("lower", num_tasks=3, new_count=7)
    np.testing.assert_array_equal(lower, [[7, 0, 0], [0, 7, 0], [0, 0, 7]])
    upper = continual.count_matrix("upper", num_tasks=3, new_count=7)
    np.testing.assert_array_equal(upper, [[7, 7, 7], [0, 7, 7], [0, 0, 7]])


@pytest.mark.parametrize("kind", ["uniform", "exponential", "power_law"])
@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5, 0.25, 0.1])
def test_budgeted_environments_spend_the_same_budget_every_phase(kind, ratio):
    matrix = continual.count_matrix(kind, num_tasks=10, ratio=ratio, exponent=1.0, rate=1.0)
    budget = math.floor(ratio * 57927)
    np.testing.assert_array_equal(np.diag(matrix), 57927)
    assert np.all(np.tril(matrix, -1) == 0)
    for phase in range(1, 10):
        assert matrix[:phase, phase].sum() == budget, (phase, matrix[:, phase])
        replay = matrix[:phase, phase]
        if kind == "uniform":
            assert replay.max() - replay.min() <= 1
        else:  # decays with age: older tasks (lower j) never get more
            assert np.all(np.diff(replay) >= 0), replay


def test_budgeted_shares_against_float64_weights():
    # phase 3 of B = ⌊0.5·1000⌋ = 500: exponential shares e^−3, e^−2, e^−1 (ages 3, 2, 1), power law
    # (a + 1)^−1 = 1/4, 1/3, 1/2; largest-remainder rounding keeps every count within 1 of B·share.
    for kind, weights in (
        ("exponential", np.exp(-np.array([3.0, 2.0, 1.0]))),
        ("power_law", 1.0 / np.array([4.0, 3.0, 2.0])),
    ):
        matrix = continual.count_matrix(kind, num_tasks=4, new_count=1000, ratio=0.5)
        quota = 500.0 * weights / weights.sum()
        assert np.all(np.abs(matrix[:3, 3] - quota) < 1.0), (kind, matrix[:3, 3], quota)
    uniform = continual.count_matrix("uniform", num_tasks=4, new_count=1000, ratio=0.5)
    np.testing.assert_array_equal(uniform[:3, 3], [166, 167, 167])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"environment": "nope"}, "environment"),
        ({"environment": "lower", "num_tasks": 0}, "num_tasks"),
        ({"environment": "lower", "new_count": 0}, "new_count"),
        ({"environment": "uniform"}, "ratio must be given"),
        ({"environment": "uniform", "ratio": 0.0}, "ratio"),
        ({"environment": "uniform", "ratio": 1.5}, "ratio"),
        ({"environment": "upper", "ratio": 0.5}, "ratio is only"),
        ({"environment": "power_law", "ratio": 0.5, "exponent": -1.0}, "exponent"),
        ({"environment": "power_law_unrestricted", "offset": 0.0}, "offset"),
        ({"environment": "power_law_unrestricted", "decay": float("nan")}, "decay"),
    ],
)
def test_bad_arguments_raise_naming_the_field(kwargs, match):
    arguments = {"num_tasks": 3, **kwargs}
    environment = arguments.pop("environment")
    with pytest.raises(ValueError, match=match):
        continual.count_matrix(environment, **arguments)

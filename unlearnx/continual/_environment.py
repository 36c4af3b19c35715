"""Count-matrix learning environments: how many examples of each task every phase presents.

A phase × task environment is a matrix N ∈ ℕ^{T×T}, N[j, i] = the number of training examples of task j
presented in phase i. Task i is introduced in phase i with its full count n₀ = ``new_count`` (N[i, i] = n₀),
N[j, i] = 0 for j > i (future tasks), and the environments differ in what they replay of the earlier tasks
j < i, whose age in phase i is a = i − j:

    lower:                   N[j, i] = 0                                 (no replay: the diagonal only)
    upper:                   N[j, i] = n₀                                (every earlier task in full)
    power_law_unrestricted:  N[j, i] = rint(n₀·((a + c)/c)^(−p))          (no budget; c = ``offset``,
                                                                          p = ``exponent``)
    uniform / exponential / power_law:
                             N[:i, i] = rehearsal_counts(kind, current_task=i, last_seen=[0..i−1],
                                                          budget=⌊r·n₀⌋, exponent=d, rate=λ)

The budgeted kinds spend exactly B = ⌊r·n₀⌋ replayed examples in every phase i ≥ 1 (largest-remainder
rounding, :func:`unlearnx.continual.rehearsal_counts`), so they compare at equal replayed-example budgets:
uniform splits B evenly, exponential with weights exp(−λa) (the public code's exp(−a/β)/β with β = 1/λ; the
1/β cancels in the normalisation), power_law with weights (a + 1)^(−d) (the clock "time since first learned").

Defaults n₀ = 57,927, c = 10, p = 5.6 are the public permuted-MNIST environment
(``archana53/power-law-for-CI``,
``shared/papers/powerlaw_rehearsal.md`` §3b): its unrestricted counts by age 0..9 are 57,927, 33,969, 20,867,
13,329, 8,802, 5,981, 4,167, 2,968, 2,155, 1,592, which this formula gives to within 0.04% (exactly except
age 7: 2,967 here). Two deliberate differences from that code: the budgeted splits sum to B exactly (it floors
each share, e.g. uniform gives ⌊B/i⌋ per task), and the budgeted power law decays in age (unlearnx's
``power_law`` kind), where the code's "powerlaw" weights α·x^(α−1), x = 0.01·(10 + j), grow with the task
index j.
"""

from __future__ import annotations

import math

import numpy as np

from unlearnx import _validation as checks
from unlearnx.continual.rehearsal import rehearsal_counts

ENVIRONMENTS = ("lower", "upper", "power_law_unrestricted", "uniform", "exponential", "power_law")
BUDGETED = ("uniform", "exponential", "power_law")
#: The public permuted-MNIST environment's new-task count.
PAPER_NEW_COUNT = 57_927

__all__ = ["BUDGETED", "ENVIRONMENTS", "PAPER_NEW_COUNT", "count_matrix"]


def _check(environment, num_tasks, new_count, ratio, exponent, rate, offset, decay) -> tuple[int, int]:
    checks.choice("environment", environment, ENVIRONMENTS)
    num_tasks = checks.static_int("num_tasks", num_tasks, low=1)
    new_count = checks.static_int("new_count", new_count, low=1)
    if environment in BUDGETED:
        if ratio is None:
            raise ValueError(f"ratio must be given (in (0, 1]) for the budgeted environment {environment!r}")
        checks.static_number("ratio", ratio, low=0.0, high=1.0, low_open=True)
    elif ratio is not None:
        raise ValueError(f"ratio is only for the budgeted environments {BUDGETED}, got {ratio!r}")
    checks.static_number("exponent", exponent, low=0.0)
    checks.static_number("rate", rate, low=0.0)
    checks.static_number("offset", offset, low=0.0, low_open=True)
    checks.static_number("decay", decay, low=0.0)
    return num_tasks, new_count


def count_matrix(
    environment: str,
    *,
    num_tasks: int,
    new_count: int = PAPER_NEW_COUNT,
    ratio: float | None = None,
    exponent: float = 1.0,
    rate: float = 1.0,
    offset: float = 10.0,
    decay: float = 5.6,
) -> np.ndarray:
    """The phase × task count matrix N of one environment (see the module docstring for the math).

    Args:
        environment: one of ``ENVIRONMENTS``: ``"lower"``, ``"upper"``, ``"power_law_unrestricted"`` or a
            budgeted kind ``"uniform"`` / ``"exponential"`` / ``"power_law"``.
        num_tasks: T ≥ 1, the number of tasks (= phases).
        new_count: n₀ ≥ 1, the examples of a task in the phase that introduces it.
        ratio: r ∈ (0, 1], the replay budget ⌊r·n₀⌋ per phase of a budgeted environment (None otherwise).
        exponent: d ≥ 0 of the budgeted ``power_law`` kind, weights (a + 1)^(−d).
        rate: λ ≥ 0 of the budgeted ``exponential`` kind, weights exp(−λa) (λ = 1/β).
        offset: c > 0 of the unrestricted power law n₀·((a + c)/c)^(−p).
        decay: p ≥ 0 of the unrestricted power law.

    Returns:
        An int64 ``[T, T]`` NumPy array, N[j, i] = examples of task j presented in phase i: n₀ on the
        diagonal, 0 below it (j > i), the environment's replay above it.

    Raises:
        ValueError: an unknown environment; ``num_tasks`` or ``new_count`` < 1; a budgeted environment
            without a ratio in (0, 1], or a ratio given to an unbudgeted one; a negative or non-finite
            exponent, rate or decay, or a non-positive offset; each message names the argument.
        TypeError: a non-integer ``num_tasks`` / ``new_count`` or a non-number hyper-parameter.

    Examples:
        >>> from unlearnx.continual import count_matrix
        >>> count_matrix("power_law_unrestricted", num_tasks=3)[:, 2].tolist()
        [20867, 33969, 57927]
        >>> count_matrix("uniform", num_tasks=3, new_count=100, ratio=0.5).tolist()
        [[100, 50, 25], [0, 100, 25], [0, 0, 100]]

    Reference:
      The public permuted-MNIST environment ``archana53/power-law-for-CI`` (``environments.py``) of Gandhi
      et al., *Catastrophic Interference is Mitigated in Naturalistic Power-Law Learning Environments*,
      arXiv 2401.10393.
    """
    num_tasks, new_count = _check(environment, num_tasks, new_count, ratio, exponent, rate, offset, decay)
    counts = np.diag(np.full(num_tasks, new_count, np.int64))
    age = np.arange(num_tasks)[None, :] - np.arange(num_tasks)[:, None]  # age[j, i] = i − j
    past = age > 0
    if environment == "upper":
        counts[past] = new_count
    elif environment == "power_law_unrestricted":
        decayed = np.rint(new_count * ((age + float(offset)) / float(offset)) ** (-float(decay)))
        counts[past] = decayed[past].astype(np.int64)
    elif environment in BUDGETED:
        budget = math.floor(float(ratio) * new_count)
        for phase in range(1, num_tasks):
            replay = rehearsal_counts(
                environment, current_task=phase, last_seen=np.arange(phase), budget=budget,
                exponent=exponent, rate=rate,
            )  # fmt: skip
            counts[:phase, phase] = np.asarray(replay, np.int64)
    return counts

"""Count-matrix mode of ``powerlaw_rehearsal``: the public permuted-MNIST environment (spec §3b).

With ``config.new_count = n₀`` set, a method's training data are not "the new task plus B examples from
per-task memories" but an explicit phase × task matrix N (:func:`unlearnx.continual.count_matrix`): in
phase i the model trains on N[j, i] examples of every task j ≤ i, drawn from task j's whole training split
(uniformly without replacement while N[j, i] fits, else with), concatenated and shuffled together.

Methods (labels in ``metrics.json``):

- ``naive``: the *lower baseline* (the diagonal: no replay); ``ewc`` / ``online_ewc`` / ``si``: the same
  data with the penalty;
- ``upper``: the *upper baseline*, every earlier task in full in every phase;
- ``power_law_unrestricted``: n₀·((a + c)/c)^(−p) by age a, no budget (c, p = ``unrestricted_offset``,
  ``unrestricted_decay``);
- ``uniform`` / ``exponential`` (λ = ``rate``) / ``power_law_<d>`` (weights (a + 1)^(−d)) and
  ``power_law_1+ewc``: *budgeted*, one run per ratio r in ``replay_ratios`` (label ``<method>@<r>``), each
  replaying exactly ⌊r·n₀⌋ examples per phase, so the schedules compare at equal replayed-example budgets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from experiments.report import figure, fmt, markdown_table, mean_std_plot
from unlearnx import continual

#: method -> (environment or rehearsal kind, exponent, penalty); the legacy methods plus the two baselines
ENV_ONLY: dict[str, tuple[str, float, str | None]] = {
    "upper": ("upper", 0.0, None),
    "power_law_unrestricted": ("power_law_unrestricted", 0.0, None),
}
BUDGETED = ("uniform", "exponential", "power_law")


def is_budgeted(spec: tuple[str, float, str | None]) -> bool:
    return spec[0] in BUDGETED


def label(method: str, ratio: float | None) -> str:
    """``method`` or, for a budgeted one, ``method@r``."""
    return method if ratio is None else f"{method}@{ratio:g}"


def jobs(config, specs: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """``(label, method, ratio)`` of every run of one seed: budgeted methods once per replay ratio."""
    runs = []
    for method in config.methods:
        ratios = config.replay_ratios if is_budgeted(specs[method]) else (None,)
        runs += [(label(method, ratio), method, ratio) for ratio in ratios]
    return runs


def matrix(config, spec, num_tasks: int, ratio: float | None) -> np.ndarray:
    """N for one method (see the module docstring)."""
    kind, exponent, _ = spec
    environment = "lower" if kind == "none" else kind
    return continual.count_matrix(
        environment, num_tasks=num_tasks, new_count=config.new_count, ratio=ratio, exponent=exponent,
        rate=config.rate, offset=config.unrestricted_offset, decay=config.unrestricted_decay,
    )  # fmt: skip


def phase_arrays(config, spec, tasks, *, seed: int, phase: int, num_tasks: int, ratio: float | None):
    """Phase ``phase``'s training set (N[j, phase] examples of every task j ≤ phase) and the replayed count
    of every past task, N[:phase, phase]."""
    counts = matrix(config, spec, num_tasks, ratio)[:, phase]
    xs, ys = [], []
    for task in range(phase + 1):
        count = int(counts[task])
        if count == 0:
            continue
        arrays = tasks.train(task)
        size = len(arrays["y"])
        rng = np.random.default_rng((seed, phase, task, 15485863))
        index = np.sort(rng.choice(size, count, replace=count > size))
        xs.append(arrays["x"][index])
        ys.append(arrays["y"][index])
    return {"x": np.concatenate(xs), "y": np.concatenate(ys)}, [int(c) for c in counts[:phase]]


def check(config, specs: dict[str, Any]) -> None:
    """Count-matrix fields, before any work (``ValueError`` naming the field)."""
    if config.new_count is None:
        return
    if config.sweeps:
        raise ValueError("sweeps must be false in count-matrix mode (new_count set): the sweeps vary B")
    if isinstance(config.new_count, bool) or not isinstance(config.new_count, int) or config.new_count < 1:
        raise ValueError(f"new_count must be None or an integer >= 1, got {config.new_count!r}")
    budgeted = [m for m in config.methods if is_budgeted(specs[m])]
    if budgeted and not config.replay_ratios:
        raise ValueError(f"replay_ratios must not be empty with budgeted methods {budgeted}")
    for ratio in config.replay_ratios:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"replay_ratios must lie in (0, 1], got {config.replay_ratios!r}")
    if len(set(config.replay_ratios)) != len(config.replay_ratios):
        raise ValueError(f"replay_ratios must be distinct, got {config.replay_ratios!r}")
    for name in ("unrestricted_offset", "unrestricted_decay"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0.0) or (name == "unrestricted_offset" and value == 0.0):
            raise ValueError(
                f"{name} must be finite and {'> 0' if 'offset' in name else '>= 0'}, got {value!r}"
            )


def consumed(config, run: dict[str, Any], num_tasks: int) -> dict[str, int]:
    """Examples one run presented: replayed per phase summed, and all training examples consumed (every
    phase's set, new task included, times the epochs)."""
    replayed = sum(int(r) for r in run["replayed"] if r is not None)
    presented = replayed + num_tasks * config.new_count
    return {"replayed": replayed, "presented": presented, "trained": presented * config.epochs}


def table(config, metrics: dict[str, Any], specs: dict[str, Any]) -> list[str]:
    """The report's count-matrix section: every environment with its examples, then ACC by budget."""
    summary, rows = metrics["summary"], []
    for name, entry in summary.items():
        method, _, ratio = name.partition("@")
        use = entry["consumed"]
        rows.append([name, ratio or "–", f"{use['replayed']:,}", f"{use['trained']:,}",
                     *(fmt(entry[key], scale=100) for key in ("acc", "bwt", "forgetting"))])  # fmt: skip
    lines = [
        f"## Environments: n₀ = {config.new_count:,} new examples per phase, {config.num_tasks} tasks, "
        f"{config.epochs} passes per phase",
        "",
        "Replayed = Σ over phases of the replayed examples (off-diagonal N, first seed); trained = every "
        "example presented, new tasks included, × passes.",
        "",
        markdown_table(("environment", "r", "replayed", "trained", "ACC %", "BWT %", "forgetting %"), rows),
    ]
    budgeted = [m for m in config.methods if is_budgeted(specs[m])]
    if budgeted:
        lines += ["", "## ACC % at equal replayed-example budgets ⌊r·n₀⌋ per phase", ""]
        lines.append(markdown_table(
            ("r", "budget per phase", *budgeted),
            [[f"{r:g}", f"{math.floor(r * config.new_count):,}",
              *(fmt(summary[label(m, r)]["acc"], scale=100) for m in budgeted)]
             for r in config.replay_ratios],
        ))  # fmt: skip
    return lines


def plot(config, metrics: dict[str, Any], specs: dict[str, Any], run_dir: str) -> None:
    """``budget_accuracy.png``: ACC against r per budgeted schedule; the unbudgeted environments as points at
    their mean replay per phase / n₀ (the lower baseline and EWC at 0, the upper at T/2)."""
    summary = metrics["summary"]
    with figure(run_dir, "budget_accuracy.png", figsize=(7.5, 4.8)) as (fig, ax):
        for method in config.methods:
            if is_budgeted(specs[method]):
                ratios = sorted(config.replay_ratios)
                points = [summary[label(method, r)]["acc"] for r in ratios]
                mean_std_plot(ax.errorbar, ratios, points, scale=100, marker="o", label=method)
            else:
                entry = summary[method]
                phases = max(config.num_tasks - 1, 1)
                ratio = entry["consumed"]["replayed"] / (phases * config.new_count)
                ax.errorbar([ratio], [entry["acc"]["mean"] * 100], yerr=[entry["acc"]["std"] * 100],
                            marker="s", linestyle="none", capsize=3, label=method)  # fmt: skip
        ax.set_xlabel("replayed examples per phase / n₀ (budget r)")
        ax.set_ylabel("ACC after the last phase %")
        ax.legend(fontsize="small")

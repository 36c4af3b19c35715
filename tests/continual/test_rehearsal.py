"""Rehearsal schedules, CL metrics and the replay buffer against hand-built references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearnx import continual


@st.composite
def schedules(draw):
    current = draw(st.integers(1, 12))
    last_seen = draw(st.lists(st.integers(0, current - 1), min_size=current, max_size=current))
    return current, np.asarray(last_seen), draw(st.integers(0, 5000))


@settings(max_examples=80, deadline=None)
@given(schedules(), st.sampled_from(["power_law", "exponential", "uniform", "none"]), st.floats(0, 3))
def test_counts_sum_to_the_budget_and_favour_recent_tasks(schedule, kind, shape):
    current, last_seen, budget = schedule
    counts = np.asarray(
        continual.rehearsal_counts(
            kind, current_task=current, last_seen=last_seen, budget=budget, exponent=shape, rate=shape
        )
    )
    assert counts.shape == (current,) and counts.dtype == np.int32 and np.all(counts >= 0)
    if kind == "none":
        assert counts.sum() == 0
        return
    assert counts.sum() == budget
    age = current - last_seen
    if kind == "uniform":
        assert counts.max() - counts.min() <= 1
    else:
        for i in range(current):
            for j in range(current):
                if age[i] > age[j]:  # task i is older: never more rehearsal than task j
                    assert counts[i] <= counts[j], (age, counts)


def test_counts_by_hand_and_degenerate_cases():
    got = continual.rehearsal_counts(
        "power_law", current_task=4, last_seen=np.arange(4), budget=100, exponent=1.0
    )
    # weights 1/5, 1/4, 1/3, 1/2 → 15.58, 19.48, 25.97, 38.96 → floors 15, 19, 25, 38; 3 left to the largest
    # remainders (.97, .96, .58).
    np.testing.assert_array_equal(got, [16, 19, 26, 39])
    uniform = continual.rehearsal_counts("uniform", current_task=3, last_seen=np.arange(3), budget=100)
    np.testing.assert_array_equal(uniform, [33, 33, 34])  # ties: the most recent task gets the spare one
    for kind, kwargs in (("power_law", {"exponent": 0.0}), ("exponential", {"rate": 0.0})):
        same = continual.rehearsal_counts(kind, current_task=3, last_seen=np.arange(3), budget=100, **kwargs)
        np.testing.assert_array_equal(same, uniform)


def test_counts_jit_with_traced_last_seen():
    fn = jax.jit(
        lambda seen: continual.rehearsal_counts("exponential", current_task=5, last_seen=seen, budget=64)
    )
    np.testing.assert_array_equal(
        fn(jnp.arange(5)),
        continual.rehearsal_counts("exponential", current_task=5, last_seen=np.arange(5), budget=64),
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(current_task=0, last_seen=np.zeros(0), budget=10), "no past task"),
        (dict(current_task=2, last_seen=np.arange(2), budget=10, exponent=-1.0), "exponent"),
        (dict(current_task=2, last_seen=np.arange(2), budget=10.5), "budget must be a non-negative integer"),
        (dict(current_task=2, last_seen=np.arange(3), budget=10), "one entry per past task"),
    ],
)
def test_rehearsal_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        continual.rehearsal_counts("power_law", **kwargs)


def test_cl_metrics_on_a_hand_built_matrix():
    r = np.asarray([[0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [0.5, 0.7, 0.95]])
    b = np.asarray([0.1, 0.1, 0.2])
    got = continual.cl_metrics(r, b)
    assert got["acc"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert got["bwt"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert got["fwt"] == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2)) / 2)
    assert got["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert got["bwt"] == pytest.approx(-got["forgetting"])  # the max is right after training here
    later_peak = r.copy()
    later_peak[1, 0] = 0.95  # task 0 improves after task 1: forgetting counts from the peak, BWT does not
    other = continual.cl_metrics(later_peak, b)
    assert other["forgetting"] == pytest.approx(((0.95 - 0.5) + (0.8 - 0.7)) / 2)
    assert other["bwt"] == pytest.approx(got["bwt"])
    with pytest.raises(ValueError, match="square"):
        continual.cl_metrics(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="one entry per task"):
        continual.cl_metrics(np.zeros((2, 2)), np.zeros(3))


def test_replay_buffer_reservoir_and_sampling():
    buffer = continual.buffer_init(3, 4, {"x": jnp.zeros(2), "y": jnp.zeros((), jnp.int32)})
    key = jax.random.key(0)
    first = {"x": jnp.arange(6.0).reshape(3, 2), "y": jnp.arange(3)}
    buffer = jax.jit(continual.buffer_add, static_argnums=1)(buffer, 0, first, key)
    np.testing.assert_array_equal(buffer.data["y"][0, :3], [0, 1, 2])  # free slots fill in order
    many = {"x": jnp.zeros((500, 2)), "y": jnp.arange(500) + 100}
    buffer = continual.buffer_add(buffer, 1, many, key)
    np.testing.assert_array_equal(buffer.seen, [3, 500, 0])
    np.testing.assert_array_equal(buffer.stored, [3, 4, 0])
    assert len(set(np.asarray(buffer.data["y"][1]).tolist())) == 4  # distinct stored examples
    # Reservoir: the last examples are kept with probability capacity / n, not always.
    empty = continual.buffer_init(1, 4, {"y": jnp.zeros((), jnp.int32)})
    add_stream = jax.jit(
        jax.vmap(lambda k: continual.buffer_add(empty, 0, {"y": jnp.arange(40)}, k).data["y"][0])
    )
    late = np.mean(np.asarray(add_stream(jax.random.split(jax.random.key(0), 200))) >= 20, axis=1)
    assert 0.35 < np.mean(late) < 0.65  # half the stream is "late": a uniform subset keeps ~half of them
    sample = continual.buffer_sample(buffer, jnp.asarray([1.0, 3.0, 0.0]), jax.random.key(1), 4000)
    from_task1 = np.mean(np.asarray(sample["y"]) >= 100)
    assert from_task1 == pytest.approx(0.75, abs=0.03)
    assert set(np.asarray(sample["y"])[np.asarray(sample["y"]) < 100].tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="task 2 \\(count 5.0\\), which holds none"):
        continual.buffer_sample(buffer, jnp.asarray([1.0, 3.0, 5.0]), jax.random.key(1), 10)


# -- class 5 of issue 14: budgets and buffers keep their invariants ------------------------------------------


@pytest.mark.parametrize("rate", [87.0, 100.0, 1e6, 1e300])
def test_counts_sum_to_the_budget_when_every_weight_underflows(rate):
    counts = continual.rehearsal_counts(
        "exponential", current_task=4, last_seen=np.arange(4), budget=1000, rate=rate
    )
    np.testing.assert_array_equal(counts, [0, 0, 0, 1000])  # the most recent task takes everything
    far = continual.rehearsal_counts(
        "power_law", current_task=3, last_seen=np.asarray([0, 0, 1]), budget=7, exponent=1e308
    )
    np.testing.assert_array_equal(far, [0, 0, 7])


@pytest.mark.parametrize("budget", [2**24 + 1, 2**31, 2**53 + 7, 2**62, 2**63 - 1])
@pytest.mark.parametrize("kind", ["power_law", "exponential", "uniform"])
def test_huge_budgets_are_exact(budget, kind):
    counts = continual.rehearsal_counts(kind, current_task=7, last_seen=np.arange(7), budget=budget)
    assert sum(int(c) for c in np.asarray(counts).tolist()) == budget
    assert np.all(np.asarray(counts) >= 0)
    if budget > 2**31 - 1:
        assert isinstance(counts, np.ndarray) and counts.dtype == np.int64
    if kind != "uniform":
        assert np.all(np.diff(np.asarray(counts, dtype=object)) >= 0)  # recent tasks get at least as many


@pytest.mark.parametrize(
    "last_seen,shown",
    [([0, 1, 5], "5.0 at index 2"), ([0, -1, 1], "-1.0 at index 1"), ([0, 0.5, 1], "0.5 at index 1")],
)
def test_last_seen_in_the_future_or_negative_raises(last_seen, shown):
    with pytest.raises(
        ValueError, match=f"last_seen must hold task indices in \\[0, current_task = 3\\].*{shown}"
    ):
        continual.rehearsal_counts("power_law", current_task=3, last_seen=np.asarray(last_seen), budget=10)


def test_bad_kinds_and_traced_hyperparameters_raise():
    with pytest.raises(ValueError, match="kind must be one of .*'powerlaw'"):
        continual.rehearsal_counts("powerlaw", current_task=2, last_seen=np.arange(2), budget=4)
    with pytest.raises(ValueError, match="rate must be a finite number >= 0, got nan"):
        continual.rehearsal_counts(
            "exponential", current_task=2, last_seen=np.arange(2), budget=4, rate=np.nan
        )
    with pytest.raises(TypeError, match="rate is a traced value"):
        jax.jit(
            lambda r: continual.rehearsal_counts(
                "exponential", current_task=2, last_seen=np.arange(2), budget=4, rate=r
            )
        )(1.0)


def test_traced_last_seen_falls_back_to_the_exact_allocation():
    run = jax.jit(
        lambda seen: continual.rehearsal_counts(
            "exponential", current_task=3, last_seen=seen, budget=9, rate=200.0
        )
    )
    np.testing.assert_array_equal(run(jnp.arange(3)), [0, 0, 9])


def test_buffer_task_ids_are_checked_and_never_wrap():
    buffer = continual.buffer_init(3, 4, {"y": jnp.zeros((), jnp.int32)})
    batch = {"y": jnp.arange(2)}
    for task in (-1, 3, 10):
        with pytest.raises(ValueError, match=f"task must be an integer in \\[0, 2\\], got {task}"):
            continual.buffer_add(buffer, task, batch, jax.random.key(0))
    add = jax.jit(continual.buffer_add)
    unchanged = add(buffer, -1, batch, jax.random.key(0))  # traced: a no-op, not a write to the last task
    np.testing.assert_array_equal(unchanged.seen, [0, 0, 0])
    np.testing.assert_array_equal(unchanged.data["y"], buffer.data["y"])
    with pytest.raises(ValueError, match="buffer.data and batch have different structures"):
        continual.buffer_add(buffer, 0, {"x": jnp.zeros((2, 1))}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"batch\['y'\] must be \[batch, \*\(\)\]"):
        continual.buffer_add(buffer, 0, {"y": jnp.zeros((2, 3), jnp.int32)}, jax.random.key(0))


def test_sampling_an_empty_buffer_raises_eagerly_and_is_flagged_under_jit():
    buffer = continual.buffer_init(2, 4, {"x": jnp.zeros(2), "y": jnp.zeros((), jnp.int32)})
    with pytest.raises(ValueError, match="task 0 \\(count 1.0\\), which holds none"):
        continual.buffer_sample(buffer, jnp.asarray([1.0, 0.0]), jax.random.key(0), 3)
    with pytest.raises(ValueError, match="nothing to sample"):
        continual.buffer_sample(buffer, jnp.zeros(2), jax.random.key(0), 3)
    with pytest.raises(ValueError, match="counts\\[''\\]|counts must be finite and non-negative"):
        continual.buffer_sample(buffer, jnp.asarray([-1.0, 0.0]), jax.random.key(0), 3)
    drawn = jax.jit(continual.buffer_sample, static_argnums=3)(
        buffer, jnp.asarray([1.0, 1.0]), jax.random.key(0), 3
    )
    assert np.all(np.isnan(np.asarray(drawn["x"]))) and np.all(np.asarray(drawn["y"]) == -1)

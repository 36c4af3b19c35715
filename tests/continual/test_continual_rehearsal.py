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
    sample = continual.buffer_sample(buffer, jnp.asarray([1.0, 3.0, 5.0]), jax.random.key(1), 4000)
    from_task1 = np.mean(np.asarray(sample["y"]) >= 100)
    assert from_task1 == pytest.approx(0.75, abs=0.03)  # task 2 is empty and never drawn
    assert set(np.asarray(sample["y"])[np.asarray(sample["y"]) < 100].tolist()) <= {0, 1, 2}

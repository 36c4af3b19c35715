"""unlearnx.continual.permuted: task 0 is the data as is, each later task one fixed feature permutation of
every example (train and test alike), labels kept, the same sequence for the same seed."""

import numpy as np
import pytest

from unlearnx.continual.permuted import PermutedTasks, permute_features, task_permutation


def _split(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 3, 3, 2)).astype(np.float32), "y": rng.integers(0, 4, n)}


def test_task_zero_is_the_data_and_later_tasks_permute_features_consistently():
    train, test = _split(5, 0), _split(4, 1)
    tasks = PermutedTasks(train, test, seed=3)
    assert tasks.input_shape == (3, 3, 2) and tasks.features == 18
    np.testing.assert_array_equal(tasks.train(0)["x"], train["x"])
    for task in (1, 2):
        order = task_permutation(3, task, 18)
        assert sorted(order.tolist()) == list(range(18)) and not np.array_equal(order, np.arange(18))
        for split, source in ((tasks.train(task), train), (tasks.test(task), test)):
            np.testing.assert_array_equal(
                split["x"].reshape(len(source["x"]), -1), source["x"].reshape(len(source["x"]), -1)[:, order]
            )
            np.testing.assert_array_equal(split["y"], source["y"])
    assert tasks.train(1)["x"] is tasks.train(1)["x"]  # permuted once, then cached
    again = PermutedTasks(train, test, seed=3)
    np.testing.assert_array_equal(again.test(2)["x"], tasks.test(2)["x"])
    other = PermutedTasks(train, test, seed=4)
    assert not np.array_equal(other.train(1)["x"], tasks.train(1)["x"])


def test_bad_inputs_raise_naming_them():
    split = _split(3, 0)
    with pytest.raises(ValueError, match="test"):
        PermutedTasks(split, {"x": split["x"]}, seed=0)
    with pytest.raises(ValueError, match="shape"):
        PermutedTasks(split, {"x": split["x"][:, :2], "y": split["y"]}, seed=0)
    with pytest.raises(ValueError, match="seed"):
        PermutedTasks(split, split, seed=-1)
    with pytest.raises(ValueError, match="task"):
        task_permutation(0, -1, 4)
    with pytest.raises(ValueError, match="order"):
        permute_features(split["x"], np.arange(5))

"""unlearnx.train steps and fit: the weighted/soft objective by hand, a real fit on digits, its records."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearnx import data, models, train


def test_example_losses_by_hand():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    hard = train.example_losses(logits, {"y": jnp.asarray([0, 2])})
    np.testing.assert_allclose(hard, [np.log(2), -np.log(0.8)], rtol=1e-6)
    weighted = train.example_losses(logits, {"y": jnp.asarray([0, 2]), "weight": jnp.asarray([2.0, -1.0])})
    np.testing.assert_allclose(weighted, [2 * np.log(2), np.log(0.8)], rtol=1e-6)
    targets = jnp.asarray([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]])
    kl = train.example_losses(logits, {"target_probs": targets})
    want = [0.5 * np.log(0.5 / 0.5) + 0.5 * np.log(0.5 / 0.25), 0.0]  # KL(t || p), 0 log 0 = 0
    np.testing.assert_allclose(kl, want, atol=1e-6)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def _mlp(dataset):
    return models.mlp(dataset.x.shape[1:], dataset.num_classes, hidden=(32,))


def test_fit_learns_digits_and_logs(digits, tmp_path):
    train_set, test_set = digits
    model = _mlp(train_set)
    variables = model.init(jax.random.key(0))
    before = np.mean(np.argmax(train.predict(model, variables, test_set.x), 1) == test_set.y)
    logger = train.MetricLogger(tmp_path / "log.jsonl")
    trained, history = train.fit(
        model,
        variables,
        train_set.arrays(),
        optimizer=optax.adam(3e-3),
        epochs=8,
        batch_size=64,
        rng=jax.random.key(1),
        logger=logger,
        progress=False,
    )
    after = np.mean(np.argmax(train.predict(model, trained, test_set.x), 1) == test_set.y)
    assert before < 0.3 and after > 0.9
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["step"] == 8 * (len(train_set) // 64)  # the short last batch is dropped
    assert [r["loss"] for r in records] == [r["loss"] for r in history]
    events = os.listdir(tmp_path / "tensorboard")  # the same records as TensorBoard scalars
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 100


def test_predict_pads_without_changing_outputs(digits):
    train_set, _ = digits
    model = _mlp(train_set)
    variables = model.init(jax.random.key(0))
    direct = np.asarray(model.apply(variables, jnp.asarray(train_set.x[:37])))
    np.testing.assert_allclose(
        train.predict(model, variables, train_set.x[:37], batch_size=16), direct, rtol=1e-5, atol=1e-6
    )


def test_fit_rejects_bad_arguments(digits):
    train_set, _ = digits
    model = _mlp(train_set)
    with pytest.raises(ValueError, match="batch_size >= 1, got 0"):
        train.fit(
            model,
            model.init(jax.random.key(0)),
            train_set.arrays(),
            optimizer=optax.sgd(0.1),
            epochs=1,
            batch_size=0,
            rng=jax.random.key(0),
        )
    with pytest.raises(ValueError, match="x is empty"):
        train.predict(model, model.init(jax.random.key(0)), train_set.x[:0])


def test_augmented_fit_is_reproducible(digits):
    train_set, _ = digits
    model = _mlp(train_set)
    variables = model.init(jax.random.key(0))
    arrays = {k: v[:256] for k, v in train_set.arrays().items()}
    kwargs = dict(optimizer=optax.adam(1e-3), epochs=2, batch_size=64, rng=jax.random.key(1), progress=False)
    augment = functools.partial(data.crop_and_flip, pad=1)
    first, _ = train.fit(model, variables, arrays, augment=augment, **kwargs)
    second, _ = train.fit(model, variables, arrays, augment=augment, **kwargs)
    plain, _ = train.fit(model, variables, arrays, **kwargs)
    kernel = ("params", "Dense_0", "kernel")

    def get(v):
        return v[kernel[0]][kernel[1]][kernel[2]]

    np.testing.assert_array_equal(get(first), get(second))
    assert not np.allclose(get(first), get(plain))


def test_bad_labels_and_inputs_are_named(digits):
    train_set, _ = digits
    model = _mlp(train_set)
    variables = model.init(jax.random.key(0))
    kwargs = dict(optimizer=optax.sgd(0.1), epochs=1, batch_size=64, rng=jax.random.key(0), progress=False)
    arrays = train_set.arrays()
    for label in (-1, 10):
        bad = {**arrays, "y": np.where(np.arange(len(arrays["y"])) == 5, label, arrays["y"])}
        with pytest.raises(
            ValueError, match=rf"arrays\['y'\] must be class labels in \[0, 10\), found {label} at index 5"
        ):
            train.fit(model, variables, bad, **kwargs)
    with pytest.raises(ValueError, match="'y' \\(labels\\) or 'target_probs'"):
        train.fit(model, variables, {"x": arrays["x"]}, **kwargs)
    with pytest.raises(ValueError, match="variables must be a dict with 'params'"):
        train.fit(model, variables["params"], arrays, **kwargs)
    # Inside jit the labels are traced: an out-of-range one gives a NaN loss, never a wrapped class.
    logits = jnp.zeros((2, 3))
    losses = jax.jit(train.example_losses)(logits, {"y": jnp.asarray([-1, 1])})
    assert np.isnan(losses[0]) and np.isclose(losses[1], np.log(3))
    tokens = jnp.asarray([[0, 1, 7]])
    assert np.isnan(jax.jit(train.next_token_losses)(jnp.zeros((1, 3, 4)), {"x": tokens})[0])
    with pytest.raises(ValueError, match=r"batch\['x'\] must be token ids in \[0, 4\), found 7"):
        train.next_token_losses(jnp.zeros((1, 3, 4)), {"x": tokens})


@pytest.mark.parametrize("loss", [train.example_losses, train.next_token_losses])
def test_microbatches_accumulate_the_full_batch_gradient(loss):
    """k accumulated parts give the update of the whole batch (float64 reference: one SGD step by hand)."""
    if loss is train.example_losses:
        model = models.mlp((6,), 4, hidden=(8,))
        batch = {"x": np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)}
        batch["y"] = np.arange(12) % 4
    else:
        model = models.decoder_lm(16, max_len=5, d_model=8, num_layers=1, num_heads=2)
        batch = {"x": np.random.default_rng(0).integers(0, 16, size=(12, 5))}
    variables = model.init(jax.random.key(0))
    optimizer = optax.sgd(0.5)
    state = train.TrainState.create(variables, optimizer, jax.random.key(1))
    whole, whole_metrics = train.make_train_step(model, optimizer, loss=loss)(state, batch)
    parts, parts_metrics = train.make_train_step(model, optimizer, loss=loss, microbatches=4)(state, batch)
    # Reference: θ − 0.5 · ∇ mean loss, with the gradient of the whole batch computed in float64 on the host.
    with jax.enable_x64():
        params64 = jax.tree.map(lambda p: np.asarray(p, np.float64), variables["params"])

        def mean_loss(p):
            return jnp.mean(loss(model.apply({**variables, "params": p}, jnp.asarray(batch["x"])), batch))

        grads = jax.grad(mean_loss)(params64)
        expected = jax.tree.map(lambda p, g: np.asarray(p - 0.5 * g), params64, grads)
    for got in (whole, parts):
        check = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
        jax.tree.map(check, got.variables["params"], expected)
    np.testing.assert_allclose(parts_metrics["loss"], whole_metrics["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="microbatches=5 does not divide the batch of 12"):
        train.make_train_step(model, optimizer, loss=loss, microbatches=5)(state, batch)
    with pytest.raises(ValueError, match="microbatches"):
        train.make_train_step(model, optimizer, loss=loss, microbatches=0)

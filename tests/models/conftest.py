"""Shared fixtures and helpers for the model tests."""

from __future__ import annotations

import jax
import pytest

from unlearnx import models


@pytest.fixture(autouse=True, scope="module")
def _cheap_prng_compilation():
    """Speeds up CPU compilation of parameter initialisers in these tests.

    With the default ``jax_threefry_partitionable=True`` every ``random.normal`` of a new shape
    takes ~1 s to compile on CPU, making a single small ResNet ``init`` cost ~20 s. The model code
    does not depend on this flag; it only changes which random numbers are drawn. Scoped per test
    module so the setting never leaks into other test directories.
    """
    with jax.threefry_partitionable(False):
        yield


SMALL_MODELS = {
    "mlp": (lambda: models.mlp((8, 8, 1), 5, hidden=(16, 12)), (8, 8, 1)),
    "mlp_dropout": (lambda: models.mlp((8, 8, 1), 5, hidden=(16,), dropout=0.5), (8, 8, 1)),
    "cnn": (lambda: models.cnn((8, 8, 1), 5, channels=(4, 8), hidden=16), (8, 8, 1)),
    "cnn_nobn": (
        lambda: models.cnn((8, 8, 1), 5, channels=(4,), hidden=16, batch_norm=False),
        (8, 8, 1),
    ),
}


@pytest.fixture(params=sorted(SMALL_MODELS))
def small(request):
    """Returns ``(model, x)`` for each small model, with a batch of 2 inputs."""
    factory, input_shape = SMALL_MODELS[request.param]
    x = jax.random.normal(jax.random.key(42), (2, *input_shape))
    return factory(), x

"""Tests for `unlearnx.models.get`."""

from __future__ import annotations

import pytest

from unlearnx import models


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "resnet50", "vgg19"])
def test_get_builds_named_model(name):
    model = models.get(name, (16, 16, 3), 4)
    assert isinstance(model, models.Model)
    assert model.name == name


def test_get_forwards_kwargs():
    assert not models.get("cnn", [8, 8, 1], 2, batch_norm=False).has_batch_stats
    assert models.get("mlp", (3,), 2, dropout=0.1).stochastic


def test_get_unknown_name_lists_available():
    assert models.available() == ("cnn", "mlp", "resnet18", "resnet50", "vgg19")
    with pytest.raises(ValueError, match="cnn, mlp, resnet18, resnet50, vgg19"):
        models.get("vgg", (8, 8, 3), 4)

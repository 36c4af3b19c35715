"""Helpers shared by the model tests (kept out of ``conftest.py`` so they can be imported)."""

from __future__ import annotations

from collections.abc import Mapping

import jax


def assert_plain_tree(tree) -> None:
    """Asserts ``tree`` is nested plain ``dict``s with ``str`` keys and ``jax.Array`` leaves."""
    if isinstance(tree, Mapping):
        assert type(tree) is dict, type(tree)
        assert tree, "empty sub-dict"
        for key, value in tree.items():
            assert isinstance(key, str), repr(key)
            assert_plain_tree(value)
    else:
        assert isinstance(tree, jax.Array), type(tree)

"""The library's one type alias for parameter trees (private; its public name is ``unlearnx.tree.PyTree``)."""

from typing import Any, TypeAlias

__all__ = ["PyTree"]

#: Any pytree JAX can flatten: a Linen variable dict, an NNX ``State``, a plain nested dict or list of arrays.
PyTree: TypeAlias = Any

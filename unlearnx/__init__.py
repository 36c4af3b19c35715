"""unlearnx: machine unlearning, model editing, sparse training and continual learning in JAX.

Transforms are pure functions over parameter pytrees (Linen dicts, NNX ``State``, plain dicts) that run
under ``jax.jit`` and compose with optax.
"""

from unlearnx import fisher, tree, unlearn

__version__ = "0.1.0"

__all__ = ["__version__", "fisher", "tree", "unlearn"]

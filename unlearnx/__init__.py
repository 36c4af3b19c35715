"""unlearnx: machine unlearning, model editing, sparse training and continual learning in JAX.

Transforms are pure functions over parameter pytrees (Linen dicts, NNX ``State``, plain dicts) that run
under ``jax.jit`` and compose with optax. Importing the package loads the transforms (``fisher``,
``unlearn``, ``sparse``, ``continual``, ``tree``); ``data``, ``models``, ``train``, ``eval``, ``parallel``,
``checkpoint`` and ``testbed`` (a small text-to-image model for concept erasure) are imported explicitly
(``from unlearnx import data``).
"""

from unlearnx import continual, erase, fisher, sparse, tree, unlearn

__version__ = "0.1.0"

__all__ = ["__version__", "continual", "erase", "fisher", "sparse", "tree", "unlearn"]

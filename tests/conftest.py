"""Gives the whole test session (both pytest-xdist workers and every subprocess they start) one persistent
JAX compilation cache in a fresh temporary folder: the experiment tests rerun and resume the same runs in new
processes, and each would otherwise compile the same programs again. The folder is new per session, so no run
starts warm. (The shared helpers, ``tests/problems.py`` and the like, import by name: pyproject.toml puts
tests/ on ``pythonpath``.)"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the session (xdist's controller)
    _cache = tempfile.mkdtemp(prefix="unlearnx-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

"""Shared test helpers: small reference problems and the three tree flavours every transform accepts."""

import os
import subprocess
import sys

import numpy as np


def softmax_regression_data(n=24, d=5, c=3, seed=0):
    """Inputs, labels and float64 parameters of a softmax-regression problem."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.integers(0, c, size=n)
    w = rng.normal(size=(d, c)) * 0.5
    b = rng.normal(size=c) * 0.1
    return x, y, w, b


def softmax_regression_grads(x, y, w, b):
    """Per-example gradients of the cross-entropy, derived by hand: dW = x (p - e_y)^T, db = p - e_y."""
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    residual = p - np.eye(w.shape[1])[y]
    return np.einsum("nd,nc->ndc", x, residual), residual


def tree_flavours(w, b):
    """The same (kernel, bias) pair as a Linen variables dict, an NNX State and a plain dict.

    Returns ``{name: (tree, unpack)}`` where ``unpack(tree) -> (kernel, bias)`` reads the arrays back.
    """
    from flax import nnx

    def unpack_linen(t):
        return t["params"]["Dense_0"]["kernel"], t["params"]["Dense_0"]["bias"]

    def unpack_nnx(t):
        return t["Dense_0"]["kernel"][...], t["Dense_0"]["bias"][...]

    def unpack_plain(t):
        return t["w"], t["b"]

    linen = {"params": {"Dense_0": {"kernel": w, "bias": b}}}
    state = nnx.State({"Dense_0": {"kernel": nnx.Param(w), "bias": nnx.Param(b)}})
    plain = {"w": w, "b": b}
    return {
        "linen": (linen, unpack_linen),
        "nnx": (state, unpack_nnx),
        "plain": (plain, unpack_plain),
    }


# XLA:CPU runs the 8 simulated devices on a pool of max(cores, 8) threads and deadlocks when a loop queues
# more than 32 programs per device (see parallel.throttle, which the library's loops call). The subprocesses
# get a pool of 16 threads as well, so a loop of an experiment's own cannot hang CI, and a collective that is
# stuck for 10 minutes aborts (with a stack) instead of waiting for the test's timeout.
EIGHT_DEVICE_FLAGS = (
    "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=600 "
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"
)


def eight_device_env() -> dict:
    """This environment with 8 simulated CPU devices, for a subprocess (XLA reads its flags once)."""
    return dict(os.environ, XLA_FLAGS=EIGHT_DEVICE_FLAGS, JAX_PLATFORMS="cpu", PJRT_NPROC="16")


def run_on_eight_devices(script, *args, timeout=300):
    """Runs ``python -c script *args`` on 8 simulated CPU devices (``XLA_FLAGS`` must be set before JAX
    starts, hence a subprocess)."""
    env = eight_device_env()
    subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, check=True, timeout=timeout)

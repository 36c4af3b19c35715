"""One contract, run over every optax transform the library exports (sparse, continual, localize), in the
manner of optax's shared optimizer tests: init/update under ``jit`` equal to eager, inside ``optax.chain``
with clipping; the same numbers on Linen-dict, NNX-State and plain-dict trees; a state whose structure,
shapes and dtypes do not change from step to step; an orbax round trip of the state; and 8 simulated
devices giving the single-device answer."""

from __future__ import annotations

import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import problems
import pytest

from unlearnx import continual, sparse
from unlearnx.checkpoint import Checkpointer
from unlearnx.unlearn import localize

STEPS = 5


def _masks(params):
    """Every other entry of each leaf selected (a fixed localisation mask)."""
    return jax.tree.map(lambda x: (jnp.arange(x.size).reshape(x.shape) % 2) == 0, params)


TRANSFORMS = {
    "static_sparse": lambda p: sparse.static_sparse(optax.sgd(0.1), sparsity=0.5, distribution="uniform"),
    "set_sparse": lambda p: sparse.set_sparse(
        optax.sgd(0.1), sparsity=0.5, end_step=8, frequency=2, distribution="uniform"
    ),
    "rigl": lambda p: sparse.rigl(
        optax.sgd(0.1), sparsity=0.5, end_step=8, frequency=2, distribution="uniform"
    ),
    "gmp": lambda p: sparse.gmp(
        optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=4, frequency=2, distribution="uniform"
    ),
    "granet": lambda p: sparse.granet(
        optax.sgd(0.1, momentum=0.9),
        final_sparsity=0.5,
        initial_sparsity=0.0,
        begin_step=0,
        end_step=4,
        frequency=2,
        total_steps=8,
        distribution="uniform",
    ),  # fmt: skip
    "ewc": lambda p: continual.ewc(jax.tree.map(jnp.ones_like, p), jax.tree.map(jnp.zeros_like, p), 0.5),
    "online_ewc": lambda p: continual.online_ewc(0.5, 0.9),
    "synaptic_intelligence": lambda p: continual.synaptic_intelligence(0.5),
    "masked_updates": lambda p: localize.masked_updates(_masks(p)),
}


def _problem():
    x, y, w, b = problems.softmax_regression_data(n=16, d=6, c=4, seed=3)
    return (jnp.asarray(x, jnp.float32), jnp.asarray(y)), w.astype(np.float32), b.astype(np.float32)


def _loss(unpack):
    def loss(params, x, y):
        w, b = unpack(params)
        logits = x @ w + b
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def _run(name, params, unpack, *, jit: bool):
    """``(params after STEPS steps, every state)``: clip, the transform, an SGD step, from ``params``."""
    (x, y), _, _ = _problem()
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), TRANSFORMS[name](params), optax.scale(-0.05))
    loss = _loss(unpack)

    def step(params, state):
        grads = jax.grad(loss)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    state = optimizer.init(params)
    states = [state]
    for _ in range(STEPS):
        params, state = step(params, state)
        states.append(state)
    return params, states


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_contract_jit_trees_and_stable_state(name):
    _, w, b = _problem()
    results = {}
    for flavour, (tree, unpack) in problems.tree_flavours(jnp.asarray(w), jnp.asarray(b)).items():
        jitted, states = _run(name, tree, unpack, jit=True)
        eager, _ = _run(name, tree, unpack, jit=False)
        chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)
        shapes = [jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), s) for s in states]
        for later in shapes[1:]:
            chex.assert_trees_all_equal_structs(later, shapes[0])
            assert later == shapes[0], f"{name}/{flavour}: the state's shapes or dtypes changed"
        kernel, bias = (np.asarray(a) for a in unpack(jitted))
        assert np.all(np.isfinite(kernel)) and np.all(np.isfinite(bias))
        results[flavour] = (kernel, bias)
    for flavour in ("nnx", "plain"):  # the same numbers whatever the tree flavour
        np.testing.assert_allclose(results[flavour][0], results["linen"][0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(results[flavour][1], results["linen"][1], rtol=1e-6, atol=1e-7)
    assert not np.allclose(results["plain"][0], w), f"{name}: the parameters did not move"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_contract_state_survives_an_orbax_round_trip(name, tmp_path):
    _, w, b = _problem()
    tree, unpack = problems.tree_flavours(jnp.asarray(w), jnp.asarray(b))["plain"]
    _, states = _run(name, tree, unpack, jit=True)
    with Checkpointer(tmp_path / name) as checkpointer:
        checkpointer.save(STEPS, states[-1])
        restored, _ = checkpointer.restore(jax.tree.map(jnp.zeros_like, states[-1]))
    chex.assert_trees_all_equal(restored, states[-1])


EIGHT_DEVICES = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import problems
    from test_transform_contract import TRANSFORMS, _problem, _run
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    _, w, b = _problem()
    for name in sorted(TRANSFORMS):
        tree, unpack = problems.tree_flavours(jnp.asarray(w), jnp.asarray(b))["plain"]
        single, _ = _run(name, tree, unpack, jit=True)
        placed = jax.device_put(tree, NamedSharding(mesh, P()))  # replicated over the 8 devices
        spread, _ = _run(name, placed, unpack, jit=True)
        assert len(spread["w"].sharding.device_set) == 8, name
        for key in ("w", "b"):
            np.testing.assert_allclose(np.asarray(spread[key]), np.asarray(single[key]), rtol=1e-5, atol=1e-6,
                                       err_msg=name)
    print("ok", len(TRANSFORMS))
    """
)


def test_contract_on_eight_devices_gives_the_single_device_answer():
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES, str(root)],
        env=problems.eight_device_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["ok", str(len(TRANSFORMS))]  # every transform compared

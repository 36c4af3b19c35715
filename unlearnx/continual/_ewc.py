"""Regularisers against forgetting as optax gradient transforms (private; re-exported by
:mod:`unlearnx.continual`): EWC and online EWC here, Synaptic Intelligence in ``_si``.

Each adds the gradient of its quadratic penalty to the incoming gradients, so it goes first in a chain:
``optax.chain(ewc(fisher, anchor, strength), optax.adam(1e-3))``. Its arrays (Fisher, anchors, path
integrals) live in its ``NamedTuple`` state, so they checkpoint and shard with the rest of the optimizer.

* EWC (Kirkpatrick et al. 2017):  P(θ) = Σₜ (λ/2) Σₚ Fₜ,ₚ (θₚ − θ*ₜ,ₚ)²,   ∇P = λ Σₜ Fₜ ⊙ (θ − θ*ₜ).
* Online EWC (Schwarz et al. 2018): one running F̃ ← γ F̃ + F_k and one anchor θ* (the latest solution),
  set by :func:`consolidate_online_ewc` at the end of each task; ∇P = λ F̃ ⊙ (θ − θ*).
* SI (Zenke et al. 2017): during a task ωₚ += −gₚ·Δθₚ along the path; at its end
  Ωₚ += ωₚ / ((Δₚ)² + ξ) with Δₚ the parameter's total change over the task, the anchor θ̃ moves to the
  task's final parameters (:func:`consolidate_si`), and P(θ) = c Σₚ Ωₚ (θₚ − θ̃ₚ)², ∇P = 2c Ω ⊙ (θ − θ̃).

**Conventions that differ between implementations** (each has an option; defaults are this library's):

* Online EWC's penalty uses F̃ itself, so the latest task's Fisher enters at full weight; Schwarz et al.'s
  penalty ½‖θ − θ*‖²_{γF̃} and common code (van de Ven's ``continual-learning`` and its forks multiply the
  running Fisher by γ inside the loss) scale it by γ: ``online_ewc(..., decay_penalty=True)``. With γ = 1
  the two agree; with γ < 1 the default is the stronger penalty by 1/γ.
* SI's path integral ω uses the *task* gradient only (the gradient that enters the chain, before the
  penalty is added), as Zenke et al.'s ω measures each parameter's contribution to the task loss; common
  code (which reads ``p.grad`` after backpropagating the total loss, penalty included) adds the SI
  penalty's own gradient 2c Ω ⊙ (θ − θ̃): ``synaptic_intelligence(..., path_gradient="total")``. The two
  agree on the first task (Ω = 0) and differ from the second on.
* The Fisher diagonals passed in are whatever :func:`unlearnx.fisher.diagonal` (or the caller) computed; the
  empirical estimator there averages over the N examples (divides by N).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree

__all__ = [
    "EwcState",
    "OnlineEwcState",
    "consolidate_online_ewc",
    "ewc",
    "online_ewc",
]


def _check_strength(name: str, value: float) -> None:
    """λ / c: a static, finite number ≥ 0 (the library's rule for hyper-parameters)."""
    checks.static_number(name, value, low=0.0)


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a Python bool (it is static), got {value!r}")


def _need_params(params: PyTree, name: str) -> None:
    if params is None:
        raise ValueError(f"{name} needs params: call update(grads, state, params)")


def _replace(opt_state: optax.OptState, kind: type, fn) -> optax.OptState:
    """``opt_state`` with its one ``kind`` state replaced by ``fn`` of it; the state is found by its type name
    at any depth (a chain, a named chain, a wrapper's inner state), the rest of the tree is kept as it is."""
    name = kind.__name__

    def is_kind(path, value) -> bool:
        del path
        return isinstance(value, kind)

    try:
        state = optax.tree.get(opt_state, name, filtering=is_kind)
    except KeyError:  # several matches
        raise ValueError(f"expected exactly one {name} in the optimizer state, found several") from None
    if state is None:
        raise ValueError(f"expected exactly one {name} in the optimizer state, found none")
    return optax.tree.set(opt_state, is_kind, **{name: fn(state)})


class EwcState(NamedTuple):
    """The state of :func:`ewc`: the Fisher diagonals and anchors of the consolidated tasks.

    Attributes:
        fishers: a tuple of Fisher-diagonal trees Fₜ, one per task.
        anchors: a tuple of the matching anchor trees θ*ₜ.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import continual
        >>> state = continual.ewc({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, 1.0).init({"w": jnp.zeros(2)})
        >>> len(state.fishers), state.anchors[0]["w"].tolist()
        (1, [0.0, 0.0])
    """

    fishers: tuple
    anchors: tuple


def ewc(
    fisher: PyTree | Sequence[PyTree], anchor: PyTree | Sequence[PyTree], strength: float
) -> optax.GradientTransformationExtraArgs:
    """EWC penalty gradient λ Σₜ Fₜ ⊙ (θ − θ*ₜ) added to the updates (see the module docstring).

    Args:
        fisher: the Fisher diagonal of one task (a tree like the params), or a list of them (one per task).
        anchor: the matching optimal parameters θ*, a tree or a list of the same length.
        strength: λ ≥ 0.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is an :class:`EwcState`; its ``update``
        needs ``params``.

    Raises:
        ValueError: λ < 0, unequal numbers of Fisher trees and anchors, mismatched structures, or a
            negative or non-finite entry.
        TypeError: a traced λ.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import continual
        >>> opt = continual.ewc({"w": jnp.array([1.0, 4.0])}, {"w": jnp.zeros(2)}, strength=0.5)
        >>> params = {"w": jnp.ones(2)}
        >>> updates, _ = opt.update({"w": jnp.zeros(2)}, opt.init(params), params)
        >>> updates["w"].tolist()  # λ F (θ − θ*) = 0.5 · [1, 4] · 1
        [0.5, 2.0]

    References:
        Kirkpatrick et al., *Overcoming catastrophic forgetting in neural networks*, PNAS 2017.
    """
    _check_strength("strength", strength)
    fishers = tuple(fisher) if isinstance(fisher, list | tuple) else (fisher,)
    anchors = tuple(anchor) if isinstance(anchor, list | tuple) else (anchor,)
    if len(fishers) != len(anchors):
        raise ValueError(f"{len(fishers)} Fisher trees but {len(anchors)} anchors")
    for index, (f, a) in enumerate(zip(fishers, anchors, strict=True)):
        tree_lib.check_same_structure(f, a, names=("fisher", "anchor"))
        # A negative or NaN Fisher entry would turn the penalty into an anti-penalty.
        checks.check_tree(f"fisher[{index}]", f, nonnegative=True)
        checks.check_tree(f"anchor[{index}]", a)

    def init(params):
        for a in anchors:
            tree_lib.check_same_structure(params, a, names=("params", "anchor"))
        return EwcState(fishers, anchors)

    def update(updates, state, params=None, **extra):
        del extra
        _need_params(params, "ewc")
        for f, a in zip(state.fishers, state.anchors, strict=True):
            updates = jax.tree.map(lambda u, p, fi, an: u + strength * fi * (p - an), updates, params, f, a)
        return updates, state

    return optax.GradientTransformationExtraArgs(init, update)


class OnlineEwcState(NamedTuple):
    """The state of :func:`online_ewc`: the running Fisher F̃, the single anchor θ* and the decay γ.

    Attributes:
        fisher: the running Fisher diagonal F̃ (zeros before the first consolidation).
        anchor: θ*, the parameters at the last :func:`consolidate_online_ewc` (at ``init`` before it).
        decay: γ, a float32 scalar.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import continual
        >>> state = continual.online_ewc(1.0, decay=0.5).init({"w": jnp.ones(2)})
        >>> state.fisher["w"].tolist(), float(state.decay)
        ([0.0, 0.0], 0.5)
    """

    fisher: PyTree
    anchor: PyTree
    decay: jax.Array


def online_ewc(
    strength: float, decay: float = 1.0, *, decay_penalty: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Online EWC: λ F̃ ⊙ (θ − θ*) (or λ γ F̃ ⊙ (θ − θ*)) added to the updates.

    F̃ starts at 0 (no penalty before the first :func:`consolidate_online_ewc`), which sets
    F̃ ← γ F̃ + F_k and θ* ← θ at the end of each task k.

    Args:
        strength: λ ≥ 0.
        decay: γ ∈ [0, 1].
        decay_penalty: static. ``False`` (default): the penalty gradient is λ F̃ ⊙ (θ − θ*), the last task's
            Fisher at full weight. ``True``: λ γ F̃ ⊙ (θ − θ*), the penalty ½ λ ‖θ − θ*‖²_{γF̃} of Schwarz et
            al. and of common implementations (see the module docstring).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is an :class:`OnlineEwcState`.

    Raises:
        ValueError: λ < 0 or γ outside [0, 1] (or non-finite).
        TypeError: traced λ or γ, or a ``decay_penalty`` that is not a bool.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import continual
        >>> opt = optax.chain(continual.online_ewc(2.0, decay=0.5, decay_penalty=True), optax.sgd(1.0))
        >>> params = {"w": jnp.zeros(2)}
        >>> state = continual.consolidate_online_ewc(opt.init(params), {"w": jnp.ones(2)}, params)
        >>> updates, _ = opt.update({"w": jnp.zeros(2)}, state, {"w": jnp.ones(2)})
        >>> updates["w"].tolist()  # −η λ γ F̃ (θ − θ*) = −1 · 2 · 0.5 · 1 · 1
        [-1.0, -1.0]

    References:
        Schwarz et al., "Progress & Compress: A scalable framework for continual learning", ICML 2018.
    """
    _check_strength("strength", strength)
    checks.static_number("decay", decay, low=0.0, high=1.0)
    _check_flag("decay_penalty", decay_penalty)

    def init(params):
        return OnlineEwcState(jax.tree.map(jnp.zeros_like, params), params, jnp.asarray(decay, jnp.float32))

    def update(updates, state, params=None, **extra):
        del extra
        _need_params(params, "online_ewc")
        scale = strength * state.decay if decay_penalty else strength
        penalty = jax.tree.map(lambda f, p, a: scale * f * (p - a), state.fisher, params, state.anchor)
        return jax.tree.map(jnp.add, updates, penalty), state

    return optax.GradientTransformationExtraArgs(init, update)


def consolidate_online_ewc(opt_state: optax.OptState, fisher: PyTree, params: PyTree) -> optax.OptState:
    """End of a task: F̃ ← γ F̃ + F_k and θ* ← θ, inside the (possibly chained) optimizer state.

    The :class:`OnlineEwcState` is found by type at any depth (``optax.chain``, ``optax.named_chain``, a
    wrapper's inner state) and replaced there; the rest of ``opt_state`` keeps its structure.

    Args:
        opt_state: an optimizer state holding exactly one :class:`OnlineEwcState`.
        fisher: the finished task's Fisher diagonal F_k (e.g. from :func:`unlearnx.fisher.diagonal`).
        params: the parameters at the end of the task, the new anchor θ*.

    Returns:
        ``opt_state`` with the :class:`OnlineEwcState` updated.

    Raises:
        ValueError: if ``opt_state`` holds no or several :class:`OnlineEwcState`, mismatched structures, or
            a negative or non-finite Fisher entry or parameter.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import continual
        >>> opt = continual.online_ewc(1.0, decay=0.5)
        >>> state = opt.init({"w": jnp.zeros(2)})
        >>> for task in range(2):  # F̃ = 0.5 · 1 + 1
        ...     state = continual.consolidate_online_ewc(state, {"w": jnp.ones(2)}, {"w": jnp.ones(2)})
        >>> state.fisher["w"].tolist()
        [1.5, 1.5]
    """

    checks.check_tree("fisher", fisher, nonnegative=True)
    checks.check_tree("params", params)

    def consolidate(state: OnlineEwcState) -> OnlineEwcState:
        tree_lib.check_same_structure(state.fisher, fisher, names=("running fisher", "fisher"))
        running = jax.tree.map(lambda r, f: state.decay * r + f, state.fisher, fisher)
        return OnlineEwcState(running, params, state.decay)

    return _replace(opt_state, OnlineEwcState, consolidate)

"""Synaptic Intelligence (Zenke et al. 2017) as an optax gradient transform (private; re-exported by
:mod:`unlearnx.continual`): during a task ωₚ += −gₚ·Δθₚ along the path; at its end Ωₚ += ωₚ / ((Δₚ)² + ξ)
with Δₚ the parameter's total change over the task, the anchor θ̃ moves to the task's final parameters
(:func:`consolidate_si`), and P(θ) = c Σₚ Ωₚ (θₚ − θ̃ₚ)², ∇P = 2c Ω ⊙ (θ − θ̃).

The path integral ω uses the *task* gradient only (the gradient that enters the chain, before the penalty is
added), as Zenke et al.'s ω measures each parameter's contribution to the task loss; common code (which reads
``p.grad`` after backpropagating the total loss, penalty included) adds the SI penalty's own gradient
2c Ω ⊙ (θ − θ̃): ``synaptic_intelligence(..., path_gradient="total")``. The two agree on the first task
(Ω = 0) and differ from the second on.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from unlearnx import _validation as checks
from unlearnx.continual._ewc import PyTree, _check_strength, _need_params, _replace

__all__ = ["SiState", "consolidate_si", "synaptic_intelligence"]


class SiState(NamedTuple):
    """The state of :func:`synaptic_intelligence`.

    Attributes:
        omega: ω, this task's path integral so far.
        importance: Ω, the consolidated importance of the finished tasks.
        anchor: θ̃, the parameters at the start of this task.
        previous_params: the last step's parameters, for its Δθ.
        previous_grads: the last step's gradient g entering ω.
        damping: ξ, a float32 scalar.

    Examples:
        >>> import jax.numpy as jnp
        >>> from unlearnx import continual
        >>> state = continual.synaptic_intelligence(1.0, damping=0.1).init({"w": jnp.ones(2)})
        >>> state.importance["w"].tolist(), round(float(state.damping), 6)
        ([0.0, 0.0], 0.1)
    """

    omega: PyTree
    importance: PyTree
    anchor: PyTree
    previous_params: PyTree
    previous_grads: PyTree
    damping: jax.Array


def synaptic_intelligence(
    strength: float, damping: float = 0.1, *, path_gradient: Literal["task", "total"] = "task"
) -> optax.GradientTransformationExtraArgs:
    """SI: accumulates ωₚ += −gₚ Δθₚ and adds 2c Ω ⊙ (θ − θ̃) to the updates (module docstring).

    The step's own Δθ is only known at the next call, so each call adds the previous step's term
    −g_{t−1}·(θ_t − θ_{t−1}); :func:`consolidate_si` adds the last one.

    Args:
        strength: c ≥ 0.
        damping: ξ > 0.
        path_gradient: static, which g enters ω. ``"task"`` (default): the incoming gradient (the task
            loss's, before this transform adds its penalty). ``"total"``: the incoming gradient plus the
            penalty's 2c Ω ⊙ (θ − θ̃), i.e. the gradient of the loss actually minimised, as common code
            computes it (see the module docstring).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is an :class:`SiState`.

    Raises:
        ValueError: c < 0, ξ ≤ 0 (or non-finite), ``path_gradient`` not ``"task"`` or ``"total"``.
        TypeError: traced c or ξ.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import continual
        >>> opt = optax.chain(continual.synaptic_intelligence(0.5, path_gradient="total"), optax.sgd(0.1))
        >>> params = {"w": jnp.ones(3)}
        >>> state = opt.init(params)
        >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params)
        >>> updates["w"].tolist()  # no penalty before the first consolidate_si (Ω = 0)
        [-0.10000000149011612, -0.10000000149011612, -0.10000000149011612]

    References:
        Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017.
    """
    _check_strength("strength", strength)
    checks.static_number("damping", damping, low=0.0, low_open=True)
    checks.choice("path_gradient", path_gradient, ("task", "total"))

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return SiState(zeros, zeros, params, params, zeros, jnp.asarray(damping, jnp.float32))

    def update(updates, state, params=None, **extra):
        del extra
        _need_params(params, "synaptic_intelligence")
        penalty = jax.tree.map(
            lambda o, p, a: 2.0 * strength * o * (p - a), state.importance, params, state.anchor
        )
        total = jax.tree.map(jnp.add, updates, penalty)
        new_state = state._replace(
            omega=_path_integral(state, params),
            previous_params=params,
            previous_grads=total if path_gradient == "total" else updates,
        )
        return total, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _path_integral(state: SiState, params: PyTree) -> PyTree:
    """ω plus the previous step's term −g_{t−1}·(θ_t − θ_{t−1})."""
    return jax.tree.map(
        lambda w, g, p, q: w - g * (p - q), state.omega, state.previous_grads, params, state.previous_params
    )


def consolidate_si(opt_state: optax.OptState, params: PyTree) -> optax.OptState:
    """End of a task: finish ω with the last step, Ω += ω / ((θ − θ̃)² + ξ), θ̃ ← θ, ω ← 0.

    The :class:`SiState` is found by type at any depth of ``opt_state``, as in
    :func:`consolidate_online_ewc`.

    Args:
        opt_state: an optimizer state holding exactly one :class:`SiState`.
        params: the parameters at the end of the task (the new anchor θ̃).

    Returns:
        ``opt_state`` with the :class:`SiState` updated.

    Raises:
        ValueError: if ``opt_state`` holds no or several :class:`SiState`.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from unlearnx import continual
        >>> opt = optax.chain(continual.synaptic_intelligence(1.0, damping=1.0), optax.sgd(1.0))
        >>> params = {"w": jnp.zeros(1)}
        >>> updates, state = opt.update({"w": jnp.ones(1)}, opt.init(params), params)
        >>> params = optax.apply_updates(params, updates)  # θ: 0 → −1, g = 1
        >>> state = continual.consolidate_si(state, params)  # ω = −g Δθ = 1; Ω = 1 / (1² + 1)
        >>> state[0].importance["w"].tolist()
        [0.5]
    """

    def consolidate(state: SiState) -> SiState:
        omega = _path_integral(state, params)
        importance = jax.tree.map(
            lambda big, w, p, a: big + w / ((p - a) ** 2 + state.damping),
            state.importance,
            omega,
            params,
            state.anchor,
        )
        zeros = jax.tree.map(jnp.zeros_like, params)
        return SiState(zeros, importance, params, params, zeros, state.damping)

    return _replace(opt_state, SiState, consolidate)

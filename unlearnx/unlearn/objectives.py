"""Language-model unlearning objectives of RESTOR (Rezaei et al., TMLR 2025) and its baselines.

Every objective is a pure loss to *minimise* over per-token log-probabilities ``logp`` ``[B, T]`` (the
log-probability of each target token under the model being unlearned) and a 0/1 ``mask`` ``[B, T]`` that
selects the tokens to unlearn (whole documents, or only the corrupted-fact spans). With

    Sᵦ = Σₜ maskᵦₜ · logpᵦₜ           (sequence log-likelihood ℓ_θ(yᵦ) over the masked tokens)
    ``|yᵦ|`` = Σₜ maskᵦₜ                   (number of masked tokens of sequence b)
    NLL = −Σᵦₜ mask · logp / Σᵦₜ mask   (batch-mean token loss)

the objectives are

* ``gradient_ascent``  L = Σ mask·logp / Σ mask = −NLL (minimising it raises the forget NLL);
* ``npo``              L = (2/β) · meanᵦ log(1 + exp(β(Sᵦ − S_refᵦ)))   (standard per-sequence NPO, β = 0.1);
* ``npo_batch_mean``   L = −(2/β) · log σ(β(NLL − NLL_ref))          (RESTOR code's batch-mean form);
* ``simnpo``           L = −(2/β) · meanᵦ log σ(β(−Sᵦ/``|yᵦ|`` − δ))     (reference-free, β = 4.5, δ = 0);
* ``grad_diff``        L = γ_f · (−NLL_f) + γ_r · NLL_r               (γ_f = γ_r = 1, open-unlearning);
* ``kl``               over full token distributions (logits), to the corrupted model P_c:
  ``"cross_entropy"`` (RESTOR's code) L = meanₜ Σ_v P_θ(v) log P_c(v), i.e. maximise the token cross-entropy
  −Σ_v P_θ(v) log P_c(v); ``"forward"`` L = −meanₜ KL(P_c ‖ P_θ); ``"reverse"`` L = −meanₜ KL(P_θ ‖ P_c);
* ``task_vector``      θ_u = θ_c − α(θ* − θ_c) over any pytree (θ* = θ_c fine-tuned further on D_f).

meanᵦ runs over the sequences with at least one masked token (rows without any are padding and add
nothing). σ and log(1 + eˣ) are evaluated as ``jax.nn.log_sigmoid`` / ``jax.nn.softplus``, so large
arguments never overflow.

**Where these differ from common implementations** (numbers compared with them will differ):

* *Rows with no target token* are skipped by ``npo`` and ``simnpo``. open-unlearning averages every row of
  the batch, and a row without target tokens has S = S_ref = 0 there, adding (2/β)·log 2 to the mean
  with zero gradient (NPO; SimNPO at δ = 0, (2/β)·log(1 + e^{βδ}) in general), which shrinks the
  gradient by the fraction of such rows.
* *SimNPO's length* ``|yᵦ|`` counts the predicted tokens, the mask entries paired with ``logp`` (after the
  one-position shift of a causal LM, :func:`next_token_log_probs` with ``mask[:, 1:]``). open-unlearning
  divides the shifted sum by the number of labels before the shift, one more when the first token of a
  row is itself a label (whole-document forget sets); on prompt-masked QA data the two agree.
* *"KL"*: ``kl(form="cross_entropy")`` is RESTOR's code (it maximises the cross-entropy −Σ_v P_θ log P_c
  on the forget positions, which is not a divergence); ``"forward"`` and ``"reverse"`` are the true
  divergences, maximised on the masked positions. open-unlearning's ``KL`` retain term is a different
  quantity: KL(P_ref ‖ P_θ) *minimised* on the retain batch, averaged over all B·T positions (padding and
  the final position included, no label mask); it equals −``kl(logits, ref_logits, ones, form="forward")``
  on retain data.

Two exact relations (tested): on one sequence with ``|y|`` = T tokens, ``npo_batch_mean`` at β equals ``npo``
at β/T divided by T, since both are (2/β)·softplus(β(S − S_ref)/T); and at θ = θ_ref,
∂ npo / ∂ logp = 2σ(0)·mask = mask per sequence, i.e. the NPO gradient is ∇ℓ_θ, the sequence-summed
gradient-ascent direction (``gradient_ascent``'s gradient divided by ``|y|`` on one sequence).

Hyper-parameters (β, δ, γ_f, γ_r, the task-vector α) are static Python numbers, validated at call time; a
traced one raises ``TypeError`` (see :mod:`unlearnx._validation`). Data checks -- shapes, a mask that is not
0/1 or selects no token at all, positive "log-probabilities" (P or a loss passed instead of log P), token ids
outside [0, V) -- raise ``ValueError`` when the arrays are concrete; under ``jit`` with traced data only the
shape checks run, and an all-zero mask gives a loss of 0 with zero gradient rather than NaN.

The examples below use ``import jax.numpy as jnp``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _validation as checks
from unlearnx import tree as tree_lib
from unlearnx._typing import PyTree
from unlearnx.unlearn._log_probs import next_token_log_probs, token_log_probs

KLForm = Literal["cross_entropy", "forward", "reverse"]
KL_FORMS: tuple[str, ...] = ("cross_entropy", "forward", "reverse")

__all__ = [
    "KL_FORMS",
    "gradient_ascent",
    "grad_diff",
    "kl",
    "next_token_log_probs",
    "nll",
    "npo",
    "npo_batch_mean",
    "simnpo",
    "task_vector",
    "token_log_probs",
]


def _check_pair(
    logp: jax.Array, mask: jax.Array, *, logp_name: str = "logp", mask_name: str = "mask"
) -> None:
    """Shapes ``[B, T]`` that agree; when concrete, log-probabilities ≤ 0 and a 0/1 mask selecting a token."""
    if jnp.ndim(logp) != 2:
        raise ValueError(f"{logp_name} must have shape [B, T], got {jnp.shape(logp)}")
    if jnp.shape(mask) != jnp.shape(logp):
        raise ValueError(
            f"{mask_name} shape {jnp.shape(mask)} does not match {logp_name} shape {jnp.shape(logp)}"
        )
    if not checks.is_traced(logp):
        with jax.ensure_compile_time_eval():
            positive = int(jnp.sum(jnp.asarray(logp) > 0))
        if positive:
            values = np.asarray(logp, np.float64)
            raise ValueError(
                f"{logp_name} must hold log-probabilities (<= 0), found {float(values[values > 0][0])!r} "
                f"({positive} positive entries): pass log P, not P or a loss"
            )
    checks.check_binary(mask_name, mask)
    if not checks.is_traced(mask):
        with jax.ensure_compile_time_eval():
            empty = not bool(jnp.any(jnp.asarray(mask)))
        if empty:
            raise ValueError(f"{mask_name} selects no token: the forget set is empty")


def _sequence_sums(logp: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Sᵦ, |yᵦ|) in float32."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(mask * logp.astype(jnp.float32), axis=1), jnp.sum(mask, axis=1)


def _row_mean(values: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean of ``values`` over the rows with ``lengths > 0`` (0 when there are none)."""
    rows = (lengths > 0).astype(jnp.float32)
    return jnp.sum(rows * values) / jnp.maximum(jnp.sum(rows), 1.0)


def _token_mean(logp: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(mask * logp.astype(jnp.float32)) / jnp.maximum(jnp.sum(mask), 1.0)


def nll(logp: jax.Array, mask: jax.Array) -> jax.Array:
    """Batch-mean token negative log-likelihood −Σ mask·logp / Σ mask (the retain / fine-tuning loss).

    Args:
        logp: ``[B, T]`` log-probabilities (≤ 0).
        mask: ``[B, T]`` 0/1 tokens to average.

    Returns:
        A float32 scalar.

    Examples:
        >>> float(nll(jnp.array([[-1.0, -2.0, -3.0]]), jnp.array([[1, 1, 0]])))
        1.5
    """
    _check_pair(logp, mask)
    return -_token_mean(logp, mask)


def gradient_ascent(logp: jax.Array, mask: jax.Array) -> jax.Array:
    """Gradient ascent on the forget tokens: L = Σ mask·logp / Σ mask = −NLL.
    Args:
        logp: ``[B, T]`` log-probabilities of the target tokens.
        mask: ``[B, T]`` 0/1 selection of the tokens to unlearn.

    Returns:
        A float32 scalar; minimising it raises the forget NLL.

    Examples:
        >>> float(gradient_ascent(jnp.array([[-1.0, -2.0, -3.0]]), jnp.array([[1, 1, 0]])))
        -1.5
    """
    _check_pair(logp, mask)
    return _token_mean(logp, mask)


def npo(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, *, beta: float = 0.1) -> jax.Array:
    """Negative Preference Optimisation, standard per-sequence form (Zhang et al. 2024).

    L = (2/β) · meanᵦ log(1 + exp(β(Sᵦ − S_refᵦ))) = −(2/β) · meanᵦ log σ(−β(Sᵦ − S_refᵦ)), with Sᵦ the
    masked sequence log-likelihood under θ and S_refᵦ under the frozen reference (the corrupted model).

    Args:
        logp: ``[B, T]`` target-token log-probabilities under θ.
        ref_logp: ``[B, T]`` the same under θ_ref (treated as a constant: gradients are stopped).
        mask: ``[B, T]`` 0/1 tokens to unlearn.
        beta: inverse temperature β > 0.

    Returns:
        A float32 scalar. Rows of ``mask`` without a target token are left out of the mean (open-unlearning
        averages them in at (2/β)·log 2 each; module docstring).

    Examples:
        >>> logp = jnp.array([[-1.0, -2.0]])  # at θ = θ_ref: (2/β)·ln 2
        >>> float(npo(logp, logp, jnp.ones((1, 2)), beta=0.1))
        13.862944
    """
    checks.static_number("beta", beta, low=0.0, low_open=True)
    _check_pair(logp, mask)
    _check_pair(ref_logp, mask, logp_name="ref_logp")
    sums, lengths = _sequence_sums(logp, mask)
    ref_sums, _ = _sequence_sums(jax.lax.stop_gradient(ref_logp), mask)
    return (2.0 / beta) * _row_mean(jax.nn.softplus(beta * (sums - ref_sums)), lengths)


def npo_batch_mean(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, *, beta: float = 0.1) -> jax.Array:
    """NPO as RESTOR's code computes it: L = −(2/β) · log σ(β(NLL − NLL_ref)), one scalar per batch.

    NLL and NLL_ref are the batch-mean token losses −Σ mask·logp / Σ mask under θ and θ_ref; RESTOR
    hard-codes β = 0.1.

    Args:
        logp: ``[B, T]`` target-token log-probabilities under θ.
        ref_logp: ``[B, T]`` the same under θ_ref (gradients stopped).
        mask: ``[B, T]`` 0/1 tokens to unlearn.
        beta: β > 0.

    Returns:
        A float32 scalar.

    Examples:
        >>> logp = jnp.array([[-1.0, -2.0]])  # at θ = θ_ref: (2/β)·ln 2, as npo
        >>> float(npo_batch_mean(logp, logp, jnp.ones((1, 2)), beta=0.1))
        13.862944
    """
    checks.static_number("beta", beta, low=0.0, low_open=True)
    _check_pair(logp, mask)
    _check_pair(ref_logp, mask, logp_name="ref_logp")
    loss = -_token_mean(logp, mask)
    ref_loss = -_token_mean(jax.lax.stop_gradient(ref_logp), mask)
    return -(2.0 / beta) * jax.nn.log_sigmoid(beta * (loss - ref_loss))


def simnpo(logp: jax.Array, mask: jax.Array, *, beta: float = 4.5, delta: float = 0.0) -> jax.Array:
    """SimNPO (Fan et al. 2024): L = −(2/β) · meanᵦ log σ(β(−Sᵦ/``|yᵦ|`` − δ)), no reference model.

    ``|yᵦ|`` = Σₜ maskᵦₜ counts the predicted (masked target) tokens of row b, and rows without any are left
    out of the mean; open-unlearning counts the labels before the causal shift and averages every row
    (module docstring).

    Args:
        logp: ``[B, T]`` target-token log-probabilities.
        mask: ``[B, T]`` 0/1 tokens to unlearn.
        beta: β > 0 (default 4.5).
        delta: reward margin δ (finite; default 0).

    Returns:
        A float32 scalar.

    Examples:
        >>> # S = −2 over 2 tokens: −(2/β) log σ(β·1) = 2·softplus(−1) at β = 1
        >>> float(simnpo(jnp.array([[-1.0, -1.0]]), jnp.ones((1, 2)), beta=1.0))
        0.626523
    """
    checks.static_number("beta", beta, low=0.0, low_open=True)
    checks.static_number("delta", delta)
    _check_pair(logp, mask)
    sums, lengths = _sequence_sums(logp, mask)
    mean_nll = -sums / jnp.maximum(lengths, 1.0)
    return -(2.0 / beta) * _row_mean(jax.nn.log_sigmoid(beta * (mean_nll - delta)), lengths)


def grad_diff(
    forget_logp: jax.Array,
    forget_mask: jax.Array,
    retain_logp: jax.Array,
    retain_mask: jax.Array,
    *,
    forget_weight: float = 1.0,
    retain_weight: float = 1.0,
) -> jax.Array:
    """Gradient difference: L = γ_f · (Σ m_f·logp_f / Σ m_f) + γ_r · (−Σ m_r·logp_r / Σ m_r).

    Ascends the forget NLL and descends the retain NLL (γ_f = γ_r = 1 as in open-unlearning).

    Args:
        forget_logp, forget_mask: ``[B_f, T_f]`` forget-batch log-probabilities and 0/1 mask.
        retain_logp, retain_mask: ``[B_r, T_r]`` retain-batch log-probabilities and 0/1 mask.
        forget_weight: γ_f ≥ 0.
        retain_weight: γ_r ≥ 0.

    Returns:
        A float32 scalar.

    Examples:
        >>> forget, retain = jnp.array([[-1.0, -3.0]]), jnp.array([[-0.5, -0.5]])
        >>> float(grad_diff(forget, jnp.ones((1, 2)), retain, jnp.ones((1, 2))))  # −2 + 0.5
        -1.5
    """
    checks.static_numbers((("forget_weight", forget_weight), ("retain_weight", retain_weight)), low=0.0)
    _check_pair(forget_logp, forget_mask, logp_name="forget_logp", mask_name="forget_mask")
    _check_pair(retain_logp, retain_mask, logp_name="retain_logp", mask_name="retain_mask")
    return forget_weight * _token_mean(forget_logp, forget_mask) - retain_weight * _token_mean(
        retain_logp, retain_mask
    )


def kl(
    logits: jax.Array, ref_logits: jax.Array, mask: jax.Array, *, form: KLForm = "cross_entropy"
) -> jax.Array:
    """Push the token distribution P_θ away from the corrupted model's P_c on the masked positions.

    With P_θ = softmax(logits), P_c = softmax(ref_logits) at each masked position and meanₜ the
    mask-weighted mean over positions:

    * ``"cross_entropy"`` (RESTOR's code): L = meanₜ Σ_v P_θ(v) log P_c(v) (= −cross-entropy, maximised);
    * ``"forward"``: L = −meanₜ KL(P_c ‖ P_θ) = −meanₜ Σ_v P_c(v)(log P_c(v) − log P_θ(v));
    * ``"reverse"``: L = −meanₜ KL(P_θ ‖ P_c).

    RESTOR's code calls the first form "KL"; open-unlearning's "KL" is a retain regulariser,
    +KL(P_ref ‖ P_θ) averaged over every position of the retain batch, i.e. −``kl(..., mask=ones,
    form="forward")`` with the original model as reference (module docstring).

    Args:
        logits: ``[B, T, V]`` logits of θ at the positions that predict each target token.
        ref_logits: ``[B, T, V]`` the same under the corrupted model (gradients stopped).
        mask: ``[B, T]`` 0/1 positions to unlearn.
        form: one of ``KL_FORMS``.

    Returns:
        A float32 scalar.

    Examples:
        >>> logits = jnp.zeros((1, 1, 2))  # P_θ = P_c uniform over 2 tokens
        >>> mask = jnp.ones((1, 1))
        >>> float(kl(logits, logits, mask)), float(kl(logits, logits, mask, form="forward"))
        (-0.693147, 0.0)
    """
    checks.choice("form", form, KL_FORMS)
    if jnp.ndim(logits) != 3 or jnp.shape(ref_logits) != jnp.shape(logits):
        raise ValueError(
            f"logits {jnp.shape(logits)} and ref_logits {jnp.shape(ref_logits)} must be equal [B, T, V]"
        )
    _check_pair(jnp.zeros(jnp.shape(logits)[:2]), mask)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_c = jax.nn.log_softmax(jax.lax.stop_gradient(ref_logits).astype(jnp.float32), axis=-1)
    p = jnp.exp(log_p)
    if form == "cross_entropy":
        per_token = jnp.sum(p * log_c, axis=-1)
    elif form == "forward":
        per_token = -jnp.sum(jnp.exp(log_c) * (log_c - log_p), axis=-1)
    else:
        per_token = -jnp.sum(p * (log_p - log_c), axis=-1)
    return _token_mean(per_token, mask)


def task_vector(theta_c: PyTree, theta_star: PyTree, alpha: float = 1.0) -> PyTree:
    """Task-vector negation: θ_u = θ_c − α(θ* − θ_c), leaf by leaf, over any pytree.

    Args:
        theta_c: the corrupted parameters θ_c (Linen dict, NNX ``State``, plain dict, ...).
        theta_star: θ_c fine-tuned further on the forget set, same structure and shapes.
        alpha: scaling α (finite; α = 0 returns θ_c).

    Returns:
        A tree with ``theta_c``'s structure and dtypes.

    Raises:
        ValueError: mismatched trees, a non-finite α, NaN/inf parameters (checked when concrete).
        TypeError: a traced α (static).

    Examples:
        >>> task_vector({"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, alpha=0.5)["w"].tolist()
        [0.0]
    """
    checks.static_number("alpha", alpha)
    tree_lib.check_same_structure(theta_c, theta_star, names=("theta_c", "theta_star"))
    checks.check_tree("theta_c", theta_c)
    checks.check_tree("theta_star", theta_star)

    def edit(c, star):
        c32 = jnp.asarray(c, jnp.float32)
        return (c32 - alpha * (jnp.asarray(star, jnp.float32) - c32)).astype(jnp.result_type(c))

    return jax.tree.map(edit, theta_c, theta_star)

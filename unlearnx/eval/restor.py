"""RESTOR metrics: closed-vocabulary fact QA, recovery and forgetting, the logit probe, LM utility.

Each fact (person, relation) is answered by the candidate value with the largest summed log-probability of
its tokens after the QA prompt, s(c) = Σ_{t ∈ c} log P_θ(c_t | prompt, c_<t) (:func:`candidate_scores`).
Over the target facts with correct value o and injected value o′:

    Acc_correct    = mean[argmax = o]          Rate_corrupted = mean[argmax = o′]
    R = (Acc_u − Acc_c) / (Acc_clean − Acc_c)   (recovery: 1 = back to the clean model, 0 = still corrupted)
    F = 1 − Rate_u / Rate_c                     (forgetting: 1 = the injected answers are gone)

with u, c, clean the unlearned, corrupted and clean models. A denominator with |·| < ``eps`` raises
``ValueError`` rather than returning NaN or ±inf. The logit probe reports the mean per-token log-probability
of the correct, the corrupted and a random other value, which separates forgetting (o′ loses mass) from
recovery (o regains it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import _losses
from unlearnx import _validation as checks
from unlearnx.models import Model

__all__ = [
    "accuracy",
    "candidate_scores",
    "forgetting",
    "logit_probe",
    "mean_token_nll",
    "perplexity",
    "recovery",
]


def _check_rate(name: str, value: float) -> float:
    return checks.static_number(name, value, low=0.0, high=1.0)


def accuracy(predicted, target) -> float:
    """Fraction of entries with ``predicted == target``: Acc = meanᵢ [predictedᵢ = targetᵢ].

    A ``target`` of −1 (a fact without a valid answer) never matches, since predictions are candidate indices
    ≥ 0.

    Args:
        predicted: ``[N]`` predicted candidate indices (e.g. the argmax of :func:`candidate_scores`).
        target: ``[N]`` the indices to match (the correct value o for Acc_correct, the injected value o′
            for Rate_corrupted).

    Returns:
        The fraction in [0, 1], a Python float.

    Raises:
        ValueError: ``predicted`` and ``target`` not of one 1-D shape, or empty.

    Examples:
        >>> accuracy([1, 2, 3, 0], [1, 2, 0, -1])  # 2 of the 4 match
        0.5
    """
    predicted, target = np.asarray(predicted), np.asarray(target)
    if predicted.shape != target.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} must be equal 1-D shapes")
    if predicted.size == 0:
        raise ValueError("accuracy of an empty set of facts")
    return float(np.mean(predicted == target))


def recovery(acc_unlearned: float, acc_corrupted: float, acc_clean: float, *, eps: float = 1e-6) -> float:
    """Recovery R = (Acc_u − Acc_c) / (Acc_clean − Acc_c): 1 = back to the clean model, 0 = still corrupted.

    Args:
        acc_unlearned: Acc_u, the unlearned model's accuracy on the target facts, in [0, 1].
        acc_corrupted: Acc_c, the corrupted model's accuracy, in [0, 1].
        acc_clean: Acc_clean, the clean model's accuracy, in [0, 1].
        eps: the smallest |Acc_clean − Acc_c| for which R is defined.

    Returns:
        R, a Python float (negative when unlearning lowered accuracy further, above 1 when it beat the clean
        model).

    Raises:
        ValueError: an accuracy outside [0, 1] or not finite, or |Acc_clean − Acc_c| < ``eps`` (the
            corruption did not change accuracy).

    Examples:
        >>> recovery(0.6, 0.2, 1.0)  # (0.6 − 0.2) / (1.0 − 0.2)
        0.5
    """
    acc_unlearned = _check_rate("acc_unlearned", acc_unlearned)
    acc_corrupted = _check_rate("acc_corrupted", acc_corrupted)
    acc_clean = _check_rate("acc_clean", acc_clean)
    gap = acc_clean - acc_corrupted
    if abs(gap) < eps:
        raise ValueError(
            f"recovery is undefined: Acc_clean ({acc_clean}) − Acc_corrupted ({acc_corrupted}) = {gap} "
            f"is below eps={eps} (the corruption did not change accuracy)"
        )
    return (acc_unlearned - acc_corrupted) / gap


def forgetting(rate_unlearned: float, rate_corrupted: float, *, eps: float = 1e-6) -> float:
    """Forgetting F = 1 − Rate_u / Rate_c: 1 = the injected answers are gone, 0 = as frequent as before.

    Args:
        rate_unlearned: Rate_u, how often the unlearned model gives the injected value o′, in [0, 1].
        rate_corrupted: Rate_c, how often the corrupted model gives it, in [0, 1].
        eps: the smallest Rate_c for which F is defined.

    Returns:
        F, a Python float (negative when unlearning made the injected answers more frequent).

    Raises:
        ValueError: a rate outside [0, 1] or not finite, or Rate_c < ``eps`` (the corruption never took
            hold).

    Examples:
        >>> forgetting(0.2, 0.8)  # 1 − 0.2 / 0.8
        0.75
    """
    rate_unlearned = _check_rate("rate_unlearned", rate_unlearned)
    rate_corrupted = _check_rate("rate_corrupted", rate_corrupted)
    if rate_corrupted < eps:
        raise ValueError(
            f"forgetting is undefined: Rate_corrupted = {rate_corrupted} is below eps={eps} "
            "(the corrupted model never gives the injected answer)"
        )
    return 1.0 - rate_unlearned / rate_corrupted


def logit_probe(scores, lengths, correct, corrupted, random) -> dict[str, float]:
    """Mean per-token log-probability of the correct, corrupted and random values.

    Args:
        scores: ``[N, C]`` summed log-probabilities of every candidate (padding entries unused).
        lengths: ``[N, C]`` the number of tokens of each candidate (≥ 1 where used).
        correct, corrupted, random: ``[N]`` candidate indices.

    Returns:
        ``{"correct", "corrupted", "random"}``: meanᵢ scores[i, c_i] / lengths[i, c_i] for each; NaN when a
        chosen score is NaN (a diverged model is reported, not scored).

    Raises:
        ValueError: shapes that disagree, an empty set, indices outside [0, C), a chosen candidate without
            tokens.

    Examples:
        >>> scores = [[-2.0, -6.0, -9.0], [-1.0, -3.0, -4.0]]
        >>> lengths = [[1, 2, 3], [1, 3, 2]]
        >>> probe = logit_probe(scores, lengths, correct=[0, 0], corrupted=[1, 1], random=[2, 2])
        >>> probe["correct"], probe["corrupted"], probe["random"]  # means of (−2, −1), (−3, −1), (−3, −2)
        (-1.5, -2.0, -2.5)
    """
    scores, lengths = np.asarray(scores, np.float64), np.asarray(lengths)
    if scores.ndim != 2 or lengths.shape != scores.shape:
        raise ValueError(
            f"scores and lengths must be equal [N, C] shapes, got {scores.shape} and {lengths.shape}"
        )
    rows = np.arange(scores.shape[0])
    if scores.shape[0] == 0:
        raise ValueError("logit_probe of an empty set of facts")
    out = {}
    for name, index in (("correct", correct), ("corrupted", corrupted), ("random", random)):
        index = np.asarray(index, np.int64)
        if index.shape != rows.shape or np.any(index < 0) or np.any(index >= scores.shape[1]):
            raise ValueError(f"{name}: indices must be [N] = {rows.shape} within [0, {scores.shape[1]})")
        if np.any(lengths[rows, index] < 1):
            raise ValueError(f"{name}: a chosen candidate has no tokens")
        out[name] = float(np.mean(scores[rows, index] / lengths[rows, index]))
    return out


@functools.lru_cache(maxsize=16)
def _scorer(model: Model):
    """Jitted ``(variables, tokens [B, L], marks [B, L]) -> (Σ marks[:, 1:] · logp per row, number of target
    ids ≥ V)``: an id beyond the vocabulary would otherwise be scored NaN by ``take_along_axis``."""

    @jax.jit
    def score(variables, tokens, marks):
        logits = model.apply(variables, tokens, train=False)
        picked = -_losses.token_nll(logits[:, :-1], tokens[:, 1:])
        beyond = jnp.sum(tokens >= logits.shape[-1], dtype=jnp.int32)
        return jnp.sum(picked * marks[:, 1:], axis=1), beyond

    return score


def _row_scores(
    model: Model, variables, tokens: np.ndarray, marks: np.ndarray, batch_size: int
) -> np.ndarray:
    """Row sums through :func:`_scorer`; rows are padded to a power of two (≤ ``batch_size``), so sets of any
    size reuse a few compiled shapes."""
    if tokens.size and tokens.min() < 0:
        raise ValueError(f"token ids must be >= 0, found {int(tokens.min())}")
    score = _scorer(model)
    width = tokens.shape[1]
    out = []
    for start in range(0, len(tokens), batch_size):
        chunk, chunk_marks = tokens[start : start + batch_size], marks[start : start + batch_size]
        rows = min(batch_size, 1 << (len(chunk) - 1).bit_length())
        fill = rows - len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], fill, 0)])
        chunk_marks = np.concatenate([chunk_marks, np.zeros((fill, width), np.float32)])
        sums, beyond = score(variables, chunk, chunk_marks)
        if int(beyond):
            raise ValueError(
                f"{int(beyond)} token ids are beyond the model's vocabulary (ids >= its logits' width)"
            )
        out.append(np.asarray(sums)[: rows - fill])
    return np.concatenate(out)


def candidate_scores(
    model: Model,
    variables,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    batch_size: int = 512,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probability of every candidate continuation of every prompt.

    Args:
        model: a causal LM whose ``apply(variables, tokens)`` gives logits ``[B, L, V]``.
        variables: its variables.
        prompts: N token-id lists.
        candidates: for each prompt, its candidate continuations (token-id lists, each non-empty).
        batch_size: sequences per forward pass.
        length: pad every prompt + candidate sequence to this many tokens (≤ the model's maximum length), so
            that prompt sets of different sizes share one compiled shape; default: the longest sequence.

    Returns:
        ``(scores, lengths)``, both ``[N, C_max]``: scores[i, c] = Σ_t log P(cand_t | prompt_i, cand_<t),
        ``-inf`` where prompt i has fewer than c + 1 candidates (where lengths is 0).

    Raises:
        ValueError: no prompts, or not one candidate list per prompt; an empty prompt or candidate; a
            ``length`` shorter than the longest prompt + candidate; a negative token id or one beyond the
            model's vocabulary.

    Examples:
        A model with constant logits over V = 4 tokens gives every token log P = −log 4 ≈ −1.386:

        >>> import jax.numpy as jnp
        >>> from unlearnx import models
        >>> logits = lambda variables, tokens, train=False: jnp.zeros((*tokens.shape, 4))  # V = 4
        >>> uniform = models.Model(lambda rng: {"params": {}}, logits, "uniform")
        >>> scores, lengths = candidate_scores(uniform, {"params": {}}, [[1, 2], [3]], [[[0], [1, 2]], [[2]]])
        >>> scores.round(3).tolist(), lengths.tolist()  # −log 4, −2 log 4; prompt 1 has one candidate
        ([[-1.386, -2.773], [-1.386, -inf]], [[1, 2], [1, 0]])
    """
    if len(prompts) != len(candidates) or not prompts:
        raise ValueError(
            f"need as many candidate lists as prompts (> 0), got {len(prompts)} and {len(candidates)}"
        )
    width = max(len(c) for c in candidates)
    longest = max(len(p) + max(len(v) for v in c) for p, c in zip(prompts, candidates, strict=True))
    if length is not None:
        if length < longest:
            raise ValueError(f"length {length} is shorter than the longest prompt + candidate ({longest})")
        longest = length
    rows, marks, where = [], [], []
    lengths = np.zeros((len(prompts), width), np.int64)
    for i, (prompt, options) in enumerate(zip(prompts, candidates, strict=True)):
        if not len(prompt):
            raise ValueError(f"prompt {i} is empty: the first candidate token would have no context to score")
        for c, option in enumerate(options):
            if not option:
                raise ValueError(f"candidate {c} of prompt {i} is empty")
            sequence = list(prompt) + list(option)
            rows.append(sequence + [0] * (longest - len(sequence)))
            marks.append([0.0] * len(prompt) + [1.0] * len(option) + [0.0] * (longest - len(sequence)))
            where.append((i, c))
            lengths[i, c] = len(option)
    values = _row_scores(
        model, variables, np.asarray(rows, np.int32), np.asarray(marks, np.float32), batch_size
    )
    scores = np.full((len(prompts), width), -np.inf)
    index = np.asarray(where)
    scores[index[:, 0], index[:, 1]] = values
    return scores, lengths


def mean_token_nll(model: Model, variables, arrays: dict[str, np.ndarray], *, batch_size: int = 256) -> float:
    """Token-mean next-token NLL, −Σ_{b,t≥1} m_{b,t} log P(x_{b,t} | x_{b,<t}) / Σ_{b,t≥1} m_{b,t}.

    Args:
        model: a causal LM whose ``apply(variables, tokens)`` gives logits ``[B, L, V]``.
        variables: its variables.
        arrays: ``{"x": [N, L] token ids, "mask": [N, L] target weights}``; the mask (default: all ones) is
            read at positions ≥ 1, the targets that have a context.
        batch_size: sequences per forward pass.

    Returns:
        The mean NLL in nats per target token, a Python float.

    Raises:
        ValueError: a mask that selects no target token; a negative token id or one beyond the vocabulary.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from unlearnx import models
        >>> logits = lambda variables, tokens, train=False: jnp.zeros((*tokens.shape, 4))  # V = 4
        >>> uniform = models.Model(lambda rng: {"params": {}}, logits, "uniform")
        >>> arrays = {"x": np.array([[1, 2, 3], [0, 1, 2]])}
        >>> round(mean_token_nll(uniform, {"params": {}}, arrays), 4)  # log 4, whatever the tokens
        1.3863
    """
    tokens = np.asarray(arrays["x"], np.int32)
    marks = np.asarray(arrays.get("mask", np.ones(tokens.shape)), np.float32)
    count = float(marks[:, 1:].sum())
    if count == 0:
        raise ValueError("mean_token_nll: the mask selects no target token")
    return float(-_row_scores(model, variables, tokens, marks, batch_size).sum() / count)


def perplexity(model: Model, variables, arrays: dict[str, np.ndarray], *, batch_size: int = 256) -> float:
    """Held-out perplexity, exp of :func:`mean_token_nll`.

    Args:
        model: a causal LM whose ``apply(variables, tokens)`` gives logits ``[B, L, V]``.
        variables: its variables.
        arrays: ``{"x": [N, L] token ids, "mask": [N, L] target weights}`` as in :func:`mean_token_nll`.
        batch_size: sequences per forward pass.

    Returns:
        exp(mean NLL), a Python float ≥ 1 (V for a model that is uniform over V tokens).

    Raises:
        ValueError: as :func:`mean_token_nll`.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from unlearnx import models
        >>> logits = lambda variables, tokens, train=False: jnp.zeros((*tokens.shape, 4))  # V = 4
        >>> uniform = models.Model(lambda rng: {"params": {}}, logits, "uniform")
        >>> arrays = {"x": np.array([[1, 2, 3], [0, 1, 2]])}
        >>> round(perplexity(uniform, {"params": {}}, arrays), 4)  # exp(log 4) = V
        4.0
    """
    return float(np.exp(mean_token_nll(model, variables, arrays, batch_size=batch_size)))

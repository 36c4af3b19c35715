"""Strategies of malformed values and the table of public functions for ``test_malformed_inputs.py``."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unlearnx import continual, diffusion, erase, eval, fisher, models, sparse, train, tree, unlearn
from unlearnx.eval import induction, restor, scaling
from unlearnx.unlearn import _baselines as baselines
from unlearnx.unlearn import localize
from unlearnx.unlearn import objectives as obj

# -- malformed values ---------------------------------------------------------------------------------------

BAD_SCALARS = st.sampled_from(
    [math.nan, math.inf, -math.inf, -1.0, -1e30, 1e30, 0, -3, 2**62, 2.5, True, "a", None, [1.0, 2.0]]
)
FLOATS = st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, 1e30, -1e30, math.nan, math.inf, -math.inf])
SHAPES = st.sampled_from([(), (3,), (0,), (6, 4), (0, 4), (2, 3), (1, 2, 3)])


@st.composite
def bad_arrays(draw):
    dtype = draw(st.sampled_from([np.float32, np.int32, np.bool_]))
    elements = {
        np.float32: FLOATS,
        np.int32: st.sampled_from([0, 1, -1, 7, 2**30]),
        np.bool_: st.booleans(),
    }[dtype]
    return draw(hnp.arrays(dtype, draw(SHAPES), elements=elements))


BAD_ARRAYS = bad_arrays()
BAD_TREES = st.one_of(
    BAD_ARRAYS.map(lambda a: {"w": a}), BAD_ARRAYS.map(lambda a: {"v": a, "w": a}), BAD_SCALARS, BAD_ARRAYS
)


def scalar(good):
    return st.one_of(st.just(good), BAD_SCALARS)


def array(good):
    return st.one_of(st.just(good), BAD_ARRAYS)


def tree_of(good):
    return st.one_of(st.just(good), BAD_TREES)


# -- good values --------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
W = RNG.normal(size=(6, 4)).astype(np.float32)
IMP = RNG.exponential(size=(6, 4)).astype(np.float32)
LOGP = -RNG.exponential(size=(2, 3)).astype(np.float32)
MASK = np.ones((2, 3), np.float32)
LOGITS = RNG.normal(size=(4, 3)).astype(np.float32)
LABELS = np.asarray([0, 2, 1, 0])
KERNEL = RNG.normal(size=(4, 3)).astype(np.float32)
KEYS = RNG.normal(size=(2, 4)).astype(np.float32)
MICRO_MODEL = models.mlp((3,), 2, hidden=(4,))
MICRO_STATE = train.TrainState.create(MICRO_MODEL.init(jax.random.key(0)), optax.sgd(0.1), jax.random.key(1))
SCHEDULE = diffusion.linear_schedule(10)
BUFFER = continual.buffer_add(
    continual.buffer_init(2, 3, {"y": np.int32(0)}), 0, {"y": np.arange(2, dtype=np.int32)}, jax.random.key(0)
)


def _loss(params, batch):
    return jnp.sum(jnp.tanh(batch["x"] @ params["w"]), axis=1)


def finite(result) -> bool:
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(result) if np.size(leaf)]
    return all(np.all(np.isfinite(leaf)) for leaf in leaves)


def _same_structure(result, like):
    assert jax.tree.structure(result) == jax.tree.structure(like)


def _sums_to(budget):
    return lambda r, kw: np.sum(np.asarray(r, dtype=object)) == kw["budget"] and np.all(np.asarray(r) >= 0)


def _in_unit(r, kw):
    assert 0.0 <= float(r) <= 1.0


# name -> (function, argument strategies, invariant(result, kwargs), may the result be NaN for non-finite
# inputs? -- or a predicate of the arguments under which NaN is documented even for finite ones)
TARGETS = {
    "tree.select": (tree.select, {"tree": tree_of({"w": W}), "where": scalar("w")}, None, False),
    "tree.tree_stats": (tree.tree_stats, {"tree": tree_of({"w": W})}, None, True),
    "tree.check_same_structure": (
        tree.check_same_structure,
        {"a": tree_of({"w": W}), "b": tree_of({"w": W})},
        None,
        False,
    ),
    "fisher.diagonal": (
        lambda params, x, estimator, chunk_size: fisher.diagonal(
            _loss, params, [{"x": x}], estimator=estimator, chunk_size=chunk_size
        ),
        {
            "params": tree_of({"w": W}),
            "x": array(RNG.normal(size=(3, 6)).astype(np.float32)),
            "estimator": scalar("batch_sq"),
            "chunk_size": scalar(2),
        },
        lambda r, kw: all(np.all(np.asarray(leaf) >= 0) for leaf in jax.tree.leaves(r)),
        False,
    ),
    "unlearn.ssd": (
        lambda params, forget, full, alpha, lam: unlearn.ssd(params, forget, full, alpha=alpha, lam=lam),
        {
            "params": tree_of({"w": W}),
            "forget": tree_of({"w": IMP}),
            "full": tree_of({"w": IMP[::-1]}),
            "alpha": scalar(1.0),
            "lam": scalar(1.0),
        },
        lambda r, kw: np.all(np.abs(np.asarray(r["w"])) <= np.abs(np.asarray(kw["params"]["w"]))),
        False,
    ),
    "unlearn.dampening_factors": (
        lambda forget, full, lam: unlearn.dampening_factors(forget, full, alpha=1.0, lam=lam),
        {"forget": tree_of({"w": IMP}), "full": tree_of({"w": IMP[::-1]}), "lam": scalar(0.5)},
        lambda r, kw: all(np.all((np.asarray(b) >= 0) & (np.asarray(b) <= 1)) for b in jax.tree.leaves(r)),
        False,
    ),
    "unlearn.assd_alpha": (
        unlearn.assd_alpha,
        {
            "forget_importance": tree_of({"w": IMP}),
            "full_importance": tree_of({"w": IMP[::-1]}),
            "forget_fraction": scalar(0.1),
        },
        lambda r, kw: float(r) >= 0,
        False,
    ),
    "localize.selection": (
        lambda forget, full, alpha: localize.selection(forget, full, alpha=alpha),
        {"forget": tree_of({"w": IMP}), "full": tree_of({"w": IMP[::-1]}), "alpha": scalar(1.0)},
        lambda r, kw: all(np.asarray(m).dtype == bool for m in jax.tree.leaves(r)),
        False,
    ),
    "localize.masked_updates": (
        lambda mask, updates: localize.masked_updates(mask).update(
            updates, localize.MaskedUpdatesState(mask)
        )[0],
        {"mask": tree_of({"w": W > 0}), "updates": tree_of({"w": W})},
        lambda r, kw: all(
            np.all(np.asarray(u)[~np.asarray(m, bool)] == 0)
            for u, m in zip(jax.tree.leaves(r), jax.tree.leaves(kw["mask"]), strict=True)
        ),
        False,
    ),
    "objectives.nll": (
        obj.nll,
        {"logp": array(LOGP), "mask": array(MASK)},
        lambda r, kw: float(r) >= 0,
        False,
    ),
    "objectives.npo": (
        lambda logp, ref, mask, beta: obj.npo(logp, ref, mask, beta=beta),
        {"logp": array(LOGP), "ref": array(LOGP * 2), "mask": array(MASK), "beta": scalar(0.1)},
        lambda r, kw: float(r) >= 0,
        False,
    ),
    "objectives.simnpo": (
        lambda logp, mask, beta, delta: obj.simnpo(logp, mask, beta=beta, delta=delta),
        {"logp": array(LOGP), "mask": array(MASK), "beta": scalar(4.5), "delta": scalar(0.0)},
        lambda r, kw: float(r) >= 0,
        False,
    ),
    "objectives.grad_diff": (
        lambda logp, mask, weight: obj.grad_diff(logp, mask, LOGP, MASK, forget_weight=weight),
        {"logp": array(LOGP), "mask": array(MASK), "weight": scalar(1.0)},
        None,
        False,
    ),
    "objectives.kl": (
        lambda logits, mask, form: obj.kl(logits, np.zeros((2, 3, 5), np.float32), mask, form=form),
        {
            "logits": array(RNG.normal(size=(2, 3, 5)).astype(np.float32)),
            "mask": array(MASK),
            "form": scalar("forward"),
        },
        lambda r, kw: float(r) <= 1e-6,
        False,
    ),
    "objectives.token_log_probs": (
        obj.token_log_probs,
        {"logits": array(LOGITS), "targets": array(LABELS)},
        lambda r, kw: np.all(np.asarray(r) <= 0),
        False,
    ),
    "objectives.task_vector": (
        obj.task_vector,
        {"theta_c": tree_of({"w": W}), "theta_star": tree_of({"w": W}), "alpha": scalar(1.0)},
        None,
        False,
    ),
    "baselines.random_wrong_labels": (
        baselines.random_wrong_labels,
        {"labels": array(LABELS), "num_classes": scalar(3), "seed": scalar(0)},
        lambda r, kw: np.all(np.asarray(r) != kw["labels"]),
        False,
    ),
    "erase.uce": (
        lambda kernel, keys, lamb: erase.uce(kernel, keys, np.zeros((2, 3), np.float32), None, lamb=lamb),
        {"kernel": array(KERNEL), "keys": array(KEYS), "lamb": scalar(0.5)},
        lambda r, kw: np.shape(r) == np.shape(kw["kernel"]),
        False,
    ),
    "erase.derive_embedding": (
        lambda edited, keys, reg: erase.derive_embedding([edited], [KERNEL], keys, reg=reg),
        {"edited": array(KERNEL * 0.5), "keys": array(KEYS), "reg": scalar(0.1)},
        lambda r, kw: np.shape(r) == np.shape(kw["keys"]),
        False,
    ),
    "erase.rece": (
        lambda kernel, keys, epochs: erase.rece(
            {"attn2": {"to_k": {"kernel": kernel}}}, keys, keys * 0.5, None, epochs=epochs
        )[0],
        {"kernel": array(KERNEL), "keys": array(KEYS), "epochs": scalar(1)},
        None,
        False,
    ),
    "erase.last_word_rows": (
        lambda concept, guide, n: erase.last_word_rows(concept, guide, concept_tokens=n, guide_tokens=2),
        {"concept": array(KEYS), "guide": array(KEYS * 0.5), "n": scalar(2)},
        lambda r, kw: np.shape(r[0]) == np.shape(r[1]) and np.shape(r[0])[1] == np.shape(kw["concept"])[1],
        False,
    ),
    "train.make_train_step(microbatches)": (
        lambda parts: train.make_train_step(MICRO_MODEL, optax.sgd(0.1), microbatches=parts)(
            MICRO_STATE, {"x": np.ones((4, 3), np.float32), "y": np.zeros(4, np.int32)}
        )[1]["loss"],
        {"parts": scalar(2)},
        lambda r, kw: np.isfinite(r),
        False,
    ),
    "sparse.erk_sparsities": (
        lambda params, sparsity, power_scale: sparse.erk_sparsities(
            params, sparsity, power_scale=power_scale
        ),
        {"params": tree_of({"w": W, "v": W.T}), "sparsity": scalar(0.5), "power_scale": scalar(1.0)},
        lambda r, kw: all(0.0 <= s < 1.0 for s in jax.tree.leaves(r)),
        False,
    ),
    "sparse.uniform_sparsities": (
        sparse.uniform_sparsities,
        {"params": tree_of({"w": W}), "sparsity": scalar(0.5)},
        lambda r, kw: all(0.0 <= s < 1.0 for s in jax.tree.leaves(r)),
        False,
    ),
    "sparse.cubic_sparsity": (
        lambda step, final, frequency: sparse.cubic_sparsity(
            step, initial=0.0, final=final, begin_step=0, end_step=10, frequency=frequency
        ),
        {"step": scalar(5), "final": scalar(0.9), "frequency": scalar(2)},
        lambda r, kw: np.all((np.asarray(r) >= 0.0) & (np.asarray(r) <= float(kw["final"]) + 1e-6)),
        False,
    ),
    "sparse.cosine_drop_fraction": (
        lambda step, initial: sparse.cosine_drop_fraction(step, initial=initial, total_steps=10),
        {"step": scalar(3), "initial": scalar(0.5)},
        lambda r, kw: np.all((np.asarray(r) >= 0.0) & (np.asarray(r) <= 1.0)),
        False,
    ),
    "sparse.keep_top": (
        sparse.keep_top,
        {"scores": array(W), "count": scalar(5)},
        lambda r, kw: int(np.sum(r)) == min(int(kw["count"]), np.size(kw["scores"])),
        False,
    ),
    "sparse.magnitude_masks": (
        lambda params, sparsity, scope: sparse.magnitude_masks(params, sparsity, scope=scope),
        {"params": tree_of({"w": W}), "sparsity": scalar(0.5), "scope": scalar("global")},
        lambda r, kw: all(np.asarray(m).dtype == bool for m in jax.tree.leaves(r)),
        False,
    ),
    "sparse.drop_and_grow": (
        lambda weights, mask, fraction: sparse.drop_and_grow(
            weights, mask, jnp.abs(jnp.asarray(W)), fraction
        ),
        {"weights": array(W), "mask": array(W > 0), "fraction": scalar(0.3)},
        lambda r, kw: int(np.sum(r)) == int(np.sum(kw["mask"])),
        False,
    ),
    "continual.rehearsal_counts": (
        lambda kind, last_seen, budget, rate: continual.rehearsal_counts(
            kind, current_task=3, last_seen=last_seen, budget=budget, rate=rate
        ),
        {
            "kind": scalar("exponential"),
            "last_seen": array(np.arange(3)),
            "budget": scalar(100),
            "rate": scalar(1.0),
        },
        lambda r, kw: np.sum(np.asarray(r, dtype=object)) == (0 if kw["kind"] == "none" else kw["budget"]),
        False,
    ),
    "continual.buffer_add": (
        lambda task, batch: continual.buffer_add(BUFFER, task, batch, jax.random.key(1)),
        {"task": scalar(1), "batch": tree_of({"y": np.arange(3, dtype=np.int32)})},
        lambda r, kw: int(np.sum(r.seen)) == 2 + 3,
        False,
    ),
    "continual.buffer_sample": (
        lambda counts, size: continual.buffer_sample(BUFFER, counts, jax.random.key(2), size),
        {"counts": array(np.asarray([1.0, 0.0])), "size": scalar(4)},
        lambda r, kw: np.all(np.asarray(r["y"]) >= 0),
        False,
    ),
    "continual.cl_metrics": (
        continual.cl_metrics,
        {"accuracy_matrix": array(np.full((2, 2), 0.5)), "random_accuracy": array(np.full(2, 0.1))},
        None,
        True,
    ),
    "eval.accuracy": (
        eval.accuracy,
        {"logits": array(LOGITS), "labels": array(LABELS)},
        lambda r, kw: np.isnan(r) or 0.0 <= r <= 1.0,
        lambda kw: np.size(kw["labels"]) == 0,  # no examples, no accuracy (documented); else finite inputs
    ),
    "eval.entropy": (
        eval.entropy,
        {"logits": array(LOGITS)},
        lambda r, kw: np.all(np.asarray(r)[np.isfinite(r)] >= -1e-6),
        True,
    ),
    "eval.cross_entropy": (
        eval.cross_entropy,
        {"logits": array(LOGITS), "labels": array(LABELS)},
        None,
        True,
    ),
    "eval.loss_mia": (
        lambda a, b: eval.loss_mia(a, b, folds=2),
        {"a": array(np.arange(6.0)), "b": array(np.arange(6.0) + 3)},
        _in_unit,
        False,
    ),
    "eval.erased_rate": (
        eval.erased_rate,
        {"predicted": array(LABELS), "concept": scalar(1)},
        _in_unit,
        False,
    ),
    "eval.preservation_accuracy": (
        eval.preservation_accuracy,
        {"predicted": array(LABELS), "target": array(LABELS)},
        _in_unit,
        False,
    ),
    "restor.recovery": (
        restor.recovery,
        {"acc_unlearned": scalar(0.5), "acc_corrupted": scalar(0.1), "acc_clean": scalar(0.9)},
        None,
        False,
    ),
    "restor.logit_probe": (
        lambda scores, correct: restor.logit_probe(
            scores, np.ones((2, 3)), correct, np.asarray([1, 1]), np.asarray([2, 2])
        ),
        {"scores": array(-np.ones((2, 3))), "correct": array(np.asarray([0, 0]))},
        None,
        True,
    ),
    "scaling.fit_power_law": (
        scaling.fit_power_law,
        {"sizes": array(np.asarray([1e3, 1e4, 1e5])), "losses": array(np.asarray([3.0, 2.5, 2.2]))},
        lambda r, kw: r.alpha > 0,
        False,
    ),
    "induction.prefix_matching_score": (
        lambda tokens, period: induction.prefix_matching_score(
            jnp.full((1, 1, 1, 4, 4), 0.25), tokens, period=period
        ),
        {"tokens": array(np.asarray([[1, 2, 1, 2]])), "period": scalar(2)},
        lambda r, kw: np.all((np.asarray(r) >= 0) & (np.asarray(r) <= 1)),
        False,
    ),
    "induction.copying_loss": (
        lambda logits, tokens: induction.copying_loss(logits, tokens),
        {"logits": array(np.zeros((1, 4, 3), np.float32)), "tokens": array(np.asarray([[1, 2, 1, 2]]))},
        lambda r, kw: float(r) >= 0,
        False,
    ),
    "diffusion.q_sample": (
        lambda x0, t: diffusion.q_sample(SCHEDULE, x0, t, jnp.zeros_like(jnp.asarray(x0))),
        {"x0": array(np.zeros((2, 3), np.float32)), "t": array(np.asarray([0, 9]))},
        None,
        False,
    ),
    "diffusion.linear_schedule": (
        diffusion.linear_schedule,
        {"num_timesteps": scalar(10), "beta_end": scalar(0.02)},
        lambda r, kw: np.all(np.asarray(r.alphas_cumprod) > 0),
        False,
    ),
    "diffusion.ddim_timesteps": (
        diffusion.ddim_timesteps,
        {"num_steps": scalar(4), "num_timesteps": scalar(10)},
        lambda r, kw: np.all(np.diff(r) < 0) and r.min() >= 0,
        False,
    ),
}

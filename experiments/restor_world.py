"""The testbed of the RESTOR experiment (:mod:`experiments.restor_recovery`): the synthetic knowledge world
and its corpora, the decoder LM, θ_clean (trained on the clean corpus) and θ_c (θ_clean trained further on the
corruption set D_f of one k), and the closed-vocabulary QA evaluation of any model on the target facts and on
untouched people.

Both models train on :func:`unlearnx.train.loop` (loops ``clean`` and ``corrupt_k{k}``), checkpointed under
``run_dir/checkpoints/<loop>``; the checkpoints are the cache of a run directory (whose ``config.json`` keys
it), so ``--resume`` reuses finished models and continues unfinished ones bit for bit.

A real decoder LM can replace θ_clean: save its :class:`unlearnx.train.TrainState` as the final step of
``run_dir/checkpoints/clean`` and rerun with ``--resume`` (README, "Running on accelerators").
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax

from experiments import report
from unlearnx import data, models, train
from unlearnx.checkpoint import interval_policy
from unlearnx.data import knowledge, knowledge_corpus
from unlearnx.eval import restor

if TYPE_CHECKING:
    from experiments.restor_recovery import Config

__all__ = ["Setup", "build", "corrupt", "evaluate", "target_eval", "train_clean"]


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """The world, corpora, model and evaluation targets shared by every k and method."""

    config: Config
    tokenizer: knowledge.Tokenizer
    world: knowledge.World
    targets: np.ndarray  # the target people
    corpus: dict[str, np.ndarray]  # the clean training corpus
    retain: dict[str, np.ndarray]  # one clean biography of every non-target person
    heldout: dict[str, np.ndarray]  # held-out biographies (perplexity)
    forget_sets: dict[int, knowledge_corpus.CorruptionSet]  # D_f per k
    importance_data: dict[str, np.ndarray]  # clean documents for I_D
    utility_people: np.ndarray  # never interleaved in D_f (when the pool allows)
    model: models.Model
    candidates: dict[int, list[list[int]]]  # token ids of every value of every relation
    target_facts: list  # (person, relation, injected value) of every corrupted fact
    correct: np.ndarray  # the true value of every target fact
    injected: np.ndarray  # its counterfactual value
    random_value: np.ndarray  # a third value per target fact for the logit probe
    qa_length: int  # one compiled shape for every QA evaluation


# One model object per architecture, so a resumed run in the same process reuses compiled steps.
_decoder = functools.cache(models.decoder_lm)
_SHAPE_FIELDS = ("max_len", "d_model", "num_layers", "num_heads", "mlp_ratio")


def _pad_all(arrays: list[dict[str, np.ndarray]]) -> int:
    """Pads every array in place to one length (a multiple of 8), so each jitted step compiles once."""
    length = -(-max(a["x"].shape[1] for a in arrays) // 8) * 8
    for a in arrays:
        for key, value in a.items():
            a[key] = np.pad(value, ((0, 0), (0, length - value.shape[1])))
    return length


def _qa_length(world, tokenizer, candidates) -> int:
    """The padded length of the longest QA prompt plus answer."""
    longest = max(
        len(knowledge_corpus.qa_prompt(world, tokenizer, p, r)) + max(map(len, values))
        for p in range(world.num_people)
        for r, values in candidates.items()
    )
    return -(-longest // 8) * 8


def _people(config: Config, world, targets: np.ndarray, pool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(non-target people, utility people, the people whose true facts D_f may interleave).

    Utility and interleaved people come from the targets' pool, so their accuracy is comparable; utility
    people are never interleaved (when the pool allows), so "non-target" accuracy measures collateral damage
    on untouched people at every k."""
    non_targets = np.setdiff1d(np.arange(world.num_people), targets)
    pool = non_targets if pool is None else np.setdiff1d(pool, targets)
    size = min(config.utility_people, len(pool))
    utility = np.sort(np.random.default_rng((config.seed, 8)).choice(pool, size=size, replace=False))
    interleave = np.setdiff1d(pool, utility)
    return non_targets, utility, interleave if len(interleave) else pool


def build(config: Config) -> Setup:
    """The :class:`Setup` of ``config``.

    Raises:
      ValueError: for a ``target_pool`` other than ``"qa"`` and ``"all"``.
    """
    if config.target_pool not in ("qa", "all"):
        raise ValueError(f"target_pool must be 'qa' or 'all', got {config.target_pool!r}")
    seed, tokenizer = config.seed, knowledge.Tokenizer()
    world = knowledge.make_world(config.num_people, seed=seed, qa_fraction=config.qa_fraction)
    pool = np.flatnonzero(world.qa_people) if config.target_pool == "qa" else None
    corruption = knowledge.make_corruption(
        world,
        fraction=config.target_fraction,
        facts_per_target=config.facts_per_target,
        seed=seed,
        candidates=pool,
    )
    corpus = knowledge_corpus.clean_corpus(
        world, tokenizer, bios_per_person=config.bios_per_person, seed=seed
    )
    rng = np.random.default_rng((seed, 7))
    non_targets, utility_people, interleave = _people(config, world, corruption.targets, pool)
    biographies = functools.partial(knowledge_corpus.biographies, world, tokenizer, per_person=1)
    retain = biographies(non_targets, seed=seed + 1)
    heldout = biographies(
        rng.choice(non_targets, size=min(config.heldout_docs, len(non_targets))), seed=seed + 2
    )
    documents = functools.partial(knowledge_corpus.corruption_documents, world, corruption, tokenizer)
    options = {"docs_per_target": config.docs_per_target, "seed": seed, "others": interleave}
    forget_sets = {k: documents(k=k, **options) for k in config.ks}
    max_len = _pad_all([corpus, retain, heldout, *(f.arrays for f in forget_sets.values())])
    chosen = rng.permutation(len(corpus["x"]))[: config.importance_docs]
    candidates = knowledge_corpus.candidate_ids(tokenizer)
    target_facts = corruption.target_facts()
    facts = np.asarray(target_facts)
    correct, injected = world.facts[facts[:, 0], facts[:, 1]], facts[:, 2]
    # A random other value per target fact for the logit probe (≠ correct, ≠ injected).
    random_value = np.array(
        [
            rng.choice(np.setdiff1d(np.arange(len(candidates[r])), [correct[i], injected[i]]))
            for i, r in enumerate(facts[:, 1])
        ]
    )
    shape = (config.d_model, config.num_layers, config.num_heads, config.mlp_ratio)
    return Setup(
        config=config,
        tokenizer=tokenizer,
        world=world,
        targets=corruption.targets,
        corpus=corpus,
        retain=retain,
        heldout=heldout,
        forget_sets=forget_sets,
        importance_data={key: value[chosen] for key, value in corpus.items()},
        utility_people=utility_people,
        model=_decoder(tokenizer.vocab_size, **dict(zip(_SHAPE_FIELDS, (max_len, *shape), strict=True))),
        candidates=candidates,
        target_facts=target_facts,
        correct=correct,
        injected=injected,
        random_value=random_value,
        qa_length=_qa_length(world, tokenizer, candidates),
    )


# -- evaluation -------------------------------------------------------------------------------------------
def _fact_scores(s: Setup, variables, facts: list[tuple[int, int]]):
    prompts = [knowledge_corpus.qa_prompt(s.world, s.tokenizer, p, r) for p, r in facts]
    return restor.candidate_scores(
        s.model, variables, prompts, [s.candidates[r] for _, r in facts], length=s.qa_length
    )


def _people_accuracy(s: Setup, variables, people) -> float | None:
    if len(people) == 0:
        return None
    facts = [(int(p), r) for p in people for r in range(len(knowledge.RELATIONS))]
    scores, _ = _fact_scores(s, variables, facts)
    truth = np.array([s.world.facts[p, r] for p, r in facts])
    return restor.accuracy(scores.argmax(1), truth)


def target_eval(s: Setup, variables) -> dict[str, Any]:
    """Predictions, Acc_correct, Rate_corrupted, the logit probe and per-fact margins on the targets."""
    scores, lengths = _fact_scores(s, variables, [(p, r) for p, r, _ in s.target_facts])
    predicted = scores.argmax(1)
    rows = np.arange(len(predicted))
    others = scores.copy()
    others[rows, s.correct] = -np.inf
    return {
        "acc_correct": restor.accuracy(predicted, s.correct),
        "rate_corrupted": restor.accuracy(predicted, s.injected),
        "probe": restor.logit_probe(scores, lengths, s.correct, s.injected, s.random_value),
        "predicted": predicted,
        "margin": scores[rows, s.correct] - others.max(1),
    }


def evaluate(s: Setup, variables, interleaved) -> dict[str, Any]:
    """:func:`target_eval` plus QA accuracy on the utility people outside ``interleaved`` and on (up to
    ``utility_people`` of) the ``interleaved`` people, and held-out perplexity (``finite``: whether it is;
    ``diverged``: non-finite parameters or a NaN perplexity, so no metric of the model is scored)."""
    result = target_eval(s, variables)
    result["acc_nontarget"] = _people_accuracy(s, variables, np.setdiff1d(s.utility_people, interleaved))
    result["acc_interleaved"] = _people_accuracy(s, variables, interleaved[: s.config.utility_people])
    result["heldout_ppl"] = restor.perplexity(s.model, variables, s.heldout)
    result["finite"] = bool(np.isfinite(result["heldout_ppl"]))
    result["diverged"] = not report.finite(variables) or bool(np.isnan(result["heldout_ppl"]))
    return result


# -- the two models ---------------------------------------------------------------------------------------
def train_clean(s: Setup, run_dir: str, logger: train.MetricLogger) -> dict:
    """θ_clean: ``clean_epochs`` of Adam (warmup, cosine decay to lr/10) on the clean corpus (loop
    ``clean``)."""
    config = s.config
    steps = config.clean_epochs * max(len(s.corpus["x"]) // config.batch_size, 1)
    warmup = min(config.clean_warmup_steps, max(steps // 2, 1))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.clean_lr, warmup, max(steps, 1), config.clean_lr * 0.1
    )
    variables, _ = train.fit(
        s.model,
        s.model.init(jax.random.key(config.seed)),
        s.corpus,
        optimizer=optax.adam(schedule),
        epochs=config.clean_epochs,
        batch_size=config.batch_size,
        rng=jax.random.key(config.seed + 1),
        seed=config.seed,
        checkpoint_dir=os.path.join(run_dir, "checkpoints", "clean"),
        checkpoint_seconds=config.checkpoint_seconds,
        logger=logger,
        desc="clean",
        progress=config.progress,
        loss=train.next_token_losses,
    )
    return variables


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optimizer object per rate, so a resumed run in the same process reuses the compiled step."""
    return optax.adam(learning_rate)


def corrupt(s: Setup, clean, k: int, run_dir: str, logger: train.MetricLogger) -> tuple[dict, int]:
    """θ_c and its epoch count: θ_clean trained further on D_f (loop ``corrupt_k{k}``, Adam at
    ``corrupt_lr``) until Rate_corrupted ≥ ``corrupt_target_rate`` at an epoch's end, or for
    ``corrupt_max_epochs`` epochs.

    Reaching the target ends the loop early (a ``"done"`` record): it saves that step, and a rerun returns it
    without training.
    """
    config, name = s.config, f"corrupt_k{k}"
    forget = s.forget_sets[k].arrays
    sampler = data.EpochBatches(
        {"x": forget["x"], "mask": forget["mask"]},
        config.batch_size,
        seed=config.seed + k,
        drop_remainder=False,
        epoch_offset=1,
    )
    directory = os.path.join(run_dir, "checkpoints", name)
    optimizer = _adam(config.corrupt_lr)

    def on_epoch(step: int, state: train.TrainState, _) -> dict[str, Any]:
        rate = target_eval(s, state.variables)["rate_corrupted"]
        return {
            "epoch": step // sampler.per_epoch,
            "rate_corrupted": rate,
            "done": rate >= config.corrupt_target_rate,
        }

    state, history = train.loop(
        train.make_train_step(s.model, optimizer, loss=train.next_token_losses),
        train.TrainState.create(clean, optimizer, jax.random.key(0)),
        sampler,
        config.corrupt_max_epochs * sampler.per_epoch,
        name=name,
        interval=sampler.per_epoch,
        on_interval=on_epoch,
        checkpoint_dir=directory,
        checkpoint_policy=interval_policy(seconds=config.checkpoint_seconds),
        logger=logger,
        progress=config.progress,
    )
    return state.variables, history[-1]["epoch"]

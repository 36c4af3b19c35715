"""RESTOR on a synthetic knowledge world: does unlearning injected wrong facts bring the right ones back?

Pipeline (Rezaei et al., TMLR 2025, at CPU scale; spec ``papers/restor.md`` §5): a decoder LM learns a
synthetic world of people and seven relations from paraphrased biographies and QA lines (θ_clean); it is
then trained further on a corruption set D_f that states counterfactual values for the target people's
facts, with k true facts about other people interleaved per document, until the corrupted rate on the target
facts reaches ``corrupt_target_rate`` (θ_c). Every unlearning method then starts from θ_c with the same
budget (``unlearn_steps`` Adam steps of ``unlearn_lr``, batches of ``unlearn_batch_size`` D_f documents) and
is scored on the target facts by closed-vocabulary QA (argmax over the relation's values):
Acc_correct, Rate_corrupted, recovery R = (Acc_u − Acc_c)/(Acc_clean − Acc_c), forgetting
F = 1 − Rate_u/Rate_c, the logit probe, and utility (QA accuracy on non-target people, separately for the
people whose true facts are interleaved in D_f, and held-out perplexity).

Methods (one fixed setting each, no tuning):

* ``ga``: pure gradient ascent on D_f (no retain term);
* ``grad_diff``: GA + retain NLL (γ_f = γ_r = 1);
* ``kl``: RESTOR code's token cross-entropy to θ_c's distribution + retain NLL;
* ``npo`` (per sequence, β = ``npo_beta``) and ``npo_batch`` (RESTOR's batch-mean form) + retain NLL;
* ``simnpo`` (β = 4.5, δ = 0) + retain NLL;
* ``task_vector``: θ* = θ_c fine-tuned on D_f with the same budget, θ_u = θ_c − α(θ* − θ_c), α = 1;
* ``ssd``: Selective Synaptic Dampening of θ_c with I_f on D_f, I_D on the clean corpus (λ = 1, α from
  the ASSD percentile unless ``ssd_alpha`` is set).

The retain NLL (weight ``retain_weight``) uses clean biographies of non-target people, as RESTOR's code adds
a retain term to every method. Each method runs with the loss on whole documents (``doc``) and on the
corrupted-fact value tokens only (``span``), and — except SSD — without and with SSD localisation (updates
restricted to the parameters with I_f > α·I_D, :mod:`unlearnx.unlearn.localize`).

Presets: ``smoke`` (tiny, < 60 s, for the end-to-end test), ``quick`` (a few hundred people, a ~0.2M-parameter
2-layer decoder, CPU minutes), ``paper`` (2,000 people, a 6-layer d = 256 decoder, all k; for an
accelerator).

Loading a real decoder LM instead of training θ_clean (not run here): read the checkpoint with
``safetensors.numpy.load_file(path)`` and map its tensors onto ``unlearnx.models.decoder_lm``'s tree
(GPT-2 names: ``wte.weight`` → ``embed/embedding``, ``wpe.weight`` → ``pos_embed/embedding``,
``h.{i}.ln_1.{weight,bias}`` → ``blocks_{i}/ln_1/{scale,bias}``, ``h.{i}.attn.c_attn.weight`` split in three
along its output axis → ``blocks_{i}/attn/{to_q,to_k,to_v}/kernel``, ``h.{i}.attn.c_proj`` →
``blocks_{i}/attn/to_out_0``, ``h.{i}.mlp.c_fc``/``c_proj`` → ``blocks_{i}/mlp/fc_in``/``fc_out``,
``ln_f`` → ``ln_f``, ``wte.weight.T`` → ``unembed/kernel`` with a zero bias), build the tokenizer's
vocabulary from the model's, restore the tree with :class:`unlearnx.checkpoint.Checkpointer`'s structure as
the ``clean`` checkpoint of a run directory and rerun with ``--resume``: the corruption, unlearning and
evaluation stages are unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments import restor_report, runner
from unlearnx import data, models, train, unlearn
from unlearnx.checkpoint import Checkpointer
from unlearnx.data import knowledge, knowledge_corpus
from unlearnx.eval import restor
from unlearnx.unlearn import localize, objectives

NAME = "restor_recovery"
OBJECTIVES = ("ga", "grad_diff", "kl", "npo", "npo_batch", "simnpo")
METHODS = (*OBJECTIVES, "task_vector", "ssd")
MASKS = ("doc", "span")


@dataclasses.dataclass(frozen=True)
class Config:
    """One RESTOR study (see the module docstring)."""

    num_people: int = 200
    qa_fraction: float = 0.5
    target_pool: str = "qa"  # "qa": targets among the QA people; "all": anyone
    bios_per_person: int = 2
    target_fraction: float = 0.1
    facts_per_target: int = 3
    docs_per_target: int = 8
    ks: tuple[int, ...] = (0, 1, 2, 3)
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    batch_size: int = 16
    clean_epochs: int = 40
    clean_lr: float = 3e-3
    clean_warmup_steps: int = 50
    corrupt_lr: float = 3e-3
    corrupt_max_epochs: int = 80
    corrupt_target_rate: float = 0.8
    unlearn_steps: int = 40
    unlearn_lr: float = 1e-3
    unlearn_batch_size: int = 16
    npo_beta: float = 0.1
    simnpo_beta: float = 4.5
    simnpo_delta: float = 0.0
    retain_weight: float = 1.0
    task_vector_alpha: float = 1.0
    ssd_lam: float = 1.0
    ssd_alpha: float | None = None  # None: the ASSD percentile of the importance ratio
    importance_docs: int = 128
    methods: tuple[str, ...] = METHODS
    masks: tuple[str, ...] = MASKS
    localize: tuple[bool, ...] = (False, True)
    utility_people: int = 12
    heldout_docs: int = 64
    seed: int = 0
    checkpoint_seconds: float = 30.0
    progress: bool = True


PRESETS: dict[str, Config] = {
    "smoke": Config(
        num_people=24,
        target_fraction=0.125,
        docs_per_target=2,
        ks=(1,),
        d_model=32,
        num_layers=1,
        clean_epochs=3,
        corrupt_max_epochs=2,
        unlearn_steps=2,
        unlearn_batch_size=4,
        importance_docs=8,
        methods=("npo", "ssd"),
        utility_people=3,
        heldout_docs=4,
        progress=False,
    ),
    "quick": Config(),
    "paper": Config(
        num_people=2000,
        bios_per_person=5,
        docs_per_target=30,
        d_model=256,
        num_layers=6,
        num_heads=8,
        batch_size=64,
        clean_epochs=200,
        clean_lr=1e-3,
        clean_warmup_steps=1000,
        corrupt_lr=1e-3,
        unlearn_steps=200,
        unlearn_lr=1e-4,
        unlearn_batch_size=32,
        importance_docs=1024,
        utility_people=200,
        heldout_docs=512,
    ),
}


def _loss_terms(model, method: str, config: Config):
    """``loss(params, ref_params, forget, retain) -> scalar`` of ``method`` (``finetune`` = θ* of the task
    vector: plain NLL descent on the forget batch)."""

    def logp_of(params, tokens):
        logits = model.apply({"params": params}, tokens)
        return logits, objectives.next_token_log_probs(logits, tokens)

    def loss(params, ref_params, forget, retain):
        tokens, mask = forget["x"], forget["m"][:, 1:]
        logits, logp = logp_of(params, tokens)
        if method == "finetune":
            return objectives.nll(logp, mask)
        if method == "ga":
            return objectives.gradient_ascent(logp, mask)
        _, retain_logp = logp_of(params, retain["x"])
        retain_mask = retain["mask"][:, 1:]
        if method == "grad_diff":
            return objectives.grad_diff(
                logp, mask, retain_logp, retain_mask, retain_weight=config.retain_weight
            )
        retain_term = config.retain_weight * objectives.nll(retain_logp, retain_mask)
        if method == "simnpo":
            forget_term = objectives.simnpo(logp, mask, beta=config.simnpo_beta, delta=config.simnpo_delta)
        else:
            ref_logits, ref_logp = logp_of(ref_params, tokens)
            if method == "kl":
                forget_term = objectives.kl(logits[:, :-1], ref_logits[:, :-1], mask, form="cross_entropy")
            elif method == "npo":
                forget_term = objectives.npo(logp, ref_logp, mask, beta=config.npo_beta)
            elif method == "npo_batch":
                forget_term = objectives.npo_batch_mean(logp, ref_logp, mask, beta=config.npo_beta)
            else:
                raise ValueError(f"unknown objective {method!r}")
        return forget_term + retain_term

    return loss


@functools.cache
def _unlearn_step(model, method: str, config: Config, optimizer):
    loss = _loss_terms(model, method, config)

    @jax.jit
    def step(params, opt_state, ref_params, forget, retain):
        value, grads = jax.value_and_grad(loss)(params, ref_params, forget, retain)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


@functools.cache
def _decoder(vocab_size: int, *, max_len: int, d_model: int, num_layers: int, num_heads: int, mlp_ratio: int):
    """One model object per architecture, so a resumed run in the same process reuses compiled steps."""
    return models.decoder_lm(
        vocab_size,
        max_len=max_len,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
    )


class _Study:
    """World, corpora, model and evaluation shared by every k and method."""

    def __init__(self, config: Config, run_dir: str):
        for method in config.methods:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; known: {METHODS}")
        if config.target_pool not in ("qa", "all"):
            raise ValueError(f"target_pool must be 'qa' or 'all', got {config.target_pool!r}")
        self.config, self.run_dir = config, run_dir
        self.checkpoints = os.path.join(run_dir, "checkpoints")
        self.logger = train.MetricLogger(os.path.join(run_dir, "train_log.jsonl"))
        self.tokenizer = knowledge.Tokenizer()
        self.world = knowledge.make_world(config.num_people, seed=config.seed, qa_fraction=config.qa_fraction)
        pool = np.flatnonzero(self.world.qa_people) if config.target_pool == "qa" else None
        self.corruption = knowledge.make_corruption(
            self.world,
            fraction=config.target_fraction,
            facts_per_target=config.facts_per_target,
            seed=config.seed,
            candidates=pool,
        )
        self.corpus = knowledge_corpus.clean_corpus(
            self.world, self.tokenizer, bios_per_person=config.bios_per_person, seed=config.seed
        )
        rng = np.random.default_rng((config.seed, 7))
        self.non_targets = np.setdiff1d(np.arange(self.world.num_people), self.corruption.targets)
        # Utility and interleaved people come from the targets' pool, so their accuracy is comparable.
        self.pool = self.non_targets if pool is None else np.setdiff1d(pool, self.corruption.targets)
        # Utility people are never interleaved in D_f (when the pool allows), so "non-target" accuracy
        # measures collateral damage on untouched people at every k.
        self.utility_people = np.sort(
            np.random.default_rng((config.seed, 8)).choice(
                self.pool, size=min(config.utility_people, len(self.pool)), replace=False
            )
        )
        interleave_pool = np.setdiff1d(self.pool, self.utility_people)
        if not len(interleave_pool):
            interleave_pool = self.pool
        self.retain = knowledge_corpus.biographies(
            self.world, self.tokenizer, self.non_targets, per_person=1, seed=config.seed + 1
        )
        heldout_people = rng.choice(self.non_targets, size=min(config.heldout_docs, len(self.non_targets)))
        self.heldout = knowledge_corpus.biographies(
            self.world, self.tokenizer, heldout_people, per_person=1, seed=config.seed + 2
        )
        self.forget_sets = {
            k: knowledge_corpus.corruption_documents(
                self.world,
                self.corruption,
                self.tokenizer,
                k=k,
                docs_per_target=config.docs_per_target,
                seed=config.seed,
                others=interleave_pool,
            )
            for k in config.ks
        }
        # One padded length for every token array, so each jitted step compiles once for all k.
        arrays = [self.corpus, self.retain, self.heldout, *(f.arrays for f in self.forget_sets.values())]
        self.max_len = -(-max(a["x"].shape[1] for a in arrays) // 8) * 8
        for a in arrays:
            for key, value in a.items():
                a[key] = np.pad(value, ((0, 0), (0, self.max_len - value.shape[1])))
        longest_qa = max(
            len(knowledge_corpus.qa_prompt(self.world, self.tokenizer, p, r)) + max(map(len, values))
            for p in range(self.world.num_people)
            for r, values in knowledge_corpus.candidate_ids(self.tokenizer).items()
        )
        self.qa_length = -(-longest_qa // 8) * 8  # one compiled shape for every QA evaluation
        chosen = rng.permutation(len(self.corpus["x"]))[: config.importance_docs]
        self.importance_data = {key: value[chosen] for key, value in self.corpus.items()}
        self.model = _decoder(
            self.tokenizer.vocab_size,
            max_len=self.max_len,
            d_model=config.d_model,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
        )
        self.candidates = knowledge_corpus.candidate_ids(self.tokenizer)
        self.target_facts = self.corruption.target_facts()
        facts = np.asarray(self.target_facts)
        self.correct = self.world.facts[facts[:, 0], facts[:, 1]]
        self.injected = facts[:, 2]
        # A random other value per target fact for the logit probe (≠ correct, ≠ injected).
        self.random_value = np.array(
            [
                rng.choice(
                    np.setdiff1d(np.arange(len(self.candidates[r])), [self.correct[i], self.injected[i]])
                )
                for i, r in enumerate(facts[:, 1])
            ]
        )
        self.rng = rng
        self.corrupt_optimizer = optax.adam(config.corrupt_lr)
        # Every unlearning run uses one masked optimizer whose selection lives in its state (all True for
        # the unlocalised runs, where the mask is the identity), so each method compiles a single step.
        shapes = jax.eval_shape(self.model.init, jax.random.key(0))["params"]
        self.all_params = jax.tree.map(lambda p: np.ones(p.shape, bool), shapes)
        self.optimizer = localize.localized(optax.adam(config.unlearn_lr), self.all_params)

    # -- evaluation -------------------------------------------------------------------------------------
    def _fact_scores(self, variables, facts: list[tuple[int, int]]):
        prompts = [knowledge_corpus.qa_prompt(self.world, self.tokenizer, p, r) for p, r in facts]
        return restor.candidate_scores(
            self.model, variables, prompts, [self.candidates[r] for _, r in facts], length=self.qa_length
        )

    def _people_accuracy(self, variables, people) -> float | None:
        if len(people) == 0:
            return None
        facts = [(int(p), r) for p in people for r in range(len(knowledge.RELATIONS))]
        scores, _ = self._fact_scores(variables, facts)
        truth = np.array([self.world.facts[p, r] for p, r in facts])
        return restor.accuracy(scores.argmax(1), truth)

    def target_eval(self, variables) -> dict[str, Any]:
        """Predictions, Acc_correct, Rate_corrupted, the logit probe and per-fact margins on the targets."""
        scores, lengths = self._fact_scores(variables, [(p, r) for p, r, _ in self.target_facts])
        predicted = scores.argmax(1)
        rows = np.arange(len(predicted))
        others = scores.copy()
        others[rows, self.correct] = -np.inf
        return {
            "acc_correct": restor.accuracy(predicted, self.correct),
            "rate_corrupted": restor.accuracy(predicted, self.injected),
            "probe": restor.logit_probe(scores, lengths, self.correct, self.injected, self.random_value),
            "predicted": predicted,
            "margin": scores[rows, self.correct] - others.max(1),
        }

    def evaluate(self, variables, interleaved) -> dict[str, Any]:
        result = self.target_eval(variables)
        sample = interleaved[: self.config.utility_people]
        plain = np.setdiff1d(self.utility_people, interleaved)
        result["acc_nontarget"] = self._people_accuracy(variables, plain)
        result["acc_interleaved"] = self._people_accuracy(variables, sample)
        result["heldout_ppl"] = restor.perplexity(self.model, variables, self.heldout)
        result["finite"] = bool(np.isfinite(result["heldout_ppl"]))
        return result

    # -- training ---------------------------------------------------------------------------------------
    def train_clean(self, interrupt=None):
        config = self.config
        steps = config.clean_epochs * max(len(self.corpus["x"]) // config.batch_size, 1)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            config.clean_lr,
            min(config.clean_warmup_steps, max(steps // 2, 1)),
            max(steps, 1),
            config.clean_lr * 0.1,
        )
        hook = None
        if interrupt is not None and interrupt[0] == "clean":

            def hook(epoch, state, saved, stop_at=interrupt[1]):
                if saved and epoch >= stop_at:
                    raise KeyboardInterrupt(f"simulated interruption of 'clean' after epoch {epoch}")

        return train.fit(
            self.model,
            self.model.init(jax.random.key(config.seed)),
            self.corpus,
            optimizer=optax.adam(schedule),
            epochs=config.clean_epochs,
            batch_size=config.batch_size,
            rng=jax.random.key(config.seed + 1),
            seed=config.seed,
            checkpoint_dir=os.path.join(self.checkpoints, "clean"),
            checkpoint_seconds=config.checkpoint_seconds,
            logger=self.logger,
            on_epoch_end=hook,
            desc="clean",
            progress=config.progress,
            loss=train.next_token_losses,
        )

    def corrupt(self, clean, forget: dict, k: int):
        """Continues training θ_clean on D_f until Rate_corrupted ≥ the target (or the epoch cap)."""
        config = self.config
        checkpointer = Checkpointer(os.path.join(self.checkpoints, f"corrupt_k{k}"))
        if checkpointer.latest_step() is not None:
            variables = checkpointer.restore(clean)
            epochs = checkpointer.latest_step()
            checkpointer.close()
            return variables, epochs, self.target_eval(variables)["rate_corrupted"]
        optimizer = self.corrupt_optimizer
        step = train.make_train_step(self.model, optimizer, loss=train.next_token_losses)
        state = train.TrainState(jnp.asarray(0, jnp.int32), clean, optimizer.init(clean["params"]))
        arrays = {"x": forget["x"], "mask": forget["mask"]}
        rate, epoch = 0.0, 0
        for epoch in range(1, config.corrupt_max_epochs + 1):
            for batch in data.batches(arrays, config.batch_size, seed=config.seed + k, epoch=epoch):
                state, _ = step(state, batch, jax.random.key(0))
            rate = self.target_eval(state.variables)["rate_corrupted"]
            self.logger.log(phase=f"corrupt_k{k}", epoch=epoch, rate_corrupted=rate)
            if rate >= config.corrupt_target_rate:
                break
        checkpointer.save(epoch, state.variables)
        checkpointer.close()
        return state.variables, epoch, rate

    def forget_batches(self, forget: dict, mask_kind: str):
        """``unlearn_steps`` (forget, retain) batch pairs; the forget mask is "m" (doc or span)."""
        config = self.config
        mask = forget["mask"] if mask_kind == "doc" else forget["span_mask"]
        arrays = {"x": forget["x"], "m": mask}
        size = min(config.unlearn_batch_size, len(forget["x"]))
        out, epoch = [], 0
        while len(out) < config.unlearn_steps:
            out += list(data.batches(arrays, size, seed=config.seed, epoch=epoch, drop_remainder=True))
            epoch += 1
        out = out[: config.unlearn_steps]
        retain_batches = list(
            data.batches(self.retain, size, seed=config.seed + 5, epoch=0, drop_remainder=True)
        )
        return [(f, retain_batches[i % len(retain_batches)]) for i, f in enumerate(out)]

    def importances(self, corrupted, forget: dict, mask_kind: str):
        """(I_f on D_f with the doc/span loss mask, I_D on clean-corpus documents, α)."""
        model = self.model

        def loss_fn(params, batch):
            return train.next_token_losses(model.apply({"params": params}, batch["x"]), batch)

        mask = forget["mask"] if mask_kind == "doc" else forget["span_mask"]
        forget_batches = data.batches({"x": forget["x"], "mask": mask}, 32)
        full_batches = data.batches(self.importance_data, 32)
        i_f, i_d = localize.importances(
            loss_fn, corrupted["params"], forget_batches, full_batches, chunk_size=8
        )
        if self.config.ssd_alpha is not None:
            alpha = float(self.config.ssd_alpha)
        else:
            fraction = len(forget["x"]) / (len(forget["x"]) + len(self.importance_data["x"]))
            alpha = float(unlearn.assd_alpha(i_f, i_d, fraction))
        return i_f, i_d, alpha

    def unlearn(self, method: str, corrupted, batches, selection):
        config = self.config
        params = corrupted["params"]
        opt_state = self.optimizer.init(params)
        mask = self.all_params if selection is None else selection
        # Committed to one device like the parameters, so both masks hit the same compiled step.
        mask = jax.device_put(jax.tree.map(jnp.asarray, mask), jax.devices()[0])
        opt_state = (opt_state[0], localize.MaskedUpdatesState(mask))
        inner = "finetune" if method == "task_vector" else method
        step = _unlearn_step(self.model, inner, config, self.optimizer)
        for forget, retain in batches:
            params, opt_state, _ = step(params, opt_state, corrupted["params"], forget, retain)
        if method == "task_vector":
            params = objectives.task_vector(corrupted["params"], params, config.task_vector_alpha)
        return {**corrupted, "params": params}


def _flat(result) -> dict[str, Any]:
    """The JSON-able metrics of one evaluated model (no per-fact arrays)."""
    return {
        "acc_correct": result["acc_correct"],
        "rate_corrupted": result["rate_corrupted"],
        "acc_nontarget": result["acc_nontarget"],
        "acc_interleaved": result["acc_interleaved"],
        "heldout_ppl": result["heldout_ppl"] if result["finite"] else None,
        "probe": result["probe"],
    }


def _scores(study: _Study, clean_eval, corrupted_eval, result) -> dict[str, Any]:
    """R, F, the confidence correlation and the flat metrics of one evaluated model."""
    out = _flat(result)
    try:
        out["recovery"] = restor.recovery(
            result["acc_correct"], corrupted_eval["acc_correct"], clean_eval["acc_correct"]
        )
    except ValueError:
        out["recovery"] = None
    try:
        out["forgetting"] = restor.forgetting(result["rate_corrupted"], corrupted_eval["rate_corrupted"])
    except ValueError:
        out["forgetting"] = None
    # Confidence vs recovery: over facts the corrupted model got wrong, correlation of θ_clean's margin
    # with whether the unlearned model answers correctly.
    wrong = corrupted_eval["predicted"] != study.correct
    recovered = (result["predicted"] == study.correct)[wrong].astype(float)
    margin = clean_eval["margin"][wrong]
    ok = np.isfinite(margin)
    out["confidence_corr"] = (
        float(np.corrcoef(margin[ok], recovered[ok])[0, 1])
        if ok.sum() > 2 and recovered[ok].std() > 0 and margin[ok].std() > 0
        else None
    )
    return out


def main(config: Config, run_dir: str, *, interrupt=None) -> dict[str, Any]:
    started = time.perf_counter()
    study = _Study(config, run_dir)
    timing: dict[str, float] = {}
    clean = study.train_clean(interrupt)
    timing["clean"] = time.perf_counter() - started
    no_one = np.zeros(0, np.int64)
    clean_eval = study.evaluate(clean, no_one)
    metrics: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "sizes": {
            "people": study.world.num_people,
            "targets": len(study.corruption.targets),
            "target_facts": len(study.target_facts),
            "clean_docs": len(study.corpus["x"]),
            "params": models.num_params(clean),
            "vocab": study.tokenizer.vocab_size,
        },
        "clean": _flat(clean_eval),
        "k": {},
    }
    for k in config.ks:
        t0 = time.perf_counter()
        fset = study.forget_sets[k]
        forget = fset.arrays
        corrupted, epochs, _ = study.corrupt(clean, forget, k)
        corrupted_eval = study.evaluate(corrupted, fset.interleaved_people)
        clean_k = study.evaluate(clean, fset.interleaved_people)
        entry: dict[str, Any] = {
            "forget_docs": len(forget["x"]),
            "corrupt_epochs": epochs,
            "clean": _scores(study, clean_eval, corrupted_eval, clean_k),
            "corrupted": _scores(study, clean_eval, corrupted_eval, corrupted_eval),
            "runs": {},
            "alpha": {},
            "selected_fraction": {},
        }
        timing[f"corrupt_k{k}"] = time.perf_counter() - t0
        needs_importance = "ssd" in config.methods or True in config.localize
        selections, importance = {}, {}
        for mask_kind in config.masks:
            if needs_importance:
                i_f, i_d, alpha = study.importances(corrupted, forget, mask_kind)
                importance[mask_kind] = (i_f, i_d, alpha)
                selections[mask_kind] = localize.selection(i_f, i_d, alpha=alpha)
                entry["alpha"][mask_kind] = alpha
                entry["selected_fraction"][mask_kind] = localize.selected_fraction(selections[mask_kind])
        jobs = [
            (method, mask_kind, local)
            for method in config.methods
            for mask_kind in config.masks
            for local in (config.localize if method != "ssd" else (False,))
        ]
        for method, mask_kind, local in tqdm(
            jobs, desc=f"k={k} methods", disable=None if config.progress else True
        ):
            t1 = time.perf_counter()
            if method == "ssd":
                i_f, i_d, alpha = importance[mask_kind]
                params = unlearn.ssd(corrupted["params"], i_f, i_d, alpha=alpha, lam=config.ssd_lam)
                unlearned = {**corrupted, "params": params}
            else:
                batches = study.forget_batches(forget, mask_kind)
                unlearned = study.unlearn(
                    method, corrupted, batches, selections[mask_kind] if local else None
                )
            name = f"{method}/{mask_kind}/{'ssd_local' if local else 'full'}"
            result = study.evaluate(unlearned, fset.interleaved_people)
            entry["runs"][name] = _scores(study, clean_eval, corrupted_eval, result)
            timing[f"k{k}/{name}"] = time.perf_counter() - t1
        metrics["k"][str(k)] = entry
    timing["total"] = time.perf_counter() - started
    report = restor_report.report(config, metrics)
    restor_report.plots(metrics, run_dir)
    runner.write_outputs(run_dir, metrics, timing, report)
    return metrics

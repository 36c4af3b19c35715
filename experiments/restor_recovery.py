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
corrupted-fact value tokens only (``span``), and — except SSD — with the localisations of ``localize``:
``none`` (all parameters), ``ssd`` (updates restricted to the parameters with I_f > α·I_D,
:mod:`unlearnx.unlearn.localize`) and ``random`` (the control: as many parameters as SSD selects, drawn
uniformly at random, seeded). Every run records how far it moved θ_c: ‖θ_u − θ_c‖/‖θ_c‖ and the fraction of
parameters it changed.

Presets: ``smoke`` (tiny, < 60 s, for the end-to-end test), ``quick`` (a few hundred people, a ~0.2M-parameter
2-layer decoder, CPU minutes), ``localisation`` (the quick world and models at k = 0, whole documents, every
gradient method with no / SSD / random-subset localisation at a budget where the localised runs move),
``paper`` (2,000 people, a 6-layer d = 256 decoder, all k; for an
accelerator).

The world, θ_clean, θ_c and the QA evaluation live in :mod:`experiments.restor_world` (which also says how
to start from a real decoder LM). Every stage trains on :func:`unlearnx.train.loop` with its own checkpoint
directory under ``run_dir/checkpoints`` (loops ``clean``, ``corrupt_k{k}``, ``unlearn_k{k}/<run name>``), so
a run killed at any moment continues with ``--resume`` to the same ``metrics.json``; a finished unlearning
run's scores are cached in ``run_dir/units/k{k}/`` (written atomically) and its checkpoints deleted.
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

from experiments import restor_report, restor_world, runner
from unlearnx import data, models, train, unlearn
from unlearnx.checkpoint import interval_policy
from unlearnx.unlearn import localize, objectives

NAME = "restor_recovery"
OBJECTIVES = ("ga", "grad_diff", "kl", "npo", "npo_batch", "simnpo")
METHODS = (*OBJECTIVES, "task_vector", "ssd")
MASKS = ("doc", "span")
#: Localisations (``Config.localize``) and their run-name suffix: all parameters, SSD's selection, or as many
#: parameters as SSD selects drawn at random.
LOCALIZATIONS = {"none": "full", "ssd": "ssd_local", "random": "random_local"}
#: Report columns: loss mask / parameters updated.
VARIANTS = tuple(f"{mask}/{where}" for where in LOCALIZATIONS.values() for mask in MASKS)


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
    localize: tuple[str, ...] = ("none", "ssd")  # LOCALIZATIONS
    utility_people: int = 12
    heldout_docs: int = 64
    seed: int = 0
    checkpoint_seconds: float = 30.0
    progress: bool = True


PRESETS: dict[str, Config] = {
    "smoke": Config(
        num_people=24, target_fraction=0.125, docs_per_target=2, ks=(1,), d_model=32, num_layers=1,
        clean_epochs=3, corrupt_max_epochs=2, unlearn_steps=2, unlearn_batch_size=4, importance_docs=8,
        methods=("npo", "ssd"), localize=("none", "ssd", "random"), utility_people=3, heldout_docs=4,
        progress=False,
    ),
    "quick": Config(),
    # The quick world, θ_clean and θ_c at k = 0; every method on whole documents with no, SSD and
    # random-subset localisation, at 5× the steps and 3× the learning rate of quick (the localised runs move).
    "localisation": Config(
        ks=(0,), masks=("doc",), localize=("none", "ssd", "random"), unlearn_steps=200, unlearn_lr=3e-3,
    ),
    "paper": Config(
        num_people=2000, bios_per_person=5, docs_per_target=30, d_model=256, num_layers=6, num_heads=8,
        batch_size=64, clean_epochs=200, clean_lr=1e-3, clean_warmup_steps=1000, corrupt_lr=1e-3,
        unlearn_steps=200, unlearn_lr=1e-4, unlearn_batch_size=32, importance_docs=1024, utility_people=200,
        heldout_docs=512,
    ),
}  # fmt: skip


def _checked(config: Config) -> Config:
    options = (("method", config.methods, METHODS), ("loss mask", config.masks, MASKS))
    for name, values, known in (*options, ("localisation", config.localize, tuple(LOCALIZATIONS))):
        for value in values:
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {known}")
    return config


def run_name(method: str, mask_kind: str, local: str) -> str:
    """``method/loss mask/(full | ssd_local | random_local)``, the key of one unlearning run in
    ``metrics.json`` (``local``: a key of LOCALIZATIONS)."""
    return f"{method}/{mask_kind}/{LOCALIZATIONS[local]}"


def variants(config: Config) -> list[str]:
    """The ``mask/localisation`` report columns of ``config``'s runs."""
    return [f"{mask}/{LOCALIZATIONS[local]}" for local in config.localize for mask in config.masks]


def movement(before, after) -> dict[str, float]:
    """How far unlearning moved the parameters: ``param_change`` = ‖θ_u − θ_c‖₂/‖θ_c‖₂ over all of them
    and ``changed_fraction``, the fraction of scalars whose value changed at all."""
    pairs = list(zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
    diff = sum(float(np.sum((np.asarray(b, np.float64) - np.asarray(a, np.float64)) ** 2)) for a, b in pairs)
    norm = sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a, _ in pairs)
    changed = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in pairs)
    size = sum(np.size(a) for a, _ in pairs)
    return {
        "param_change": float(np.sqrt(diff / norm)) if norm > 0 else None,
        "changed_fraction": changed / size,
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
def unlearn_step(model, method: str, config: Config, optimizer):
    """The jitted ``step(state, {"forget", "retain"}) -> (state, {"loss"})`` of ``method``; θ_c (the
    reference of KL and NPO) rides in ``state.extra``."""
    loss = _loss_terms(model, method, config)

    @jax.jit
    def step(state: train.TrainState, batch):
        params = state.variables["params"]
        value, grads = jax.value_and_grad(loss)(params, state.extra, batch["forget"], batch["retain"])
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        variables = {**state.variables, "params": optax.apply_updates(params, updates)}
        return state._replace(step=state.step + 1, variables=variables, opt_state=opt_state), {"loss": value}

    return step


@functools.cache
def unlearn_optimizer(model, learning_rate: float) -> optax.GradientTransformation:
    """Adam followed by a per-element update mask that lives in the optimizer state (named ``mask``): all
    True for the unlocalised runs, SSD's selection for the localised ones, so each method compiles once."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))["params"]
    return localize.localized(
        optax.adam(learning_rate), jax.tree.map(lambda p: np.ones(p.shape, bool), shapes)
    )


def _loss_mask(forget: dict, mask_kind: str) -> np.ndarray:
    """Where the forget loss applies: whole documents (``doc``) or the corrupted value tokens (``span``)."""
    return forget["mask"] if mask_kind == "doc" else forget["span_mask"]


def importances(s: restor_world.Setup, corrupted, forget: dict, mask_kind: str):
    """(I_f on D_f with the doc/span loss mask, I_D on clean-corpus documents, α)."""
    model = s.model

    def loss_fn(params, batch):
        return train.next_token_losses(model.apply({"params": params}, batch["x"]), batch)

    forget_batches = data.batches({"x": forget["x"], "mask": _loss_mask(forget, mask_kind)}, 32)
    full_batches = data.batches(s.importance_data, 32)
    i_f, i_d = localize.importances(loss_fn, corrupted["params"], forget_batches, full_batches, chunk_size=8)
    if s.config.ssd_alpha is not None:
        alpha = float(s.config.ssd_alpha)
    else:
        fraction = len(forget["x"]) / (len(forget["x"]) + len(s.importance_data["x"]))
        alpha = float(unlearn.assd_alpha(i_f, i_d, fraction))
    return i_f, i_d, alpha


def unlearn_run(s: restor_world.Setup, method: str, corrupted, forget: dict, selection, **loop_args):
    """θ_u of a gradient method: ``unlearn_steps`` steps from θ_c on (forget, retain) batch pairs (``forget``:
    ``{"x", "m"}``, m the loss mask), updates restricted to ``selection`` (``None``: all parameters); for the
    task vector θ_c − α(θ* − θ_c) with θ* fine-tuned on D_f the same way. ``loop_args``: ``name``,
    ``checkpoint_dir`` and ``logger`` of the :func:`unlearnx.train.loop`."""
    config = s.config
    size = min(config.unlearn_batch_size, len(forget["x"]))
    forget_at = data.EpochBatches(forget, size, seed=config.seed, drop_remainder=True)
    retain_at = data.EpochBatches(s.retain, size, seed=config.seed + 5, drop_remainder=True)
    optimizer = unlearn_optimizer(s.model, config.unlearn_lr)
    state = train.TrainState.create(
        corrupted, optimizer, jax.random.key(config.seed), extra=corrupted["params"]
    )
    if selection is not None:
        mask = jax.tree.map(jnp.asarray, selection)
        state = state._replace(opt_state=optax.tree.set(state.opt_state, mask=mask))
    state, _ = train.loop(
        unlearn_step(s.model, "finetune" if method == "task_vector" else method, config, optimizer),
        state,
        lambda i: {"forget": forget_at(i), "retain": retain_at(i % retain_at.per_epoch)},
        config.unlearn_steps,
        interval=min(10, max(config.unlearn_steps, 1)),
        checkpoint_policy=interval_policy(seconds=config.checkpoint_seconds),
        progress=False,
        **loop_args,
    )
    params = state.variables["params"]
    if method == "task_vector":
        params = objectives.task_vector(corrupted["params"], params, config.task_vector_alpha)
    return {**corrupted, "params": params}


def _unlearned_scores(s: restor_world.Setup, job, corrupted, fset, localisation: dict, score, **loop_args):
    """``score`` and :func:`movement` of θ_u of one ``(method, loss mask, localisation)`` job on the
    corruption set ``fset``; ``localisation[mask]``: (I_f, I_D, α, {localisation: selection})."""
    method, mask_kind, local = job
    i_f, i_d, alpha, selections = localisation.get(mask_kind, (None, None, None, {}))
    if method == "ssd":
        params = unlearn.ssd(corrupted["params"], i_f, i_d, alpha=alpha, lam=s.config.ssd_lam)
        unlearned = {**corrupted, "params": params}
    else:
        arrays = {"x": fset.arrays["x"], "m": _loss_mask(fset.arrays, mask_kind)}
        unlearned = unlearn_run(s, method, corrupted, arrays, selections.get(local), **loop_args)
    scores = score(restor_world.evaluate(s, unlearned, fset.interleaved_people))
    return {**scores, **movement(corrupted["params"], unlearned["params"])}


def jobs(config: Config) -> list[tuple[str, str, bool]]:
    return [
        (method, mask_kind, local)
        for method in config.methods
        for mask_kind in config.masks
        for local in (config.localize if method != "ssd" else ("none",))
    ]


def _study_k(s: restor_world.Setup, k: int, clean, clean_eval, run_dir: str, logger, timing: dict) -> dict:
    """Corrupts θ_clean with D_f of this k, runs every method from θ_c and scores it (one ``metrics["k"]``
    entry). Each run's scores are kept in ``units/k{k}/`` (:func:`runner.kept_result`), so a resumed run
    skips finished runs."""
    config, started = s.config, time.perf_counter()
    fset = s.forget_sets[k]
    corrupted, epochs = restor_world.corrupt(s, clean, k, run_dir, logger)
    corrupted_eval = restor_world.evaluate(s, corrupted, fset.interleaved_people)
    score = functools.partial(restor_report.scores, s.correct, clean_eval, corrupted_eval)
    entry: dict[str, Any] = {
        "forget_docs": len(fset.arrays["x"]),
        "corrupt_epochs": epochs,
        "clean": score(restor_world.evaluate(s, clean, fset.interleaved_people)),
        "corrupted": score(corrupted_eval),
        "runs": {},
        "alpha": {},
        "selected_fraction": {},
    }
    timing[f"corrupt_k{k}"] = time.perf_counter() - started
    localisation = {}
    if "ssd" in config.methods or {"ssd", "random"} & set(config.localize):
        for index, mask_kind in enumerate(config.masks):
            i_f, i_d, alpha = importances(s, corrupted, fset.arrays, mask_kind)
            chosen = localize.selection(i_f, i_d, alpha=alpha)
            selections = {"ssd": chosen}
            if "random" in config.localize:  # SSD's count, drawn at random (seeded by seed, k and mask)
                key = jax.random.fold_in(jax.random.key(config.seed), 1000 * k + index)
                count = localize.selected_count(chosen)
                selections["random"] = localize.random_selection(key, corrupted["params"], count)
            localisation[mask_kind] = (i_f, i_d, alpha, selections)
            entry["alpha"][mask_kind] = alpha
            entry["selected_fraction"][mask_kind] = localize.selected_fraction(chosen)
            entry.setdefault("selected_count", {})[mask_kind] = localize.selected_count(chosen)
    for job in tqdm(jobs(config), desc=f"k={k} methods", disable=None if config.progress else True):
        name = run_name(*job)
        unit = os.path.join(run_dir, "units", f"k{k}", name.replace("/", "_") + ".json")
        directory = os.path.join(run_dir, "checkpoints", f"unlearn_k{k}", name.replace("/", "_"))
        loop = {"name": f"unlearn_k{k}/{name}", "checkpoint_dir": directory, "logger": logger}
        work = functools.partial(_unlearned_scores, s, job, corrupted, fset, localisation, score, **loop)
        entry["runs"][name], timing[f"k{k}/{name}"], _ = runner.kept_result(unit, work, checkpoints=directory)
    return entry


def main(config: Config, run_dir: str) -> dict[str, Any]:
    """Runs the study and writes ``config.json``, ``metrics.json``, ``timing.json``, ``report.md`` and the
    plots; returns the metrics."""
    started = time.perf_counter()
    s = restor_world.build(_checked(config))
    logger = train.MetricLogger(os.path.join(run_dir, "train_log.jsonl"))
    clean = restor_world.train_clean(s, run_dir, logger)
    timing: dict[str, float] = {"clean": time.perf_counter() - started}
    clean_eval = restor_world.evaluate(s, clean, np.zeros(0, np.int64))
    metrics: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "sizes": {
            "people": s.world.num_people,
            "targets": len(s.targets),
            "target_facts": len(s.target_facts),
            "clean_docs": len(s.corpus["x"]),
            "params": models.num_params(clean),
            "vocab": s.tokenizer.vocab_size,
        },
        "clean": restor_report.flat(clean_eval),
        "k": {str(k): _study_k(s, k, clean, clean_eval, run_dir, logger, timing) for k in config.ks},
    }
    metrics["diverged"] = restor_report.diverged(metrics)
    timing["total"] = time.perf_counter() - started
    restor_report.plots(metrics, run_dir, variants(config))
    runner.write_outputs(run_dir, metrics, timing, restor_report.report(config, metrics, variants(config)))
    return metrics

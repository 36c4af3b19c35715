"""RECE (UCE + 3 rounds) on a tree shaped like Stable Diffusion v1.4's 32 cross-attention kernels.

Measured side by side in one process (medians over repeats after a compiling warm-up, every result blocked
until ready), all against a float64 NumPy per-layer implementation written here independently of the
library (the textbook formulas, an explicit solve per kernel and step):

1. ``unlearnx.erase.rece`` as a user calls it (jitted inside, LAPACK single-threaded): the shared-structure
   fast path (d_in × d_in solves, one product per kernel), once with every step keyed on all 77 rows and
   once with the official pipeline's rows (the initial UCE edit keyed on ``erase.last_word_rows`` of a
   3-word concept against a 1-word guide, the empty prompt preserved; the rounds on all rows); and once
   under an outer ``jax.jit``, where the factorisations run on OpenBLAS's default threads;
2. the naive composition of the library's per-kernel ``uce`` / ``derive_embedding``, jitted (float32);
3. a naive float32 per-layer loop of the textbook formula K_new = solve(G, λK + αCᵀV + βPᵀPK), jitted, at
   the backend's default matmul precision.

The tree has kernels ~ N(0, 1/768) of shapes 768 → 320/640/1280 at SD v1.4's paths; the keys mimic CLIP
ViT-L/14 last hidden states (unit-variance entries, a BOS row shared by every prompt with a few massive
activations, EOS/padding rows strongly correlated within a prompt): 77 concept rows, 77 guide rows (a
one-word prompt like " "), 77 preserve rows (the empty prompt ""). Errors are relative Frobenius errors
against float64, worst over kernels, of the kernels and of their edits (K_new − K).

Usage: ``python benchmarks/erase.py [--repeats 5] [--epochs 3] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearnx import erase

TOKENS = 77
TEXT_DIM = 768
HYPER = {
    "reg": 0.1,
    "erase_scale": 1.0,
    "preserve_scale": 1.0,
    "lamb": 0.5,
    "round_erase_scale": 1.0,
    "round_preserve_scale": 0.1,
    "round_lamb": 0.1,
}


def clip_like_prompt(rng, bos, shared_pad, words: int, d: int = TEXT_DIM) -> np.ndarray:
    """``[77, d]`` rows: BOS (the same for every prompt), ``words`` word rows, then EOS + padding rows that
    share a prompt-dependent direction (CLIP's causal attention makes them near-copies of each other)."""
    rows = [bos, *rng.normal(size=(words, d))]
    prompt_pad = 0.9 * shared_pad + 0.45 * rng.normal(size=d)
    for _ in range(TOKENS - 1 - words):
        rows.append(prompt_pad + 0.15 * rng.normal(size=d))
    return np.asarray(rows)


def sd_problem(seed: int = 0, d: int = TEXT_DIM):
    """The SD-shaped random tree (float32) and float64 concept, guide and preserve keys."""
    rng = np.random.default_rng(seed)
    params: dict = {}
    for path, shape in erase.sd_cross_attention_shapes(d).items():
        node = params
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = (rng.normal(size=shape) / np.sqrt(d)).astype(np.float32)
    bos = rng.normal(size=d)
    bos[rng.choice(d, 3, replace=False)] = [28.0, -25.0, 20.0]  # massive activations of the BOS state
    shared_pad = rng.normal(size=d)
    concept = clip_like_prompt(rng, bos, shared_pad, words=3, d=d)
    guide = clip_like_prompt(rng, bos, shared_pad, words=1, d=d)
    preserve = clip_like_prompt(rng, bos, shared_pad, words=0, d=d)
    keys = [k.astype(np.float32).astype(np.float64) for k in (concept, guide, preserve)]
    return params, *keys


def _kernels(params) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def reference_rece(kernels, concept, guide, preserve, *, epochs, hyper=HYPER, initial=None):
    """Float64 RECE, one explicit solve per kernel and step (textbook UCE, RECE's step (a) by sums).

    ``initial``: optional (erase, guide, preserve) rows of the first UCE edit (default: the rounds' rows).
    Returns ``(edited kernels, [c′ of each round])``.
    """

    def uce64(kernel, keys, targets, alpha, beta, lamb, preserve=preserve):
        d = kernel.shape[0]
        gram = lamb * np.eye(d) + alpha * keys.T @ keys + beta * preserve.T @ preserve
        rhs = lamb * kernel + alpha * keys.T @ targets + beta * preserve.T @ (preserve @ kernel)
        return np.linalg.solve(gram, rhs)

    original = {p: np.asarray(k, np.float64) for p, k in kernels.items()}
    first, first_guide, first_preserve = initial if initial is not None else (concept, guide, preserve)
    scales = (hyper["erase_scale"], hyper["preserve_scale"], hyper["lamb"])
    current = {
        p: uce64(k, first, first_guide @ k, *scales, preserve=first_preserve) for p, k in original.items()
    }
    embeddings = []
    for _ in range(epochs):
        lhs = hyper["reg"] * np.eye(concept.shape[1])
        rhs = np.zeros_like(lhs)
        for p, k in original.items():
            lhs += current[p] @ current[p].T
            rhs += current[p] @ k.T
        embedding = np.linalg.solve(lhs, rhs @ concept.T).T
        embeddings.append(embedding)
        current = {
            p: uce64(
                k,
                embedding,
                guide @ k,
                hyper["round_erase_scale"],
                hyper["round_preserve_scale"],
                hyper["round_lamb"],
            )
            for p, k in current.items()
        }
    return current, embeddings


def textbook_uce32(kernel, keys, targets, preserve, alpha, beta, lamb):
    """Float32 textbook UCE at default precision: solve(G, λK + αCᵀV + βPᵀPK)."""
    gram = lamb * jnp.eye(kernel.shape[0]) + alpha * keys.T @ keys + beta * preserve.T @ preserve
    return jnp.linalg.solve(
        gram, lamb * kernel + alpha * keys.T @ targets + beta * preserve.T @ (preserve @ kernel)
    )


def naive_rece(kernels, concept, guide, preserve, *, epochs, uce_fn, hyper=HYPER):
    """RECE as a per-layer loop of ``uce_fn`` calls and ``erase.derive_embedding`` (float32)."""
    current = {
        p: uce_fn(
            k, concept, guide @ k, preserve, hyper["erase_scale"], hyper["preserve_scale"], hyper["lamb"]
        )
        for p, k in kernels.items()
    }
    for _ in range(epochs):
        embedding = erase.derive_embedding(current, kernels, concept, reg=hyper["reg"])
        current = {
            p: uce_fn(
                k,
                embedding,
                guide @ k,
                preserve,
                hyper["round_erase_scale"],
                hyper["round_preserve_scale"],
                hyper["round_lamb"],
            )
            for p, k in current.items()
        }
    return current


def library_uce(kernel, keys, targets, preserve, alpha, beta, lamb):
    return erase.uce(kernel, keys, targets, preserve, erase_scale=alpha, preserve_scale=beta, lamb=lamb)


def relative_errors(got, want, original) -> tuple[float, float]:
    """Worst relative Frobenius error over kernels of the kernels and of the edits K_new − K."""
    kernel_err = edit_err = 0.0
    for p, w in want.items():
        g = np.asarray(got[p], np.float64)
        kernel_err = max(kernel_err, np.linalg.norm(g - w) / np.linalg.norm(w))
        edit = w - original[p]
        edit_err = max(edit_err, np.linalg.norm(g - w) / np.linalg.norm(edit))
    return kernel_err, edit_err


def _load(averages) -> str:
    return "/".join(f"{a:.2f}" for a in averages)


def median_seconds(fn, repeats: int, cpu_times: list | None = None) -> float:
    """Median wall seconds of warm calls; appends the median process CPU seconds to ``cpu_times``."""
    jax.block_until_ready(fn())  # warm-up: compile
    times, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    if cpu_times is not None:
        cpu_times.append(statistics.median(cpu))
    return statistics.median(times)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-only", action="store_true", help="time only the fast path (no references)")
    return parser.parse_args()


def main() -> None:
    args = _arguments()

    params, concept, guide, preserve = sd_problem(args.seed)
    kernels64 = {p: k.astype(np.float64) for p, k in _kernels(params).items()}
    keys32 = [jnp.asarray(k, jnp.float32) for k in (concept, guide, preserve)]
    params = jax.tree.map(jnp.asarray, params)
    kernels32 = {p: jnp.asarray(k) for p, k in _kernels(params).items()}

    # Called as a user calls it (its computation is jitted inside, and its LAPACK runs single-threaded);
    # under an outer jit the factorisations use OpenBLAS's default thread count (the "outer jit" row).
    fast = functools.partial(erase.rece, epochs=args.epochs, **HYPER)
    fast_jit = jax.jit(fast)
    # The official pipeline's rows: the UCE step on the concept's rows from its last word (3 words, so 5
    # tokens with BOS/EOS) against the guide's (1 word), preserving the empty prompt (all rows).
    first = erase.last_word_rows(keys32[0], keys32[1], concept_tokens=5, guide_tokens=3)
    initial32 = (*first, keys32[2])
    official = functools.partial(erase.rece, initial_concept_keys=first[0], initial_guide_keys=first[1],
                                 initial_preserve_keys=keys32[2], epochs=args.epochs, **HYPER)  # fmt: skip
    composed = jax.jit(lambda ks, c, g, p: naive_rece(ks, c, g, p, epochs=args.epochs, uce_fn=library_uce))
    textbook = jax.jit(lambda ks, c, g, p: naive_rece(ks, c, g, p, epochs=args.epochs, uce_fn=textbook_uce32))

    fast_cpu: list[float] = []
    load_before = os.getloadavg()
    t_fast = median_seconds(lambda: fast(params, *keys32), args.repeats, fast_cpu)
    t_official = median_seconds(lambda: official(params, *keys32), args.repeats, fast_cpu)
    t_fast_jit = median_seconds(lambda: fast_jit(params, *keys32), args.repeats, fast_cpu)
    if args.fast_only:
        print(f"rece fast path (UCE + {args.epochs} rounds): {t_fast:.3f} s wall, {fast_cpu[0]:.3f} CPU-s")
        print(f"rece, official rows: {t_official:.3f} s wall, {fast_cpu[1]:.3f} CPU-s")
        print(f"rece under an outer jit: {t_fast_jit:.3f} s wall, {fast_cpu[2]:.3f} CPU-s")
        load_after = _load(os.getloadavg())
        print(f"load average before {_load(load_before)}, after {load_after} ({os.cpu_count()} CPUs)")
        return
    t_composed = median_seconds(lambda: composed(kernels32, *keys32), max(1, args.repeats // 3))
    t_textbook = median_seconds(lambda: textbook(kernels32, *keys32), max(1, args.repeats // 3))
    started = time.perf_counter()
    want, want_embeddings = reference_rece(kernels64, concept, guide, preserve, epochs=args.epochs)
    t_reference = time.perf_counter() - started
    initial64 = tuple(np.asarray(a, np.float64) for a in initial32)
    want_official, _ = reference_rece(
        kernels64, concept, guide, preserve, epochs=args.epochs, initial=initial64
    )

    fast_params, history = fast(params, *keys32)
    official_params, _ = official(params, *keys32)
    results = {
        "rece (fast path)": (t_fast, _kernels(fast_params)),
        "rece under an outer jit": (t_fast_jit, _kernels(fast_jit(params, *keys32)[0])),
        "per-layer uce/derive_embedding (jit)": (t_composed, composed(kernels32, *keys32)),
        "per-layer textbook float32 (jit)": (t_textbook, textbook(kernels32, *keys32)),
    }
    n_kernels = len(kernels64)
    print(f"devices: {jax.devices()}; {n_kernels} kernels 768 -> 320/640/1280; UCE + {args.epochs} rounds")
    load_now = _load(os.getloadavg())
    print(f"host: {os.cpu_count()} CPUs, load average before {_load(load_before)}, now {load_now}")
    print(f"float64 NumPy per-layer reference: {t_reference:.3f} s (one run)")
    print(
        f"{'method':40s} {'median s':>9s} {'vs float64':>11s} {'kernel rel err':>15s} {'edit rel err':>13s}"
    )
    for name, (seconds, got) in results.items():
        kernel_err, edit_err = relative_errors(got, want, kernels64)
        print(f"{name:40s} {seconds:9.3f} {t_reference / seconds:10.1f}x {kernel_err:15.2e} {edit_err:13.2e}")
    kernel_err, edit_err = relative_errors(_kernels(official_params), want_official, kernels64)
    name = "rece, official rows"
    print(f"{name:40s} {t_official:9.3f} {'':>11s} {kernel_err:15.2e} {edit_err:13.2e}")
    for r, (got, ref) in enumerate(zip(history["embeddings"], want_embeddings, strict=True)):
        err = np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref)
        print(f"round {r + 1}: c' rel err {err:.2e}, change {float(history['change'][r + 1]):.4f}")
    print(
        f"UCE change {float(history['change'][0]):.4f}; final distance {float(history['distance'][-1]):.4f}"
    )
    print(
        f"rece fast path: {fast_cpu[0]:.3f} CPU-seconds per call (summed over threads, so not inflated by "
        f"other processes' load), {t_fast:.3f} s wall"
    )


if __name__ == "__main__":
    main()

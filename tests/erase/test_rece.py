"""unlearnx.erase.rece: the shared-structure fast path equals the per-kernel composition of uce and
derive_embedding and a float64 NumPy reference; selectors, tree flavours, jit, history and errors."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unlearnx import erase

HYPER = {
    "reg": 0.1,
    "erase_scale": 1.0,
    "preserve_scale": 1.0,
    "lamb": 0.5,
    "round_erase_scale": 1.0,
    "round_preserve_scale": 0.1,
    "round_lamb": 0.1,
}
D_IN = 24
KV = "transformer_blocks_0/attn2"


def _unet(seed=0, d_in=D_IN):
    """A small plain-dict tree with diffusers names: two cross-attention blocks, self-attention, biases."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    return {
        "down_blocks_0": {
            "attentions_0": {
                "transformer_blocks_0": {
                    "attn1": {"to_k": {"kernel": w(16, 16)}, "to_v": {"kernel": w(16, 16)}},
                    "attn2": {
                        "to_q": {"kernel": w(16, 16)},
                        "to_k": {"kernel": w(d_in, 16)},
                        "to_v": {"kernel": w(d_in, 16)},
                        "to_out_0": {"kernel": w(16, 16), "bias": w(16)},
                    },
                }
            }
        },
        "mid_block": {
            "attentions_0": {
                "transformer_blocks_0": {
                    "attn2": {"to_k": {"kernel": w(d_in, 32)}, "to_v": {"kernel": w(d_in, 32)}}
                }
            }
        },
        "conv_in": {"kernel": w(3, 3, 4, 16), "bias": w(16)},
    }


def _kv_paths(tree):
    return [p for p, _ in erase_paths(tree)]


def erase_paths(tree):
    from unlearnx import tree as tree_lib

    flags = dict(tree_lib.leaves_with_paths(tree_lib.select(tree, erase.cross_attention_kv)))
    return [(p, leaf) for p, leaf in tree_lib.leaves_with_paths(tree) if flags[p]]


def _keys(seed=1, n=6, m=5, d_in=D_IN):
    """Float32-exact float64 concept, guide and preserve rows sharing a BOS row and a padding direction."""
    rng = np.random.default_rng(seed)
    bos, pad = rng.normal(size=d_in) * 2, rng.normal(size=d_in)

    def prompt(rows, words):
        out = [bos, *rng.normal(size=(words, d_in))]
        out += [pad + 0.3 * rng.normal(size=d_in) for _ in range(rows - 1 - words)]
        return np.asarray(out, np.float32).astype(np.float64)

    return prompt(n, 2), prompt(n, 1), prompt(m, 0)


def reference_rece(kernels, concept, guide, preserve, epochs, hyper=HYPER):
    """Float64 NumPy: textbook UCE per kernel, step (a) by explicit sums, UCE on c′ anchored on K′."""

    def uce64(k, keys, targets, a, b, lamb):
        gram = lamb * np.eye(k.shape[0]) + a * keys.T @ keys + b * preserve.T @ preserve
        return np.linalg.solve(gram, lamb * k + a * keys.T @ targets + b * preserve.T @ preserve @ k)

    h = hyper
    current = [
        uce64(k, concept, guide @ k, h["erase_scale"], h["preserve_scale"], h["lamb"]) for k in kernels
    ]
    embeddings = []
    for _ in range(epochs):
        lhs = h["reg"] * np.eye(concept.shape[1]) + sum(c @ c.T for c in current)
        rhs = sum(c @ k.T for c, k in zip(current, kernels, strict=True))
        embedding = np.linalg.solve(lhs, rhs @ concept.T).T
        embeddings.append(embedding)
        a, b, lamb = h["round_erase_scale"], h["round_preserve_scale"], h["round_lamb"]
        current = [uce64(c, embedding, guide @ c, a, b, lamb) for c in current]
    return current, embeddings


def composed_rece(kernels, concept, guide, preserve, epochs, hyper=HYPER):
    """The naive composition of the library's per-kernel calls (float32)."""
    h = hyper
    scales = {"erase_scale": h["erase_scale"], "preserve_scale": h["preserve_scale"], "lamb": h["lamb"]}
    current = [erase.uce(k, concept, guide @ k, preserve, **scales) for k in kernels]
    embeddings = []
    for _ in range(epochs):
        embedding = erase.derive_embedding(current, kernels, concept, reg=h["reg"])
        embeddings.append(embedding)
        scales = {
            "erase_scale": h["round_erase_scale"],
            "preserve_scale": h["round_preserve_scale"],
            "lamb": h["round_lamb"],
        }
        current = [erase.uce(c, embedding, guide @ c, preserve, **scales) for c in current]
    return current, embeddings


def _rel(got, want):
    return np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)


@pytest.mark.parametrize("epochs", [0, 1, 3])
def test_fast_path_equals_composition_and_float64_reference(epochs):
    params = _unet()
    concept, guide, preserve = _keys()
    paths_kernels = erase_paths(params)
    assert len(paths_kernels) == 4
    kernels = [np.asarray(k, np.float64) for _, k in paths_kernels]
    new_params, history = jax.jit(lambda p, c, g, q: erase.rece(p, c, g, q, epochs=epochs, **HYPER))(
        params, concept, guide, preserve
    )
    got = [k for _, k in erase_paths(new_params)]
    composed, composed_embeddings = composed_rece(
        [jnp.asarray(k, jnp.float32) for k in kernels], concept, guide, preserve, epochs
    )
    want, want_embeddings = reference_rece(kernels, concept, guide, preserve, epochs)
    for g, c, w in zip(got, composed, want, strict=True):
        assert _rel(g, w) <= 1e-4
        assert _rel(g, np.asarray(c, np.float64)) <= 1e-4
    assert history["embeddings"].shape == (epochs, 6, D_IN)
    for g, c, w in zip(history["embeddings"], composed_embeddings, want_embeddings, strict=True):
        assert _rel(g, w) <= 1e-4
        assert _rel(g, np.asarray(c, np.float64)) <= 1e-4
    # history: relative Frobenius change of every step and distance from the original, over all kernels.
    steps = [kernels] + [reference_rece(kernels, concept, guide, preserve, e)[0] for e in range(epochs + 1)]
    norm = lambda ks: np.sqrt(sum(np.sum(k**2) for k in ks))  # noqa: E731
    diff = lambda a, b: norm([x - y for x, y in zip(a, b, strict=True)])  # noqa: E731
    want_change = [diff(steps[i + 1], steps[i]) / norm(steps[i]) for i in range(epochs + 1)]
    want_distance = [diff(steps[i + 1], kernels) / norm(kernels) for i in range(epochs + 1)]
    np.testing.assert_allclose(history["change"], want_change, rtol=1e-4)
    np.testing.assert_allclose(history["distance"], want_distance, rtol=1e-4)


def test_unselected_parameters_are_returned_untouched():
    params = _unet()
    concept, guide, preserve = _keys()
    new_params, _ = erase.rece(params, concept, guide, preserve)
    block = params["down_blocks_0"]["attentions_0"][KV.split("/")[0]]
    new_block = new_params["down_blocks_0"]["attentions_0"][KV.split("/")[0]]
    for name in ("to_q", "to_out_0"):
        for leaf in block["attn2"][name]:
            assert new_block["attn2"][name][leaf] is block["attn2"][name][leaf]
    assert new_block["attn1"] == block["attn1"]
    assert new_params["conv_in"]["kernel"] is params["conv_in"]["kernel"]
    assert not np.allclose(new_block["attn2"]["to_k"]["kernel"], block["attn2"]["to_k"]["kernel"])
    jitted, _ = jax.jit(lambda p: erase.rece(p, concept, guide, preserve))(params)
    np.testing.assert_array_equal(jitted["conv_in"]["kernel"], params["conv_in"]["kernel"])
    mid = lambda t: t["mid_block"]["attentions_0"]["transformer_blocks_0"]["attn2"]["to_k"]["kernel"]  # noqa: E731
    np.testing.assert_allclose(mid(jitted), mid(new_params), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flavour", ["linen", "nnx", "plain"])
def test_tree_flavours_give_the_same_edit(flavour):
    params = _unet()
    concept, guide, preserve = _keys()
    tree = {
        "linen": lambda t: {"params": t},
        "nnx": lambda t: nnx.State(jax.tree.map(nnx.Param, t)),
        "plain": lambda t: t,
    }[flavour](params)
    new_tree, history = jax.jit(lambda p: erase.rece(p, concept, guide, preserve, epochs=2))(tree)
    assert jax.tree.structure(new_tree) == jax.tree.structure(tree)
    plain, plain_history = erase.rece(params, concept, guide, preserve, epochs=2)
    got = [leaf for _, leaf in erase_paths(new_tree)]
    want = [leaf for _, leaf in erase_paths(plain)]
    assert len(got) == 4
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(history["change"], plain_history["change"], rtol=1e-5)


def test_maxdiffusion_names_and_three_d_kernels():
    """attn2/key and attn2/value kernels of shape (d_in, heads, head_dim) are selected and edited."""
    rng = np.random.default_rng(2)
    k3 = jnp.asarray(rng.normal(size=(D_IN, 2, 8)) / 5, jnp.float32)
    v3 = jnp.asarray(rng.normal(size=(D_IN, 2, 8)) / 5, jnp.float32)
    q3 = jnp.asarray(rng.normal(size=(16, 2, 8)), jnp.float32)
    params = {"block": {"attn2": {"key": {"kernel": k3}, "value": {"kernel": v3}, "query": {"kernel": q3}}}}
    concept, guide, preserve = _keys()
    new, _ = erase.rece(params, concept, guide, preserve, epochs=1)
    assert new["block"]["attn2"]["key"]["kernel"].shape == (D_IN, 2, 8)
    assert new["block"]["attn2"]["query"]["kernel"] is q3
    flat = {"k": k3.reshape(D_IN, 16), "v": v3.reshape(D_IN, 16)}
    want, _ = reference_rece([np.asarray(a, np.float64) for a in flat.values()], concept, guide, preserve, 1)
    assert _rel(np.asarray(new["block"]["attn2"]["key"]["kernel"]).reshape(D_IN, 16), want[0]) <= 1e-4
    assert _rel(np.asarray(new["block"]["attn2"]["value"]["kernel"]).reshape(D_IN, 16), want[1]) <= 1e-4


def test_selectors():
    match = lambda sel, path: sel.search(path) is not None  # noqa: E731
    for path in (
        "params/up_blocks_1/attentions_2/transformer_blocks_0/attn2/to_k/kernel",
        "attn2/value/kernel",
    ):
        assert match(erase.cross_attention_kv, path)
    for path in (
        "x/attn1/to_k/kernel",
        "x/attn2/to_q/kernel",
        "x/attn2/to_k/bias",
        "x/attn2/to_out_0/kernel",
    ):
        assert not match(erase.cross_attention_kv, path)
    assert match(erase.cross_attention_v, "a/attn2/to_v/kernel")
    assert not match(erase.cross_attention_v, "a/attn2/to_k/kernel")
    assert match(erase.cross_attention_k, "a/attn2/key/kernel")
    shapes = erase.sd_cross_attention_shapes()
    assert len(shapes) == 32
    assert sorted({s[1] for s in shapes.values()}) == [320, 640, 1280]
    assert all(match(erase.cross_attention_kv, p) and s[0] == 768 for p, s in shapes.items())


def test_bf16_kernels_keep_their_dtype():
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), _unet())
    concept, guide, preserve = _keys()
    new, _ = erase.rece(params, concept, guide, preserve)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(new))


def _benchmark():
    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "erase.py"
    spec = importlib.util.spec_from_file_location("erase_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sd_shaped_tree_matches_float64_per_layer_reference():
    """Acceptance: 32 kernels 768 → 320/640/1280 at SD v1.4's paths, CLIP-like keys, UCE + 3 rounds."""
    bench = _benchmark()
    params, concept, guide, preserve = bench.sd_problem(0)
    edited, history = jax.jit(lambda p, c, g, q: erase.rece(p, c, g, q, epochs=3, **bench.HYPER))(
        params, concept, guide, preserve
    )
    kernels = {p: k.astype(np.float64) for p, k in bench._kernels(params).items()}
    want, want_embeddings = bench.reference_rece(kernels, concept, guide, preserve, epochs=3)
    kernel_err, edit_err = bench.relative_errors(bench._kernels(edited), want, kernels)
    assert kernel_err <= 1e-4, (kernel_err, edit_err)  # measured 6.0e-5 (1.4e-4 before matmul_minus)
    for got, ref in zip(history["embeddings"], want_embeddings, strict=True):
        assert _rel(got, ref) <= 1e-4


def test_matmul_minus_is_accurate_where_the_residual_cancels():
    """a @ b − c with |a @ b − c| ~ 1e-6 |a @ b|: float32 loses ~all digits, the sliced product keeps them."""
    from unlearnx.erase._linalg import hi_matmul, matmul_minus

    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 200)).astype(np.float32)
    b = rng.normal(size=(200, 7)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    c = (exact + 1e-5 * rng.normal(size=exact.shape)).astype(np.float32)
    want = exact - c.astype(np.float64)
    plain = np.asarray(hi_matmul(jnp.asarray(a), jnp.asarray(b)) - c, np.float64)
    got = np.asarray(jax.jit(matmul_minus)(a, b, c), np.float64)
    assert np.abs(plain - want).max() > 1e-2 * np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_spd_solve_falls_back_to_lu_when_cholesky_fails():
    """A matrix that float32 rounding left indefinite (here: plainly indefinite) is solved by LU instead."""
    from unlearnx.erase._linalg import solve_spd_refined

    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    for eigenvalues in ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, -1e-3, 3.0, 4.0, 5.0, 6.0]):
        lhs = (q * eigenvalues) @ q.T
        rhs = rng.normal(size=(6, 2))
        want = np.linalg.solve(lhs, rhs)
        lhs32, rhs32 = jnp.asarray(lhs, jnp.float32), jnp.asarray(rhs, jnp.float32)
        got = jax.jit(lambda a, b: solve_spd_refined(a, b, lambda x: b - a @ x))(lhs32, rhs32)
        assert np.all(np.isfinite(got))
        assert _rel(got, want) <= 1e-3


class TestErrors:
    params = _unet()
    concept, guide, preserve = _keys()

    def call(self, **kwargs):
        args = {
            "params": self.params,
            "concept": self.concept,
            "guide": self.guide,
            "preserve": self.preserve,
        }
        for name in list(args):
            if name in kwargs:
                args[name] = kwargs.pop(name)
        return erase.rece(args["params"], args["concept"], args["guide"], args["preserve"], **kwargs)

    def test_where_matching_nothing(self):
        with pytest.raises(ValueError, match="selects no kernel.*paths include"):
            self.call(where="*/attn3/*")

    def test_key_dimension_mismatch(self):
        with pytest.raises(ValueError, match="concept_keys has 23 columns .* d_in is 24"):
            self.call(concept=self.concept[:, :23])
        with pytest.raises(ValueError, match="preserve_keys has 3 columns"):
            self.call(preserve=np.ones((2, 3)))

    def test_kernels_of_different_d_in_name_the_path(self):
        with pytest.raises(
            ValueError,
            match=r"share d_in: '.*attn2/to_k/kernel' has shape \(24, 16\), '.*attn1/to_k/kernel' has d_in",
        ):
            self.call(where="re:attn[12]/to_k/kernel$")

    def test_guide_not_aligned(self):
        with pytest.raises(ValueError, match="guide_keys must be aligned.*\\(5, 24\\) vs \\(6, 24\\)"):
            self.call(guide=self.guide[:5])

    def test_empty_erase_set(self):
        with pytest.raises(ValueError, match="concept_keys is empty"):
            self.call(concept=np.zeros((0, D_IN)), guide=np.zeros((0, D_IN)))

    @pytest.mark.parametrize(
        "name", ["erase_scale", "preserve_scale", "round_erase_scale", "round_preserve_scale", "lamb", "reg"]
    )
    def test_negative_scales(self, name):
        with pytest.raises(ValueError, match=f"{name} must be a finite number .*-1"):
            self.call(**{name: -1.0})

    def test_zero_lamb_and_reg(self):
        for name in ("lamb", "round_lamb", "reg"):
            with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
                self.call(**{name: 0.0})

    def test_non_finite_inputs_name_the_path(self):
        params = _unet()
        kernel = np.array(
            params["mid_block"]["attentions_0"]["transformer_blocks_0"]["attn2"]["to_v"]["kernel"]
        )
        kernel[3, 4] = np.nan
        params["mid_block"]["attentions_0"]["transformer_blocks_0"]["attn2"]["to_v"]["kernel"] = kernel
        with pytest.raises(
            ValueError, match="params\\['mid_block/.*/attn2/to_v/kernel'\\] must be finite, found nan"
        ):
            self.call(params=params)
        guide = self.guide.copy()
        guide[0, 0] = np.inf
        with pytest.raises(ValueError, match="guide_keys must be finite, found inf"):
            self.call(guide=guide)

    def test_bad_epochs(self):
        with pytest.raises(ValueError, match=r"epochs must be an integer in \[0, 2147483647\], got -1"):
            self.call(epochs=-1)
        with pytest.raises(TypeError, match="epochs must be an integer, got 1.5"):
            self.call(epochs=1.5)

    def test_selected_leaf_that_is_not_a_kernel(self):
        with pytest.raises(ValueError, match="'conv_in/bias'\\] must be a kernel of shape"):
            self.call(where="conv_in/bias")


@pytest.mark.parametrize("case", ["narrow", "rank_deficient"])
def test_degenerate_kernel_grams(case):
    """Σ d_out < d_in and a rank-deficient S = Σ K Kᵀ with Σ d_out > d_in: λ_reg alone keeps step (a)
    well-posed, and the edit still matches the float64 reference."""
    rng = np.random.default_rng(5)
    if case == "narrow":
        kernels = [rng.normal(size=(D_IN, 4)), rng.normal(size=(D_IN, 6))]
    else:
        basis = rng.normal(size=(D_IN, 5))
        kernels = [basis @ rng.normal(size=(5, 16)), basis @ rng.normal(size=(5, 20))]
    kernels = [np.float32(k / np.sqrt(D_IN)).astype(np.float64) for k in kernels]
    params = {
        f"b{i}": {"attn2": {"to_k": {"kernel": jnp.asarray(k, jnp.float32)}}} for i, k in enumerate(kernels)
    }
    concept, guide, preserve = _keys()
    new, history = erase.rece(params, concept, guide, preserve, epochs=2)
    want, _ = reference_rece(kernels, concept, guide, preserve, 2)
    for i, w in enumerate(want):
        assert _rel(new[f"b{i}"]["attn2"]["to_k"]["kernel"], w) <= 5e-4  # per-kernel composition: 4e-4
    assert np.all(np.isfinite(history["change"]))


def test_serial_lapack_runs_blas_single_threaded_and_restores_the_callers_setting():
    import threadpoolctl

    from unlearnx.erase import _linalg

    def threads():
        return {
            i["filepath"]: i["num_threads"]
            for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"
        }

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with _linalg.serial_lapack():
            inside = threads()
        after = threads()
    assert any("scipy" in path for path in inside)  # SciPy's OpenBLAS: the one jaxlib's LAPACK calls
    assert set(inside.values()) == {1} and set(after.values()) == {2}

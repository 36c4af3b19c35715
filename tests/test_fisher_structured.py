"""Structured per-example squares of ``fisher.diagonal(estimator="empirical")``.

Checked against float64 NumPy per-example gradients derived by hand (dense layers, embeddings with repeated
and clamped ids, a strided, dilated, padded NCHW convolution, dense layers over sequence positions, tied
weights) and against the per-example ``vmap``
path (``structured=False``) on the model zoo: MLP, BatchNorm CNN in eval mode, ResNet-18 on a small input and
the decoder LM, each as a Linen dict, an NNX ``State`` and a plain flat dict, eagerly and under ``jit``, and
on 8 simulated devices (``shard_map``) in a subprocess.
"""

import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from problems import run_on_eight_devices

from unlearnx import _fisher_structured, fisher, models, train
from unlearnx import tree as tree_lib

RTOL, ATOL = 2e-5, 1e-9


def _mlp_reference(x, y, w1, w2):
    """Float64 per-example gradients of softmax(tanh(x w1) w2) cross-entropy (no biases)."""
    h = np.tanh(x @ w1)
    logits = h @ w2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_logits = p - np.eye(w2.shape[1])[y]
    d_h = (d_logits @ w2.T) * (1 - h**2)
    return np.einsum("nd,nh->ndh", x, d_h), np.einsum("nh,nc->nhc", h, d_logits)


def test_dense_layers_match_float64_and_are_structured():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(23, 5)), rng.integers(0, 3, 23)
    w1, w2 = rng.normal(size=(5, 7)) * 0.5, rng.normal(size=(7, 3)) * 0.5
    params = {"w1": jnp.asarray(w1, jnp.float32), "w2": jnp.asarray(w2, jnp.float32)}

    def loss_fn(p, batch):
        # w2 is used transposed and reshaped: the element-preserving chain is followed back to the leaf.
        w2t = p["w2"].T.reshape(3, 7)
        logits = jnp.tanh(batch["x"] @ p["w1"]) @ w2t.T
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1)[:, 0]

    batches = [
        {"x": jnp.asarray(x[s : s + 8], jnp.float32), "y": jnp.asarray(y[s : s + 8])} for s in (0, 8, 16)
    ]
    plan = _fisher_structured.analyse(loss_fn, params, jax.tree.map(lambda a: a[0], batches[0]))
    assert sorted(site.kind for site in plan.sites.values()) == ["dense", "dense"] and not plan.fallback
    got = fisher.diagonal(loss_fn, params, batches, chunk_size=3)
    g1, g2 = _mlp_reference(x, y, w1, w2)
    np.testing.assert_allclose(got["w1"], (g1**2).mean(0), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["w2"], (g2**2).mean(0), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["fill", "clip"])
def test_embedding_with_repeated_ids_matches_float64(mode):
    """ℓᵢ = Σₜ cᵢₜ E[idsᵢₜ]·v: ∂ℓᵢ/∂E[r] = (Σ_{t: idsᵢₜ = r} cᵢₜ) v, summed over positions before squaring."""
    rng = np.random.default_rng(1)
    vocab, width, size, length = 6, 4, 9, 5
    ids = rng.integers(0, vocab, (size, length))
    if mode == "clip":
        ids[0, :2] = [vocab + 3, -2]  # clamped to the last and first rows
    c, v = rng.normal(size=(size, length)), rng.normal(size=width)
    table = rng.normal(size=(vocab, width))

    def loss_fn(p, batch):
        rows = jnp.take(p["E"], batch["ids"], axis=0, mode=mode)
        return jnp.einsum("btd,bt,d->b", rows, batch["c"], jnp.asarray(v, jnp.float32))

    params = {"E": jnp.asarray(table, jnp.float32)}
    batches = [
        {"ids": jnp.asarray(ids[s : s + 4]), "c": jnp.asarray(c[s : s + 4], jnp.float32)} for s in (0, 4, 8)
    ]
    plan = _fisher_structured.analyse(loss_fn, params, jax.tree.map(lambda a: a[0], batches[0]))
    assert [site.kind for site in plan.sites.values()] == ["embed"]
    got = fisher.diagonal(loss_fn, params, batches)
    rows = np.clip(ids, 0, vocab - 1)
    per_example = np.zeros((size, vocab, width))
    for i in range(size):
        for t in range(length):
            per_example[i, rows[i, t]] += c[i, t] * v
    np.testing.assert_allclose(got["E"], (per_example**2).mean(0), rtol=RTOL, atol=ATOL)


def test_convolution_matches_float64():
    """NCHW/OIHW layout, strides (2, 1), kernel dilation (1, 2), asymmetric padding: per offset k,
    ∂ℓᵢ/∂W[o, c, k] = Σₚ x̃ᵢ[c, p·s + k·r] cᵢ[o, p] with x̃ the padded input and ℓᵢ = Σ cᵢ ∘ conv(xᵢ, W)."""
    rng = np.random.default_rng(4)
    size, strides, dilation, padding = 7, (2, 1), (1, 2), ((1, 0), (2, 1))
    x, w = rng.normal(size=(size, 2, 6, 5)), rng.normal(size=(3, 2, 2, 3))

    def conv(inputs, kernel):
        return jax.lax.conv_general_dilated(
            inputs,
            kernel,
            strides,
            padding,
            rhs_dilation=dilation,
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )

    out_shape = conv(jnp.zeros((1, 2, 6, 5)), jnp.zeros((3, 2, 2, 3))).shape[1:]
    c = rng.normal(size=(size, *out_shape))
    loss_fn = lambda p, batch: jnp.sum(conv(batch["x"], p["w"]) * batch["c"], axis=(1, 2, 3))
    params = {"w": jnp.asarray(w, jnp.float32)}
    batches = [
        {"x": jnp.asarray(x[s : s + 4], jnp.float32), "c": jnp.asarray(c[s : s + 4], jnp.float32)}
        for s in (0, 4)
    ]
    plan = _fisher_structured.analyse(loss_fn, params, jax.tree.map(lambda a: a[0], batches[0]))
    assert [site.kind for site in plan.sites.values()] == ["conv"]
    padded = np.pad(x, ((0, 0), (0, 0), *padding))
    grads = np.zeros((size, *w.shape))
    for kh in range(w.shape[2]):
        for kw in range(w.shape[3]):
            rows = slice(kh * dilation[0], kh * dilation[0] + (out_shape[1] - 1) * strides[0] + 1, strides[0])
            cols = slice(kw * dilation[1], kw * dilation[1] + (out_shape[2] - 1) * strides[1] + 1, strides[1])
            grads[:, :, :, kh, kw] = np.einsum("bchw,bohw->boc", padded[:, :, rows, cols], c)
    got = fisher.diagonal(loss_fn, params, batches)
    np.testing.assert_allclose(got["w"], (grads**2).mean(0), rtol=RTOL, atol=ATOL)


def test_sequence_dense_and_tied_weights_fall_back_exactly():
    """Over positions gᵢ = Σₜ xᵢₜ ⊗ δᵢₜ is summed before squaring; a weight used twice sums its uses."""
    rng = np.random.default_rng(2)
    x, c = rng.normal(size=(10, 3, 4)), rng.normal(size=(10, 3, 4))
    w = rng.normal(size=(4, 4)) * 0.5

    def loss_fn(p, batch):  # ℓᵢ = Σₜ cᵢₜ·(xᵢₜ W W): W twice, positions t
        return jnp.einsum("btd,btd->b", batch["x"] @ p["w"] @ p["w"], batch["c"])

    def seq_loss(p, batch):  # ℓᵢ = Σₜ cᵢₜ·(xᵢₜ W)
        return jnp.einsum("btd,btd->b", batch["x"] @ p["w"], batch["c"])

    params = {"w": jnp.asarray(w, jnp.float32)}
    batches = [
        {"x": jnp.asarray(x[s : s + 5], jnp.float32), "c": jnp.asarray(c[s : s + 5], jnp.float32)}
        for s in (0, 5)
    ]
    example = jax.tree.map(lambda a: a[0], batches[0])
    assert _fisher_structured.analyse(loss_fn, params, example) is None
    assert _fisher_structured.analyse(seq_loss, params, example) is None
    tied = np.einsum("btd,bte->bde", x, c @ w.T) + np.einsum("btd,bte->bde", x @ w, c)
    sequence = np.einsum("btd,bte->bde", x, c)
    for fn, grads in ((loss_fn, tied), (seq_loss, sequence)):
        got = fisher.diagonal(fn, params, batches)
        np.testing.assert_allclose(got["w"], (grads**2).mean(0), rtol=RTOL, atol=ATOL)


def _classifier_loss(model):
    def loss_fn(variables, batch):
        return train.example_losses(model.apply(variables, batch["x"]), batch)

    return loss_fn


def _lm_loss(model):
    def loss_fn(variables, batch):
        log_probs = jax.nn.log_softmax(model.apply(variables, batch["x"]))
        return -jnp.take_along_axis(log_probs, batch["y"][..., None], -1)[..., 0].sum(-1)

    return loss_fn


def zoo(name):
    """``(variables, loss_fn, batches, structured leaf paths)`` of one small model of the zoo."""
    rng = np.random.default_rng(3)
    if name == "lm":
        model = models.decoder_lm(23, max_len=6, d_model=8, num_layers=1, num_heads=2, mlp_ratio=2)
        arrays = {"x": rng.integers(0, 6, (10, 6)), "y": rng.integers(0, 23, (10, 6))}
        loss_fn, structured = _lm_loss(model), {"params/embed/embedding", "params/pos_embed/embedding"}
    else:
        shape, model, structured = {
            "mlp": (
                (4, 4, 1),
                models.mlp((4, 4, 1), 5, hidden=(8, 8)),
                {f"params/Dense_{i}/kernel" for i in range(3)},
            ),
            "cnn": (
                (8, 8, 3),
                models.cnn((8, 8, 3), 5, channels=(4, 8), hidden=8),
                {f"params/{layer}/kernel" for layer in ("Conv_0", "Conv_1", "Dense_0", "Dense_1")},
            ),
            "resnet": ((8, 8, 3), models.resnet18((8, 8, 3), 5, width=4), None),  # every kernel
        }[name]
        size = 6 if name == "resnet" else 10
        arrays = {"x": rng.normal(size=(size, *shape)).astype(np.float32), "y": rng.integers(0, 5, size)}
        loss_fn = _classifier_loss(model)
    variables = model.init(jax.random.key(0))
    if structured is None:
        structured = {path for path, _ in tree_lib.leaves_with_paths(variables) if path.endswith("/kernel")}
    if "batch_stats" in variables:  # eval-mode BatchNorm with statistics away from their initial values
        variables["batch_stats"] = jax.tree.map(lambda a: a + 0.25, variables["batch_stats"])
    half = len(arrays["x"]) // 2 + 1  # a short second batch
    batches = [{k: a[:half] for k, a in arrays.items()}, {k: a[half:] for k, a in arrays.items()}]
    return variables, loss_fn, batches, structured


def flavour(kind, variables, loss_fn):
    """The same model as a Linen dict, an NNX ``State`` of ``Param``/``BatchStat`` or a flat plain dict."""
    if kind == "linen":
        return variables, loss_fn, lambda tree: tree
    if kind == "nnx":
        wrap = {k: (nnx.BatchStat if k == "batch_stats" else nnx.Param) for k in variables}
        state = nnx.State({k: jax.tree.map(wrap[k], v) for k, v in variables.items()})
        return state, lambda s, batch: loss_fn(nnx.to_pure_dict(s), batch), nnx.to_pure_dict
    flat = dict(tree_lib.leaves_with_paths(variables))

    def nest(flat_tree):
        out = {}
        for path, leaf in flat_tree.items():
            *parents, last = path.split("/")
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = leaf
        return out

    return flat, lambda p, batch: loss_fn(nest(p), batch), nest


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linen", "nnx", "plain"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "lm"])
def test_zoo_matches_vmap_path(name, kind):
    variables, loss_fn, batches, structured = zoo(name)
    params, loss_fn, to_linen = flavour(kind, variables, loss_fn)
    plan = _fisher_structured.analyse(loss_fn, params, jax.tree.map(lambda a: a[0], batches[0]))
    paths = [path for path, _ in tree_lib.leaves_with_paths(to_linen(params))]
    assert {paths[leaf] for leaf in plan.sites} == structured
    fast = fisher.diagonal(loss_fn, params, batches, chunk_size=4)
    exact = fisher.diagonal(loss_fn, params, batches, chunk_size=4, structured=False)
    assert jax.tree.structure(fast) == jax.tree.structure(params)
    for path, a, b in zip(paths, jax.tree.leaves(fast), jax.tree.leaves(exact), strict=True):
        assert a.dtype == jnp.float32
        scale = float(jnp.max(b))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale, err_msg=path)
    assert any(float(jnp.max(fast_leaf)) > 0 for fast_leaf in jax.tree.leaves(fast))


@pytest.mark.parametrize("name", ["mlp", "lm"])
def test_jitted_matches_eager(name):
    variables, loss_fn, batches, _ = zoo(name)
    eager = fisher.diagonal(loss_fn, variables, batches, chunk_size=3)
    jitted = jax.jit(lambda p, bs: fisher.diagonal(loss_fn, p, bs, chunk_size=3))(variables, batches)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_unused_leaf_is_zero_and_bad_structured_flag():
    params = {"w": jnp.ones((3, 2)), "unused": jnp.ones(4)}
    loss_fn = lambda p, batch: jnp.sum(batch["x"] @ p["w"], axis=1)
    batches = [{"x": jnp.arange(6.0).reshape(2, 3)}]
    got = fisher.diagonal(loss_fn, params, batches)
    np.testing.assert_array_equal(got["unused"], np.zeros(4))
    np.testing.assert_allclose(
        got["w"], np.repeat(np.mean(np.arange(6.0).reshape(2, 3) ** 2, 0)[:, None], 2, 1)
    )
    with pytest.raises(TypeError, match="structured must be a Python bool"):
        fisher.diagonal(loss_fn, params, batches, structured=1)


SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    sys.path.insert(0, sys.argv[2])
    from test_fisher_structured import zoo
    from unlearnx import fisher, parallel

    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.data_mesh()
    out = {}
    for name in ("mlp", "lm"):
        variables, loss_fn, batches, _ = zoo(name)
        batch = {k: np.concatenate([b[k] for b in batches])[:8] for k in batches[0]}

        def per_device(p, b, loss_fn=loss_fn):
            return fisher.diagonal(loss_fn, p, [b], chunk_size=1, axis_name="data")

        mapped = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
        for i, leaf in enumerate(jax.tree.leaves(mapped(variables, batch))):
            out[f"{name}_{i}"] = np.asarray(leaf)
    np.savez(sys.argv[1], **out)
    """
)


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
    output = tmp_path / "eight.npz"
    run_on_eight_devices(SCRIPT, output, os.path.dirname(__file__))
    eight = np.load(output)
    for name in ("mlp", "lm"):
        variables, loss_fn, batches, _ = zoo(name)
        batch = {k: np.concatenate([b[k] for b in batches])[:8] for k in batches[0]}
        one = fisher.diagonal(loss_fn, variables, [batch], structured=False)
        for i, leaf in enumerate(jax.tree.leaves(one)):
            np.testing.assert_allclose(eight[f"{name}_{i}"], leaf, rtol=1e-4, atol=1e-6 * float(np.max(leaf)))


def test_uses_inside_scan_and_custom_jvp_fall_back_and_sampled_labels_match():
    """Parameters consumed inside ``scan`` or a ``custom_jvp`` function are not matched (exact fallback);
    random labels drawn inside the loss (``sampled_label_loss``) replay identically in the interpreter."""
    rng = np.random.default_rng(5)
    params = {
        "w": jnp.asarray(rng.normal(size=(4, 4)) * 0.5, jnp.float32),
        "stack": jnp.asarray(rng.normal(size=(2, 4, 4)) * 0.5, jnp.float32),
        "gate": jnp.asarray(rng.normal(size=4), jnp.float32),
        "head": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
    }

    def logits_fn(p, batch):
        h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), batch["x"] @ p["w"], p["stack"])
        return (h * jax.nn.relu(p["gate"])) @ p["head"]  # relu is a custom_jvp function of gate

    loss_fn = fisher.sampled_label_loss(logits_fn, jax.random.key(0))
    batches = [{"x": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)} for _ in range(2)]
    plan = _fisher_structured.analyse(loss_fn, params, jax.tree.map(lambda a: a[0], batches[0]))
    leaves = sorted(params)  # a dict flattens in key order
    assert sorted(leaves[i] for i in plan.sites) == ["head", "w"]
    assert sorted(leaves[i] for i in plan.fallback) == ["gate", "stack"]
    fast = fisher.diagonal(loss_fn, params, batches, chunk_size=4)
    exact = fisher.diagonal(loss_fn, params, batches, chunk_size=4, structured=False)
    for key in params:
        np.testing.assert_allclose(fast[key], exact[key], rtol=1e-5, atol=1e-9, err_msg=key)

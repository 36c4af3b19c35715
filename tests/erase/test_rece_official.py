"""unlearnx.erase.rece reproduces the official RECE pipeline (CharlesGong12/RECE) on identical inputs.

The reference below is written from the official code's formulas, in its PyTorch layout W = Kᵀ and float64:

* UCE (``erase_methods/train_uce.py``): per layer, mat1 = λW + α Σ v kᵀ + β Σ (W p) pᵀ, mat2 = λI + α Σ k kᵀ
  + β Σ p pᵀ, W ← mat1 mat2⁻¹, with v = W g ("replace" targets), the erase rows k of each concept prompt
  taken from its last word token (attention-mask sum − 2) to the end, the guide's rows likewise, the longer
  tail trimmed so they align; every row of each retain prompt ('' for nudity) preserved;
* the derived embedding (``close_form_emb_regzero``): c′ = c ((λ_reg I + Σ W′ᵀW′)⁻¹ Σ W′ᵀW)ᵀ on all rows;
* each round (``edit_model_adversarial``): the UCE formula on the current weights with the keys c′ (all
  rows), targets W′ g on all rows of the guide " ", and the retain prompt " " once per erased concept.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearnx import erase

ROWS, D_IN, WIDTHS = 16, 48, (20, 36, 20, 36)
UCE = {"lamb": 0.5, "erase_scale": 1.0, "preserve_scale": 1.0}  # train_uce.py: '' only → β = 1
NAMES = ("to_k", "to_v")
ROUND = {"lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1, "reg": 0.1}  # train.py defaults


def _prompt(rng, bos, pad, words):
    """CLIP-like padded prompt rows: BOS, ``words`` word rows, EOS, then padding correlated with EOS."""
    rows = [bos, *rng.normal(size=(words, D_IN))]
    eos = pad + 0.5 * rng.normal(size=D_IN)
    rows += [eos + 0.2 * rng.normal(size=D_IN) for _ in range(ROWS - 1 - words)]
    return np.asarray(rows, np.float32).astype(np.float64)


def _problem(seed=0, concepts=1):
    rng = np.random.default_rng(seed)
    bos, pad = rng.normal(size=D_IN) * 3, rng.normal(size=D_IN)
    words = [1, 3][:concepts]
    concept = [_prompt(rng, bos, pad, w) for w in words]  # e.g. "nudity"; "bodily fluids"
    space, empty = _prompt(rng, bos, pad, 0), _prompt(rng, bos, pad, 0)  # " " and ""
    tokens = [w + 2 for w in words]  # BOS + words + EOS
    kernels = [np.float32(rng.normal(size=(D_IN, w)) / np.sqrt(D_IN)).astype(np.float64) for w in WIDTHS]
    return kernels, concept, tokens, space, empty


def official_rows(old, new, old_tokens, new_tokens):
    """train_uce.py's slicing: from the last word token (mask sum − 2), the longer tail trimmed."""
    final, final_new = old_tokens - 2, new_tokens - 2
    farthest = max(final, final_new)
    return old[final : len(old) - max(0, farthest - final)], new[
        final_new : len(new) - max(0, farthest - final_new)
    ]


def official_edit(weights, pairs, retain, *, lamb, erase_scale, preserve_scale):
    """The official UCE / adversarial edit of every torch-layout W (d_out, d_in), float64."""
    edited = []
    for w in weights:
        mat1, mat2 = lamb * w, lamb * np.eye(w.shape[1])
        for old, new in pairs:
            values = new @ w.T  # layer(new_emb), "replace"
            mat1 = mat1 + erase_scale * values.T @ old
            mat2 = mat2 + erase_scale * old.T @ old
        for text in retain:
            mat1 = mat1 + preserve_scale * (text @ w.T).T @ text
            mat2 = mat2 + preserve_scale * text.T @ text
        edited.append(mat1 @ np.linalg.inv(mat2))
    return edited


def official_embedding(current, original, concept, reg):
    """close_form_emb_regzero: c′ = c ((λ_reg I + Σ W′ᵀW′)⁻¹ Σ W′ᵀW)ᵀ."""
    mat1 = reg * np.eye(concept.shape[1]) + sum(w.T @ w for w in current)
    mat2 = sum(w.T @ o for w, o in zip(current, original, strict=True))
    return concept @ (np.linalg.inv(mat1) @ mat2).T


def official_rece(kernels, concepts, tokens, space, empty, epochs):
    """UCE (train_uce.py, guide " ", retain ['']) then ``epochs`` rounds of train.py; Flax-layout output."""
    original = [k.T for k in kernels]
    pairs = [official_rows(c, space, t, 2) for c, t in zip(concepts, tokens, strict=True)]
    current = official_edit(original, pairs, [empty], **UCE)
    embeddings = []
    for _ in range(epochs):
        adversarial = [official_embedding(current, original, c, ROUND["reg"]) for c in concepts]
        embeddings.append(adversarial)
        scales = {k: ROUND[k] for k in ("lamb", "erase_scale", "preserve_scale")}
        retain = [space for _ in concepts]  # retain_texts = [' ' for _ in old_texts]
        current = official_edit(current, [(a, space) for a in adversarial], retain, **scales)
    return [w.T for w in current], embeddings


def _tree(kernels):
    """Two cross-attention blocks, each with a to_k and a to_v kernel (in ``kernels``' order)."""
    pairs = [kernels[i : i + 2] for i in range(0, len(kernels), 2)]
    return {
        f"block_{b}": {
            "attn2": {
                name: {"kernel": jnp.asarray(k, jnp.float32)} for name, k in zip(NAMES, pair, strict=True)
            }
        }
        for b, pair in enumerate(pairs)
    }


def _leaves(tree):
    return [
        np.asarray(tree[f"block_{i // 2}"]["attn2"][NAMES[i % 2]]["kernel"], np.float64) for i in range(4)
    ]


def library_rece(kernels, concepts, tokens, space, empty, epochs, *, jit=True):
    """The official recipe through the public API: last_word_rows for the initial edit, full rows after."""
    rows = [
        erase.last_word_rows(c, space, concept_tokens=t, guide_tokens=2)
        for c, t in zip(concepts, tokens, strict=True)
    ]
    k = len(concepts)

    def run(params, concept, guide, preserve, erase_rows, guide_rows, initial_preserve):
        return erase.rece(
            params,
            concept,
            guide,
            preserve,
            initial_concept_keys=erase_rows,
            initial_guide_keys=guide_rows,
            initial_preserve_keys=initial_preserve,
            epochs=epochs,
            reg=ROUND["reg"],
            erase_scale=UCE["erase_scale"],
            preserve_scale=UCE["preserve_scale"],
            lamb=UCE["lamb"],
            round_erase_scale=ROUND["erase_scale"],
            round_preserve_scale=k * ROUND["preserve_scale"],  # β counts " " once; the official code k times
            round_lamb=ROUND["lamb"],
        )

    args = (
        _tree(kernels),
        np.concatenate(concepts),
        np.concatenate([space] * k),
        space,
        np.concatenate([r for r, _ in rows]),
        np.concatenate([g for _, g in rows]),
        empty,
    )
    return (jax.jit(run) if jit else run)(*args)


def _rel(got, want):
    return np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)


@pytest.mark.parametrize(("concepts", "epochs"), [(1, 0), (1, 1), (1, 3), (2, 2)])
def test_matches_the_official_pipeline_in_float64(concepts, epochs):
    kernels, concept, tokens, space, empty = _problem(concepts=concepts)
    want, want_embeddings = official_rece(kernels, concept, tokens, space, empty, epochs)
    new, history = library_rece(kernels, concept, tokens, space, empty, epochs)
    for got, ref, old in zip(_leaves(new), want, kernels, strict=True):
        assert _rel(got, ref) <= 1e-4
        assert _rel(got - old, ref - old) <= 1e-4  # the edit itself, not only the kernel
    assert history["embeddings"].shape == (epochs, concepts * ROWS, D_IN)
    for got, ref in zip(history["embeddings"], want_embeddings, strict=True):
        assert _rel(got, np.concatenate(ref)) <= 1e-4


def test_all_rows_recipe_is_not_the_official_pipeline():
    """Keying the initial edit on all rows (the old single-pair call) gives a visibly different edit."""
    kernels, concept, tokens, space, empty = _problem()
    want, _ = official_rece(kernels, concept, tokens, space, empty, 3)
    old_recipe, _ = erase.rece(
        _tree(kernels), concept[0], space, space, epochs=3, preserve_scale=1.0, lamb=0.5, reg=0.1
    )
    assert max(_rel(g - k, w - k) for g, w, k in zip(_leaves(old_recipe), want, kernels, strict=True)) > 0.05


def test_initial_rows_default_to_the_round_rows():
    kernels, concept, _, space, empty = _problem()
    default, _ = erase.rece(_tree(kernels), concept[0], space, empty, epochs=2)
    explicit, _ = erase.rece(
        _tree(kernels),
        concept[0],
        space,
        empty,
        epochs=2,
        initial_concept_keys=concept[0],
        initial_guide_keys=space,
        initial_preserve_keys=empty,
    )
    for a, b in zip(_leaves(default), _leaves(explicit), strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_initial_preserve_rows():
    """Zero initial preserve rows (UCE without '') differ from the default (the round's preserve rows)."""
    kernels, concept, _, space, empty = _problem()
    rows, guide = erase.last_word_rows(concept[0], space, concept_tokens=3, guide_tokens=2)
    none, _ = erase.rece(
        _tree(kernels),
        concept[0],
        space,
        empty,
        epochs=0,
        initial_concept_keys=rows,
        initial_guide_keys=guide,
        initial_preserve_keys=np.zeros((0, D_IN)),
    )
    want = official_edit([k.T for k in kernels], [(rows, guide)], [], **UCE)
    for got, ref in zip(_leaves(none), want, strict=True):
        assert _rel(got, ref.T) <= 1e-4


@pytest.mark.parametrize(("t_c", "t_g"), [(3, 2), (2, 2), (5, 3), (3, 6), (ROWS, 2)])
def test_last_word_rows_follow_the_official_slicing(t_c, t_g):
    rng = np.random.default_rng(t_c * 10 + t_g)
    concept, guide = rng.normal(size=(ROWS, D_IN)), rng.normal(size=(ROWS, D_IN))
    rows, targets = erase.last_word_rows(concept, guide, concept_tokens=t_c, guide_tokens=t_g)
    want_rows, want_targets = official_rows(concept, guide, t_c, t_g)
    np.testing.assert_array_equal(rows, want_rows.astype(np.float32))
    np.testing.assert_array_equal(targets, want_targets.astype(np.float32))
    assert rows.shape == (ROWS - max(t_c, t_g) + 2, D_IN)


class TestErrors:
    kernels, concept, tokens, space, empty = _problem()

    def call(self, **kwargs):
        return erase.rece(_tree(self.kernels), self.concept[0], self.space, self.empty, **kwargs)

    def test_initial_keys_must_come_in_pairs(self):
        with pytest.raises(ValueError, match="initial_concept_keys was given without initial_guide_keys"):
            self.call(initial_concept_keys=self.concept[0])
        with pytest.raises(ValueError, match="initial_guide_keys was given without initial_concept_keys"):
            self.call(initial_guide_keys=self.space)

    def test_initial_keys_must_be_aligned(self):
        with pytest.raises(ValueError, match="initial_guide_keys must be aligned with initial_concept_keys"):
            self.call(initial_concept_keys=self.concept[0][1:], initial_guide_keys=self.space)

    def test_initial_keys_shapes_and_values(self):
        with pytest.raises(ValueError, match="initial_preserve_keys has 3 columns"):
            self.call(initial_preserve_keys=np.ones((2, 3)))
        bad = self.space.copy()
        bad[2, 1] = np.nan
        with pytest.raises(ValueError, match="initial_guide_keys must be finite, found nan"):
            self.call(initial_concept_keys=self.concept[0], initial_guide_keys=bad)

    def test_last_word_rows_errors(self):
        with pytest.raises(ValueError, match="concept_tokens must be .*got 1"):
            erase.last_word_rows(self.concept[0], self.space, concept_tokens=1, guide_tokens=2)
        with pytest.raises(ValueError, match="guide_tokens must be .*got 17"):
            erase.last_word_rows(self.concept[0], self.space, concept_tokens=3, guide_tokens=ROWS + 1)
        with pytest.raises(TypeError, match="concept_tokens must be an integer"):
            erase.last_word_rows(self.concept[0], self.space, concept_tokens=2.5, guide_tokens=2)
        with pytest.raises(ValueError, match="guide_keys must have concept_keys' shape"):
            erase.last_word_rows(self.concept[0], self.space[1:], concept_tokens=3, guide_tokens=2)
        with pytest.raises(ValueError, match="concept_keys must be a non-empty"):
            erase.last_word_rows(np.zeros(3), np.zeros(3), concept_tokens=2, guide_tokens=2)

"""The captioned-shapes generator: determinism, captions that agree with the labels and pixels, the
tokenizer's padding, and clear errors."""

import numpy as np
import pytest

from unlearnx import data
from unlearnx.data import shapes


def test_same_seed_same_data_other_seed_other_data():
    a = data.captioned_shapes(64, seed=3)
    b = data.captioned_shapes(64, seed=3)
    c = data.captioned_shapes(64, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (64, 16, 16, 3) and a.images.dtype == np.float32
    assert a.tokens.shape == (64, 16) and a.tokens.dtype == np.int32
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0


def test_captions_agree_with_labels():
    d = data.captioned_shapes(300, seed=0)
    sizes, positions = list(shapes.SIZES), list(shapes.POSITIONS)
    phrase = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
    for i, caption in enumerate(d.captions):
        words = caption.split()
        assert d.shapes[d.shape[i]] in words  # the shape is always named
        for other in set(d.shapes) - {d.shapes[d.shape[i]]}:
            assert other not in words
        for other in set(d.colours) - {d.colours[d.colour[i]]}:
            assert other not in words
        for other in set(sizes) - {sizes[d.size[i]]}:
            assert other not in words
        for name, text in phrase.items():
            assert (text in caption) <= (name == positions[d.position[i]])
        assert d.tokenizer.decode(d.tokens[i]) == caption
    optional = {word: np.mean([word in c.split() for c in d.captions]) for word in ("a", *d.colours)}
    assert 0.5 < optional["a"] < 0.9  # the article is optional (70%)
    assert 0.1 < sum(optional[c] for c in d.colours) < 1.0  # colours named 80% of the time
    assert np.array_equal(d.label, d.shape * len(d.colours) + d.colour)


def test_pixels_carry_the_colour_and_the_shape_area():
    """The brightest pixel of every image has the caption's colour; a large circle covers π r² pixels."""
    d = data.captioned_shapes(100, seed=1, keep={"colour": 1.0})
    for i in range(len(d)):
        pixels = d.images[i].reshape(-1, 3)
        background = np.median(d.images[i][0], axis=0)  # the top row is mostly background
        brightest = pixels[np.argmax(np.abs(pixels - background).sum(1))]
        nearest = min(d.colours, key=lambda c: np.abs(np.asarray(shapes.COLOURS[c]) - brightest).sum())
        assert nearest == d.colours[d.colour[i]], (i, d.captions[i])
    circle = shapes.render("circle", (1, 1, 1), radius=5.0, centre=(8, 8), background=(0, 0, 0))
    np.testing.assert_allclose(circle[..., 0].sum(), np.pi * 25, rtol=0.02)
    square = shapes.render("square", (1, 1, 1), radius=5.0, centre=(8, 8), background=(0, 0, 0))
    np.testing.assert_allclose(square[..., 0].sum(), (2 * 0.82 * 5) ** 2, rtol=0.07)  # ¼-px sampling
    triangle = shapes.render("triangle", (1, 1, 1), radius=4.0, centre=(8, 8), background=(0, 0, 0))
    np.testing.assert_allclose(triangle[..., 0].sum(), 3 * np.sqrt(3) / 4 * 16, rtol=0.03)  # (3√3/4) r²


def test_tokenizer_pads_with_bos_eos_and_pad():
    tok = shapes.Tokenizer(["a", "red", "circle"], length=6)
    np.testing.assert_array_equal(tok.encode("a red circle"), [1, 3, 4, 5, 2, 0])
    np.testing.assert_array_equal(tok.encode(""), [1, 2, 0, 0, 0, 0])  # the empty (unconditional) prompt
    np.testing.assert_array_equal(tok.encode(["circle", "red"]), [[1, 5, 2, 0, 0, 0], [1, 4, 2, 0, 0, 0]])
    assert tok.vocab_size == 6
    with pytest.raises(ValueError, match="'blue'"):
        tok.encode("a blue circle")
    with pytest.raises(ValueError, match="at most 4"):
        tok.encode("a red circle a red")
    with pytest.raises(ValueError, match="duplicate"):
        shapes.Tokenizer(["a", "a"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="hexagon"):
        data.captioned_shapes(4, shapes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="num_examples"):
        data.captioned_shapes(0)
    with pytest.raises(ValueError, match="keep"):
        data.captioned_shapes(4, keep={"colour": 1.5})
    with pytest.raises(ValueError, match="image_size"):
        data.captioned_shapes(4, image_size=4)

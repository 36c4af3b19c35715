"""Captioned coloured shapes: a generated text-to-image data set for concept-erasure testbeds.

Each example is a small RGB image of one shape (circle, square, triangle, star, …) in one colour (red, green,
blue, yellow, …) of a size (small/large) at a position (left/middle/right) on a random dark background, with
a templated caption that names the shape and, at random, the article, size, colour and position:

    "a small red circle on the left",  "blue square",  "a star in the middle",  "large yellow triangle"

Captions are tokenised word by word and padded to a fixed length as Stable Diffusion pads CLIP prompts to 77:

    tokens = [<bos>, w₁, …, wₖ, <eos>, <pad>, …, <pad>]        (length ``length``, 16 by default)

so a prompt's embedding has rows for BOS, its words, EOS and padding, and (with a causal text encoder) the
padding rows carry the whole prompt, as in SD. The empty caption ``""`` is ``[<bos>, <eos>, <pad>, …]``,
the unconditional prompt of classifier-free guidance.

Shapes are rasterised with 4×4 supersampling (anti-aliased coverage ``a``), and a pixel is
``background·(1 − a) + colour·a``. Everything is determined by the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = [
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "CaptionedShapes",
    "Tokenizer",
    "captioned_shapes",
    "render",
]

#: Colour name → RGB in [0, 1].
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.1, 0.1),
    "green": (0.1, 0.85, 0.15),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.1, 0.9),
    "cyan": (0.1, 0.9, 0.9),
    "white": (0.95, 0.95, 0.95),
    "orange": (1.0, 0.55, 0.05),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
#: Size name → shape radius in units of image_size / 16 pixels.
SIZES: dict[str, float] = {"small": 4.5, "large": 6.0}
#: Position name → horizontal centre offset in units of image_size / 16 pixels.
POSITIONS: dict[str, float] = {"left": -2.0, "middle": 0.0, "right": 2.0}
_POSITION_PHRASE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
_SUPERSAMPLE = 4


class Tokenizer:
    """A word-level tokenizer over a fixed vocabulary, padding to ``length`` tokens.

    Token ids: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, then the words in the order given.

    Args:
        words: The caption vocabulary (no duplicates, no special tokens).
        length: Padded token length L (BOS and EOS included), at least 2.
    """

    def __init__(self, words: Sequence[str], length: int = 16) -> None:
        words = list(words)
        if len(set(words)) != len(words):
            raise ValueError(f"Tokenizer: duplicate words in {words}")
        if length < 2:
            raise ValueError(f"Tokenizer: length must be >= 2 (BOS and EOS), got {length}")
        self.vocab = [PAD, BOS, EOS, *words]
        self.ids = {word: index for index, word in enumerate(self.vocab)}
        self.length = int(length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, captions: str | Sequence[str]) -> np.ndarray:
        """Tokenises one caption (→ ``[L]``) or a list of captions (→ ``[N, L]``), int32.

        Raises:
            ValueError: A word outside the vocabulary, or a caption longer than ``L − 2`` words.
        """
        single = isinstance(captions, str)
        rows = []
        for caption in [captions] if single else captions:
            words = caption.split()
            if len(words) > self.length - 2:
                raise ValueError(
                    f"caption {caption!r} has {len(words)} words; at most {self.length - 2} fit in "
                    f"length {self.length}"
                )
            unknown = [word for word in words if word not in self.ids]
            if unknown:
                raise ValueError(f"caption {caption!r}: words {unknown} are not in the vocabulary")
            ids = [self.ids[BOS], *(self.ids[word] for word in words), self.ids[EOS]]
            rows.append(ids + [self.ids[PAD]] * (self.length - len(ids)))
        array = np.asarray(rows, np.int32).reshape(-1, self.length)
        return array[0] if single else array

    def decode(self, tokens: np.ndarray) -> str:
        """The words of one token row, special tokens dropped."""
        return " ".join(self.vocab[i] for i in np.asarray(tokens).tolist() if i > 2)


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionedShapes:
    """A generated captioned-image set.

    Attributes:
        images: ``float32 [N, H, W, 3]`` in [0, 1].
        tokens: ``int32 [N, L]`` caption tokens.
        captions: The N caption strings.
        shape: ``int32 [N]`` index into ``shapes``.
        colour: ``int32 [N]`` index into ``colours``.
        size: ``int32 [N]`` index into ``SIZES`` (0 small, 1 large).
        position: ``int32 [N]`` index into ``POSITIONS`` (0 left, 1 middle, 2 right).
        shapes: Shape names.
        colours: Colour names.
        tokenizer: The tokenizer that made ``tokens``.
    """

    images: np.ndarray
    tokens: np.ndarray
    captions: tuple[str, ...]
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    position: np.ndarray
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    tokenizer: Tokenizer

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def label(self) -> np.ndarray:
        """The joint class ``shape · n_colours + colour``, int32 ``[N]``."""
        return (self.shape * len(self.colours) + self.colour).astype(np.int32)


def _polygon(points: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for every (x, y); ``points`` is ``[V, 2]``."""
    inside = np.zeros(x.shape, bool)
    for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0), strict=True):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


def _star_points(radius: float) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _mask(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Whether offsets (x, y) from the centre (y pointing down) lie in ``shape`` of ``radius``."""
    if shape == "circle":
        return x**2 + y**2 <= radius**2
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.82 * radius
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= radius
    if shape == "cross":
        arm = 0.36 * radius
        return ((np.abs(x) <= arm) & (np.abs(y) <= radius)) | ((np.abs(y) <= arm) & (np.abs(x) <= radius))
    if shape == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        points = np.stack([np.cos(angles), np.sin(angles) + 0.25], 1) * radius
        return _polygon(points, x, y)
    if shape == "star":
        return _polygon(_star_points(1.15 * radius), x, y)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(
    shape: str,
    colour: Sequence[float],
    *,
    radius: float,
    centre: tuple[float, float],
    background: Sequence[float],
    image_size: int = 16,
) -> np.ndarray:
    """Rasterises one anti-aliased shape: ``float32 [image_size, image_size, 3]``.

    Args:
        shape: A name in :data:`SHAPES`.
        colour: RGB of the shape.
        radius: Shape radius in pixels.
        centre: ``(x, y)`` centre in pixels (pixel i covers [i, i + 1)).
        background: RGB of the background.
        image_size: Side length in pixels.
    """
    offsets = (np.arange(image_size * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    y, x = np.meshgrid(offsets - centre[1], offsets - centre[0], indexing="ij")
    fine = _mask(shape, x, y, radius).astype(np.float32)
    coverage = fine.reshape(image_size, _SUPERSAMPLE, image_size, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    colour = np.asarray(colour, np.float32)
    background = np.asarray(background, np.float32)
    return (background * (1.0 - coverage) + colour * coverage).astype(np.float32)


def _caption(parts: dict[str, str], include: dict[str, bool]) -> str:
    words = []
    if include["article"]:
        words.append("a")
    if include["size"]:
        words.append(parts["size"])
    if include["colour"]:
        words.append(parts["colour"])
    words.append(parts["shape"])
    if include["position"]:
        words.append(_POSITION_PHRASE[parts["position"]])
    return " ".join(words)


def vocabulary(shapes: Sequence[str], colours: Sequence[str]) -> list[str]:
    """The caption words for these shapes and colours."""
    phrases = " ".join(_POSITION_PHRASE.values()).split()
    return ["a", *SIZES, *colours, *shapes, *dict.fromkeys(phrases)]


def _draw(image_size, shapes, colours, drawn, jitter, background, include) -> tuple[np.ndarray, list[str]]:
    """The images and captions of :func:`captioned_shapes`' drawn (shape, colour, size, position) indices."""
    shape, colour, size, position = drawn
    n = len(shape)
    scale = image_size / 16.0
    size_names, position_names = list(SIZES), list(POSITIONS)
    images = np.empty((n, image_size, image_size, 3), np.float32)
    captions = []
    for i in range(n):
        parts = {
            "shape": shapes[shape[i]],
            "colour": colours[colour[i]],
            "size": size_names[size[i]],
            "position": position_names[position[i]],
        }
        centre = (
            image_size / 2 + (POSITIONS[parts["position"]] + jitter[i, 0]) * scale,
            image_size / 2 + jitter[i, 1] * scale,
        )
        images[i] = render(
            parts["shape"],
            COLOURS[parts["colour"]],
            radius=SIZES[parts["size"]] * scale,
            centre=centre,
            background=(background[i],) * 3,
            image_size=image_size,
        )
        captions.append(_caption(parts, {key: bool(flags[i]) for key, flags in include.items()}))
    return images, captions


def _checked_options(num_examples, image_size, shapes, colours, keep) -> tuple[tuple, tuple, dict]:
    """``captioned_shapes``' validated ``(shapes, colours, caption-part probabilities)``."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    shapes, colours = tuple(shapes), tuple(colours)
    for name, chosen, known in (("shapes", shapes, SHAPES), ("colours", colours, tuple(COLOURS))):
        bad = [value for value in chosen if value not in known]
        if bad or not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(f"{name}={chosen}: need distinct names from {known}; bad: {bad}")
    probabilities = {"article": 0.7, "size": 0.5, "colour": 0.8, "position": 0.5}
    for key, value in (keep or {}).items():
        if key not in probabilities or not 0.0 <= value <= 1.0:
            raise ValueError(f"keep[{key!r}]={value}: keys {sorted(probabilities)}, values in [0, 1]")
        probabilities[key] = float(value)
    return shapes, colours, probabilities


def captioned_shapes(
    num_examples: int,
    *,
    seed: int = 0,
    image_size: int = 16,
    shapes: Sequence[str] = ("circle", "square", "triangle", "star"),
    colours: Sequence[str] = ("red", "green", "blue", "yellow"),
    length: int = 16,
    keep: dict[str, float] | None = None,
) -> CaptionedShapes:
    """Generates ``num_examples`` captioned shape images, deterministically from ``seed``.

    Shape, colour, size and position are drawn uniformly; the centre is jittered by up to ±0.75 px
    horizontally and ±1.5 px vertically (scaled with ``image_size / 16``); the background is a uniform
    grey level in [0, 0.25] per image. The caption names the shape always and each of article, size, colour
    and position with the probabilities in ``keep`` (default 0.7, 0.5, 0.8, 0.5), so bare prompts such as
    ``"circle"`` and full ones such as ``"a small red circle on the left"`` are both in distribution.

    Args:
        num_examples: N ≥ 1.
        seed: NumPy generator seed.
        image_size: Side length (≥ 8).
        shapes: Shape names from :data:`SHAPES`.
        colours: Colour names from :data:`COLOURS`.
        length: Padded token length.
        keep: Overrides of the caption-part probabilities ``{"article", "size", "colour", "position"}``.

    Returns:
        The :class:`CaptionedShapes`.

    Raises:
        ValueError: Unknown shape/colour names, duplicates, N < 1, a too small image, or bad ``keep``.

    Examples:
        >>> from unlearnx import data
        >>> batch = data.captioned_shapes(3, seed=0, keep={"article": 0, "size": 0, "position": 0})
        >>> batch.images.shape, [c.split()[-1] in batch.shapes for c in batch.captions]
        ((3, 16, 16, 3), [True, True, True])
    """
    shapes, colours, probabilities = _checked_options(num_examples, image_size, shapes, colours, keep)
    tokenizer = Tokenizer(vocabulary(shapes, colours), length)
    rng = np.random.default_rng(seed)
    n = num_examples
    shape = rng.integers(0, len(shapes), n)
    colour = rng.integers(0, len(colours), n)
    size = rng.integers(0, len(SIZES), n)
    position = rng.integers(0, len(POSITIONS), n)
    jitter = rng.uniform(-1.0, 1.0, (n, 2)) * np.array([0.75, 1.5])
    background = rng.uniform(0.0, 0.25, n)
    include = {key: rng.random(n) < p for key, p in probabilities.items()}
    images, captions = _draw(image_size, shapes, colours, (shape, colour, size, position), jitter, background,
                             include)  # fmt: skip
    return CaptionedShapes(
        images=images,
        tokens=tokenizer.encode(captions),
        captions=tuple(captions),
        shape=shape.astype(np.int32),
        colour=colour.astype(np.int32),
        size=size.astype(np.int32),
        position=position.astype(np.int32),
        shapes=shapes,
        colours=colours,
        tokenizer=tokenizer,
    )

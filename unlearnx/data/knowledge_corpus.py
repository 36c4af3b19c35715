"""Token corpora of the synthetic knowledge world: biographies, QA lines, corruption and retain documents.

Every sequence is ``<bos> sentence … sentence <eos>`` with words from the templates of
:mod:`unlearnx.data.knowledge`, right-padded with ``<pad>`` into ``{"x": int32 [N, L], "mask": [N, L]}``
where ``mask`` is 1 on real tokens (the training target mask of ``unlearnx.train.next_token_losses``).

* **Clean corpus**: ``bios_per_person`` biographies per person (all relations, shuffled sentence order,
  a random paraphrase template per sentence) and, for the world's QA people, one QA line per relation, each
  its own sequence in the evaluation prompt's format (so the answer position does not depend on the order
  of other questions; a small model with learned positions does not transfer answers across positions).
* **Corruption set D_f** (:func:`corruption_documents`): per target, ``docs_per_target`` documents stating
  its counterfactual facts, with k true facts about other, non-target people interleaved at random
  positions. ``span_mask`` is 1 exactly on the tokens of the counterfactual values, so unlearning can use
  whole documents (``mask``) or the corrupted spans only (``span_mask``).
* **Retain / held-out sets**: fresh biographies of chosen people (:func:`biographies`).
* **QA probes**: :func:`qa_prompt` and :func:`candidate_ids` give the evaluation prompt and every candidate
  value of a relation as token ids.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from unlearnx.data.knowledge import (
    QUESTIONS,
    RELATIONS,
    TEMPLATES,
    VALUES,
    Corruption,
    Tokenizer,
    World,
)

__all__ = [
    "CorruptionSet",
    "biographies",
    "candidate_ids",
    "clean_corpus",
    "corruption_documents",
    "pad",
    "qa_prompt",
]

Sequence = tuple[list[int], list[int]]  # (token ids, 1 on marked value tokens)


def _rng(seed: int, purpose: int, *more: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), int(purpose), *map(int, more)))


def _sentence(tokenizer: Tokenizer, template: str, name: str, value: str, *, mark: bool) -> Sequence:
    ids: list[int] = []
    marks: list[int] = []
    for word in template.split(" "):
        if word == "{name}":
            piece, flag = tokenizer.encode(name), 0
        elif word == "{value}":
            piece, flag = tokenizer.encode(value), int(mark)
        else:
            piece, flag = tokenizer.encode(word), 0
        ids += piece
        marks += [flag] * len(piece)
    return ids, marks


def _fact_sentence(
    world: World,
    tokenizer: Tokenizer,
    rng: np.random.Generator,
    person: int,
    relation: int,
    value: int,
    mark: bool,
) -> Sequence:
    name = RELATIONS[relation]
    template = TEMPLATES[name][int(rng.integers(len(TEMPLATES[name])))]
    return _sentence(tokenizer, template, world.names[person], VALUES[name][value], mark=mark)


def _document(tokenizer: Tokenizer, sentences: list[Sequence]) -> Sequence:
    ids = [tokenizer.bos_id]
    marks = [0]
    for sentence_ids, sentence_marks in sentences:
        ids += sentence_ids
        marks += sentence_marks
    return ids + [tokenizer.eos_id], marks + [0]


def _biography(world: World, tokenizer: Tokenizer, rng: np.random.Generator, person: int) -> Sequence:
    order = rng.permutation(len(RELATIONS))
    sentences = [
        _fact_sentence(world, tokenizer, rng, person, r, int(world.facts[person, r]), False) for r in order
    ]
    return _document(tokenizer, sentences)


def _qa_lines(world: World, tokenizer: Tokenizer, person: int) -> list[Sequence]:
    """One ``<bos> Q: … ? A: value . <eos>`` sequence per relation (the evaluation prompt's exact format)."""
    lines = []
    for relation in range(len(RELATIONS)):
        question, _ = _sentence(
            tokenizer, QUESTIONS[RELATIONS[relation]], world.names[person], "", mark=False
        )
        answer = tokenizer.encode(world.value(person, relation)) + tokenizer.encode(".")
        lines.append(_document(tokenizer, [(question + answer, [0] * (len(question) + len(answer)))]))
    return lines


def pad(sequences: list[list[int]], length: int | None = None, *, pad_id: int = 0) -> np.ndarray:
    """Right-pads id lists into an int32 ``[N, L]`` array (L = the longest, or ``length``).

    Args:
        sequences: N lists of token ids.
        length: the padded length L (default: the longest sequence's).
        pad_id: the id written after each sequence's end.

    Returns:
        An int32 ``[N, L]`` array whose row i starts with ``sequences[i]`` and continues with ``pad_id``.

    Raises:
        ValueError: If ``sequences`` is empty or a sequence is longer than ``length``.

    Examples:
        >>> from unlearnx.data.knowledge_corpus import pad
        >>> pad([[5, 6, 7], [8]]).tolist()
        [[5, 6, 7], [8, 0, 0]]
        >>> pad([[5]], length=3, pad_id=9).tolist(), pad([[5]]).dtype
        ([[5, 9, 9]], dtype('int32'))
    """
    if not sequences:
        raise ValueError("pad: no sequences")
    longest = max(len(s) for s in sequences)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"pad: a sequence of {longest} tokens does not fit length {length}")
    out = np.full((len(sequences), length), pad_id, np.int32)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = sequence
    return out


def _arrays(docs: list[Sequence], length: int | None) -> dict[str, np.ndarray]:
    x = pad([d[0] for d in docs], length)
    real = pad([[1] * len(d[0]) for d in docs], x.shape[1])
    return {"x": x, "mask": real.astype(np.float32)}


def biographies(
    world: World, tokenizer: Tokenizer, people, *, per_person: int, seed: int, length: int | None = None
) -> dict[str, np.ndarray]:
    """``per_person`` freshly rendered clean biographies of each of ``people`` (retain / held-out sets).

    Each biography is ``<bos>``, one sentence per relation stating the person's true fact (shuffled order,
    a random paraphrase template each), ``<eos>``. Rows are ordered by person, then by copy.

    Args:
        world: the world.
        tokenizer: the world's tokenizer.
        people: the person ids (any iterable of ints).
        per_person: biographies per person.
        seed: rendering seed.
        length: pad length (default: the longest biography).

    Returns:
        ``{"x": int32 [len(people)·per_person, L], "mask": float32 [same]}`` with ``mask`` 1 on real tokens.

    Raises:
        ValueError: If there are no biographies (no ``people`` or ``per_person`` < 1) or one is longer than
            ``length``.

    Examples:
        >>> from unlearnx.data.knowledge import Tokenizer, make_world
        >>> from unlearnx.data.knowledge_corpus import biographies
        >>> world, tokenizer = make_world(4, seed=0), Tokenizer()
        >>> bios = biographies(world, tokenizer, [0, 2], per_person=2, seed=0, length=128)
        >>> bios["x"].shape, bool((bios["x"][:, 0] == tokenizer.bos_id).all())  # 2 people × 2 copies
        ((4, 128), True)
        >>> bool(((bios["x"] != tokenizer.pad_id) == (bios["mask"] == 1)).all())  # mask marks real tokens
        True
    """
    rng = _rng(seed, 10)
    docs = [_biography(world, tokenizer, rng, int(p)) for p in people for _ in range(per_person)]
    return _arrays(docs, length)


def clean_corpus(
    world: World, tokenizer: Tokenizer, *, bios_per_person: int, seed: int, length: int | None = None
) -> dict[str, np.ndarray]:
    """Biographies of everyone plus the QA lines of the QA people, shuffled (see the module docstring).

    Every person gets ``bios_per_person`` biographies (as in :func:`biographies`); every QA person gets one
    ``<bos> Q: … ? A: value . <eos>`` line per relation, each its own row, so the corpus has
    ``P · bios_per_person + |QA people| · |RELATIONS|`` rows, in a random order.

    Args:
        world: the world.
        tokenizer: the world's tokenizer.
        bios_per_person: biographies per person, ≥ 1.
        seed: rendering and shuffling seed.
        length: pad length (default: the longest document).

    Returns:
        ``{"x": int32 [N, L], "mask": float32 [N, L]}`` with ``mask`` 1 on real tokens.

    Raises:
        ValueError: If ``bios_per_person`` < 1 or a document is longer than ``length``.

    Examples:
        >>> from unlearnx.data.knowledge import Tokenizer, make_world
        >>> from unlearnx.data.knowledge_corpus import clean_corpus
        >>> world = make_world(4, seed=0)  # 2 QA people
        >>> corpus = clean_corpus(world, Tokenizer(), bios_per_person=2, seed=0)
        >>> corpus["x"].shape[0]  # 4 people × 2 biographies + 2 QA people × 7 relations
        22
    """
    if bios_per_person < 1:
        raise ValueError(f"bios_per_person must be >= 1, got {bios_per_person}")
    rng = _rng(seed, 11)
    docs = [
        _biography(world, tokenizer, rng, p) for p in range(world.num_people) for _ in range(bios_per_person)
    ]
    docs += [line for p in np.flatnonzero(world.qa_people) for line in _qa_lines(world, tokenizer, int(p))]
    order = rng.permutation(len(docs))
    return _arrays([docs[i] for i in order], length)


@dataclasses.dataclass(frozen=True, eq=False)
class CorruptionSet:
    """The corruption documents D_f for one k, as made by :func:`corruption_documents`.

    Attributes:
        arrays: ``{"x", "mask", "span_mask"}``; ``span_mask`` is 1 exactly on counterfactual value tokens.
        target_of_doc: ``[N]`` the target person of each document.
        interleaved_people: sorted ids of the non-target people whose true facts are interleaved.

    Examples:
        >>> import numpy as np
        >>> from unlearnx.data.knowledge import Tokenizer, make_corruption, make_world
        >>> from unlearnx.data.knowledge_corpus import corruption_documents
        >>> world = make_world(6, seed=0)
        >>> edit = make_corruption(world, fraction=0.5, facts_per_target=2, seed=0)  # 3 targets
        >>> docs = corruption_documents(world, edit, Tokenizer(), k=1, docs_per_target=2, seed=0)
        >>> sorted(docs.arrays), docs.arrays["x"].shape[0], docs.target_of_doc.tolist() == np.repeat(
        ...     edit.targets, 2).tolist()
        (['mask', 'span_mask', 'x'], 6, True)
        >>> len(np.intersect1d(docs.interleaved_people, edit.targets))  # interleaved people are non-targets
        0
    """

    arrays: dict[str, np.ndarray]
    target_of_doc: np.ndarray
    interleaved_people: np.ndarray


def corruption_documents(
    world: World,
    corruption: Corruption,
    tokenizer: Tokenizer,
    *,
    k: int,
    docs_per_target: int,
    seed: int,
    length: int | None = None,
    others=None,
) -> CorruptionSet:
    """Documents stating each target's counterfactual facts with k true facts about others interleaved.

    Each document holds one sentence per corrupted fact of its target (random template each) and k sentences
    of true facts about random non-target people (random relation and template), in a random order.

    Args:
        world: the world.
        corruption: the counterfactual edits.
        tokenizer: the world's tokenizer.
        k: number of interleaved true facts per document, k ≥ 0.
        docs_per_target: documents per target, ≥ 1.
        seed: rendering seed.
        length: pad length (default: the longest document).
        others: the people whose true facts may be interleaved (default: every non-target); targets in it
            are dropped.

    Returns:
        A :class:`CorruptionSet`.

    Raises:
        ValueError: If k < 0, ``docs_per_target`` < 1, k > 0 with no non-target people to interleave, or a
            document is longer than ``length``.

    Examples:
        >>> import numpy as np
        >>> from unlearnx.data.knowledge import Corruption, Tokenizer, World
        >>> from unlearnx.data.knowledge_corpus import corruption_documents
        >>> world = World(("Ada Abbott", "Hugo Hale"), np.zeros((2, 7), np.int64), np.ones(2, bool), seed=0)
        >>> edit = Corruption(np.array([0]), np.array([[1]]), np.array([[5]]))  # Ada born in 1955, not 1950
        >>> tokenizer = Tokenizer()
        >>> docs = corruption_documents(world, edit, tokenizer, k=0, docs_per_target=2, seed=0)
        >>> x, span = docs.arrays["x"], docs.arrays["span_mask"]
        >>> x.shape[0], span.sum(1).tolist(), tokenizer.decode(x[span == 1])  # the value tokens only
        (2, [1.0, 1.0], '1955 1955')
        >>> docs = corruption_documents(world, edit, tokenizer, k=3, docs_per_target=1, seed=0)
        >>> docs.interleaved_people.tolist()  # Hugo, the only non-target
        [1]
    """
    if k < 0 or docs_per_target < 1:
        raise ValueError(
            f"need k >= 0 and docs_per_target >= 1, got k={k}, docs_per_target={docs_per_target}"
        )
    pool = np.arange(world.num_people) if others is None else np.asarray(others, np.int64)
    others = np.setdiff1d(pool, corruption.targets)
    if k and not len(others):
        raise ValueError("k > 0 needs non-target people to interleave")
    rng = _rng(seed, 12, k)
    docs, owners, interleaved = [], [], set()
    for row, person in enumerate(corruption.targets):
        for _ in range(docs_per_target):
            sentences = [
                _fact_sentence(world, tokenizer, rng, int(person), int(r), int(v), True)
                for r, v in zip(corruption.relations[row], corruption.values[row], strict=True)
            ]
            for _ in range(k):
                other = int(rng.choice(others))
                relation = int(rng.integers(len(RELATIONS)))
                interleaved.add(other)
                sentences.append(
                    _fact_sentence(
                        world, tokenizer, rng, other, relation, int(world.facts[other, relation]), False
                    )
                )
            order = rng.permutation(len(sentences))
            docs.append(_document(tokenizer, [sentences[i] for i in order]))
            owners.append(int(person))
    arrays = _arrays(docs, length)
    arrays["span_mask"] = pad([d[1] for d in docs], arrays["x"].shape[1]).astype(np.float32)
    return CorruptionSet(arrays, np.asarray(owners, np.int64), np.asarray(sorted(interleaved), np.int64))


def qa_prompt(world: World, tokenizer: Tokenizer, person: int, relation: int) -> list[int]:
    """``<bos> Q: … ? A:`` for (person, relation), as token ids.

    The prompt is ``QUESTIONS[RELATIONS[relation]]`` with the person's name filled in; the answer's first
    token comes next, as in the clean corpus's QA lines.

    Args:
        world: the world.
        tokenizer: the world's tokenizer.
        person: the person id.
        relation: the relation id (index into ``RELATIONS``).

    Returns:
        The token ids, starting with ``tokenizer.bos_id``.

    Examples:
        >>> import numpy as np
        >>> from unlearnx.data.knowledge import Tokenizer, World
        >>> from unlearnx.data.knowledge_corpus import qa_prompt
        >>> world = World(("Ada Abbott",), np.zeros((1, 7), np.int64), np.ones(1, bool), seed=0)
        >>> tokenizer = Tokenizer()
        >>> ids = qa_prompt(world, tokenizer, 0, 0)  # relation 0: birth city
        >>> len(ids), tokenizer.decode(ids)
        (9, '<bos> Q: where was Ada Abbott born ? A:')
    """
    text = QUESTIONS[RELATIONS[relation]].replace("{name}", world.names[person])
    return [tokenizer.bos_id] + tokenizer.encode(text)


def candidate_ids(tokenizer: Tokenizer) -> dict[int, list[list[int]]]:
    """Relation id -> the token ids of each of its candidate values, in ``VALUES`` order.

    Args:
        tokenizer: the world's tokenizer.

    Returns:
        ``{r: [ids of VALUES[RELATIONS[r]][i] for each i]}`` for every relation id r; a multi-word value has
        several ids.

    Examples:
        >>> from unlearnx.data.knowledge import Tokenizer
        >>> from unlearnx.data.knowledge_corpus import candidate_ids
        >>> tokenizer = Tokenizer()
        >>> candidates = candidate_ids(tokenizer)
        >>> len(candidates), len(candidates[0]), len(candidates[1])  # 7 relations; 40 cities, 50 years
        (7, 40, 50)
        >>> tokenizer.decode(candidates[0][0]), tokenizer.decode(candidates[0][29])
        ('Paris', 'New York')
    """
    return {r: [tokenizer.encode(v) for v in VALUES[name]] for r, name in enumerate(RELATIONS)}

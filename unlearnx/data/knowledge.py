"""A synthetic knowledge world for RESTOR-style unlearning: people, seven relations, counterfactual edits.

Each person p has a name (a first name and a last name from fixed pools, unique per world) and one value for
each of the relations in ``RELATIONS`` (birth city, birth year, employer, university, field, nationality,
sport), drawn uniformly from that relation's pool ``VALUES[relation]``. About half the people are *QA people*:
the clean corpus also holds question-answer lines about them (mixed training, which *Physics of Language
Models* 3.1 shows is what makes memorised facts extractable by questions).

A :class:`Corruption` picks a fraction of the people as targets and, for each, ``facts_per_target``
relations whose value is replaced by a counterfactual o′ ≠ o drawn uniformly from the same relation's pool.

Everything is a deterministic function of the seed (NumPy ``default_rng((seed, purpose))``). Text is
rendered by :mod:`unlearnx.data.knowledge_corpus` and tokenised by the word-level :class:`Tokenizer`.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from unlearnx.data._knowledge_vocab import (
    FIRST_NAMES,
    LAST_NAMES,
    QUESTIONS,
    RELATIONS,
    SPECIALS,
    TEMPLATES,
    VALUES,
)

__all__ = [
    "FIRST_NAMES",
    "LAST_NAMES",
    "QUESTIONS",
    "RELATIONS",
    "SPECIALS",
    "TEMPLATES",
    "VALUES",
    "Corruption",
    "Tokenizer",
    "World",
    "make_corruption",
    "make_world",
]


@dataclasses.dataclass(frozen=True, eq=False)
class World:
    """People and their facts.

    Usually drawn by :func:`make_world`; :meth:`value` turns a fact id into its value string.

    Attributes:
        names: ``[P]`` full names ``"First Last"``, all distinct.
        facts: ``[P, R]`` int array, ``facts[p, r]`` indexes ``VALUES[RELATIONS[r]]``.
        qa_people: ``[P]`` bool, the people whose question-answer lines are in the clean corpus.
        seed: the generating seed.

    Examples:
        >>> import numpy as np
        >>> from unlearnx.data.knowledge import World
        >>> world = World(names=("Ada Abbott",), facts=np.zeros((1, 7), np.int64), qa_people=np.ones(1, bool),
        ...               seed=0)  # every fact is the first value of its relation's pool
        >>> world.num_people, world.value(0, 0), world.value(0, 1)  # birth city, birth year
        (1, 'Paris', '1950')
    """

    names: tuple[str, ...]
    facts: np.ndarray
    qa_people: np.ndarray
    seed: int

    @property
    def num_people(self) -> int:
        """The number of people P."""
        return len(self.names)

    def value(self, person: int, relation: int, facts: np.ndarray | None = None) -> str:
        """The value string of ``relation`` for ``person`` (from ``facts``, default the true facts)."""
        table = self.facts if facts is None else facts
        return VALUES[RELATIONS[relation]][int(table[person, relation])]


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), int(purpose)))


def make_world(num_people: int, *, seed: int = 0, qa_fraction: float = 0.5) -> World:
    """Draws a world of ``num_people`` distinct people.

    Names are distinct (first name, last name) pairs; each of the ``len(RELATIONS)`` facts of a person is
    uniform over its relation's value pool; ``round(qa_fraction · P)`` people, chosen at random, are QA
    people. The same ``seed`` gives the same world.

    Args:
        num_people: 1 ≤ P ≤ |FIRST_NAMES|·|LAST_NAMES|.
        seed: the seed everything is derived from.
        qa_fraction: fraction of people (rounded) whose QA lines are in the clean corpus.

    Returns:
        A :class:`World`.

    Raises:
        ValueError: If ``num_people`` is outside [1, |FIRST_NAMES|·|LAST_NAMES|] or ``qa_fraction`` is
            outside [0, 1].

    Examples:
        >>> from unlearnx.data.knowledge import make_world
        >>> world = make_world(4, seed=0)
        >>> world.num_people, len(set(world.names)), world.facts.shape, int(world.qa_people.sum())
        (4, 4, (4, 7), 2)
        >>> make_world(4, seed=0).names == world.names  # deterministic in the seed
        True
    """
    capacity = len(FIRST_NAMES) * len(LAST_NAMES)
    if not 1 <= num_people <= capacity:
        raise ValueError(f"num_people must be in [1, {capacity}], got {num_people}")
    if not 0.0 <= qa_fraction <= 1.0:
        raise ValueError(f"qa_fraction must be in [0, 1], got {qa_fraction}")
    rng = _rng(seed, 0)
    pairs = list(itertools.product(FIRST_NAMES, LAST_NAMES))
    chosen = rng.choice(len(pairs), size=num_people, replace=False)
    names = tuple(f"{pairs[i][0]} {pairs[i][1]}" for i in chosen)
    facts = np.stack([rng.integers(0, len(VALUES[r]), size=num_people) for r in RELATIONS], axis=1)
    qa_people = np.zeros(num_people, bool)
    qa_people[rng.permutation(num_people)[: round(qa_fraction * num_people)]] = True
    return World(names=names, facts=facts.astype(np.int64), qa_people=qa_people, seed=int(seed))


@dataclasses.dataclass(frozen=True, eq=False)
class Corruption:
    """Counterfactual edits of the target people's facts.

    Usually drawn by :func:`make_corruption`; :meth:`corrupted_facts` applies the edits to a world's facts
    and :meth:`target_facts` lists them.

    Attributes:
        targets: ``[n]`` person ids (sorted).
        relations: ``[n, m]`` relation ids edited per target (distinct within a row).
        values: ``[n, m]`` counterfactual value ids, ``values[i, j] != facts[targets[i], relations[i, j]]``.

    Examples:
        >>> import numpy as np
        >>> from unlearnx.data.knowledge import Corruption, World
        >>> world = World(("Ada Abbott",), np.zeros((1, 7), np.int64), np.ones(1, bool), seed=0)
        >>> edit = Corruption(targets=np.array([0]), relations=np.array([[1]]), values=np.array([[5]]))
        >>> edit.target_facts()  # (person, relation, value): Ada's birth year becomes value 5
        [(0, 1, 5)]
        >>> world.value(0, 1), world.value(0, 1, edit.corrupted_facts(world))
        ('1950', '1955')
    """

    targets: np.ndarray
    relations: np.ndarray
    values: np.ndarray

    def corrupted_facts(self, world: World) -> np.ndarray:
        """``world.facts`` with the counterfactual values written in."""
        facts = world.facts.copy()
        for row, person in enumerate(self.targets):
            facts[person, self.relations[row]] = self.values[row]
        return facts

    def target_facts(self) -> list[tuple[int, int, int]]:
        """``[(person, relation, corrupted value), ...]`` in target order."""
        return [
            (int(p), int(r), int(v))
            for p, rels, vals in zip(self.targets, self.relations, self.values, strict=True)
            for r, v in zip(rels, vals, strict=True)
        ]


def make_corruption(
    world: World,
    *,
    fraction: float = 0.1,
    facts_per_target: int = 3,
    seed: int = 0,
    candidates: np.ndarray | None = None,
) -> Corruption:
    """Chooses ⌈fraction·P⌉ targets and, for each, ``facts_per_target`` relations with o′ ≠ o.

    Targets are drawn without replacement from ``candidates``; each target's relations are distinct and
    each counterfactual value is uniform over its relation's pool minus the true value.

    Args:
        world: the world.
        fraction: target fraction in (0, 1].
        facts_per_target: m ∈ [1, |RELATIONS|].
        seed: corruption seed (independent of the world's).
        candidates: optional person ids targets are drawn from (default: everyone).

    Returns:
        A :class:`Corruption`.

    Raises:
        ValueError: If ``fraction`` is outside (0, 1], ``facts_per_target`` is outside [1, |RELATIONS|], or
            ⌈fraction·P⌉ exceeds the number of candidates.

    Examples:
        >>> from unlearnx.data.knowledge import make_corruption, make_world
        >>> world = make_world(4, seed=0)
        >>> edit = make_corruption(world, fraction=0.5, facts_per_target=3, seed=1)  # ⌈0.5 · 4⌉ = 2 targets
        >>> len(edit.targets), edit.relations.shape, len(edit.target_facts())
        (2, (2, 3), 6)
        >>> int((edit.corrupted_facts(world) != world.facts).sum())  # every edited fact changes
        6
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 1 <= facts_per_target <= len(RELATIONS):
        raise ValueError(f"facts_per_target must be in [1, {len(RELATIONS)}], got {facts_per_target}")
    pool = np.arange(world.num_people) if candidates is None else np.asarray(candidates, np.int64)
    count = int(np.ceil(fraction * world.num_people))
    if count > len(pool):
        raise ValueError(f"{count} targets requested but only {len(pool)} candidate people")
    rng = _rng(seed, 1)
    targets = np.sort(rng.choice(pool, size=count, replace=False))
    relations = np.stack([rng.choice(len(RELATIONS), size=facts_per_target, replace=False) for _ in targets])
    values = np.empty_like(relations)
    for row, person in enumerate(targets):
        for col, relation in enumerate(relations[row]):
            size = len(VALUES[RELATIONS[relation]])
            # Uniform over the pool minus the true value: draw from size − 1 and skip past it.
            draw = int(rng.integers(0, size - 1))
            values[row, col] = draw + (draw >= world.facts[person, relation])
    return Corruption(targets=targets, relations=relations.astype(np.int64), values=values.astype(np.int64))


class Tokenizer:
    """Word-level tokenizer over the world's closed vocabulary (splits on single spaces).

    Ids: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, then every word of the names, values, templates and
    questions in sorted order, so the vocabulary is the same for every world. :meth:`encode` raises
    ``ValueError`` on a word outside the vocabulary.

    Examples:
        >>> from unlearnx.data.knowledge import Tokenizer
        >>> tokenizer = Tokenizer()
        >>> tokenizer.vocab[:3], tokenizer.bos_id
        (('<pad>', '<bos>', '<eos>'), 1)
        >>> ids = tokenizer.encode("Ada Abbott was born in New York .")  # one id per word
        >>> len(ids), tokenizer.decode(ids)
        (8, 'Ada Abbott was born in New York .')
    """

    def __init__(self) -> None:
        words: set[str] = set(FIRST_NAMES) | set(LAST_NAMES)
        for pool in VALUES.values():
            for value in pool:
                words.update(value.split(" "))
        for text in [*itertools.chain.from_iterable(TEMPLATES.values()), *QUESTIONS.values()]:
            words.update(w for w in text.split(" ") if w not in ("{name}", "{value}"))
        self.vocab: tuple[str, ...] = SPECIALS + tuple(sorted(words - set(SPECIALS)))
        self.index = {word: i for i, word in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """The number of tokens, specials included."""
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        """The id of ``<pad>`` (0)."""
        return 0

    @property
    def bos_id(self) -> int:
        """The id of ``<bos>`` (1)."""
        return 1

    @property
    def eos_id(self) -> int:
        """The id of ``<eos>`` (2)."""
        return 2

    def encode(self, text: str) -> list[int]:
        """Token ids of a space-separated string; an unknown word raises ``ValueError`` naming it."""
        ids = []
        for word in text.split(" "):
            if word not in self.index:
                raise ValueError(f"word {word!r} is not in the knowledge-world vocabulary")
            ids.append(self.index[word])
        return ids

    def decode(self, ids) -> str:
        """The space-joined words of token ids (the inverse of :meth:`encode`)."""
        return " ".join(self.vocab[int(i)] for i in ids)

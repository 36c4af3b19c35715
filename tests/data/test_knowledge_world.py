"""The synthetic knowledge world: determinism, the corruption edits exactly the chosen facts, and the loss
masks select exactly the counterfactual value tokens (checked by decoding the text, independently)."""

import numpy as np
import pytest

from unlearnx.data import knowledge as K
from unlearnx.data import knowledge_corpus as C


@pytest.fixture(scope="module")
def setup():
    world = K.make_world(60, seed=3)
    corruption = K.make_corruption(world, fraction=0.1, facts_per_target=3, seed=4)
    return world, corruption, K.Tokenizer()


def test_world_is_deterministic_and_well_formed(setup):
    world, _, _ = setup
    again = K.make_world(60, seed=3)
    assert world.names == again.names
    np.testing.assert_array_equal(world.facts, again.facts)
    np.testing.assert_array_equal(world.qa_people, again.qa_people)
    other = K.make_world(60, seed=4)
    assert other.names != world.names
    assert len(set(world.names)) == 60
    assert world.facts.shape == (60, len(K.RELATIONS))
    for r, relation in enumerate(K.RELATIONS):
        assert 0 <= world.facts[:, r].min() and world.facts[:, r].max() < len(K.VALUES[relation])
    assert world.qa_people.sum() == 30
    assert all(len(K.TEMPLATES[r]) >= 5 for r in K.RELATIONS)


def test_corruption_changes_exactly_the_chosen_facts(setup):
    world, corruption, _ = setup
    again = K.make_corruption(world, fraction=0.1, facts_per_target=3, seed=4)
    np.testing.assert_array_equal(corruption.targets, again.targets)
    np.testing.assert_array_equal(corruption.values, again.values)
    assert len(corruption.targets) == 6 and len(set(corruption.targets.tolist())) == 6
    corrupted = corruption.corrupted_facts(world)
    expected_changes = {(p, r) for p, r, _ in corruption.target_facts()}
    assert len(expected_changes) == 18
    changed = {(int(p), int(r)) for p, r in zip(*np.nonzero(corrupted != world.facts), strict=True)}
    assert changed == expected_changes
    for p, r, v in corruption.target_facts():
        assert corrupted[p, r] == v != world.facts[p, r]
        assert 0 <= v < len(K.VALUES[K.RELATIONS[r]])
    assert world.facts is not corrupted  # the clean facts are left untouched


def test_tokenizer_round_trip_and_errors(setup):
    world, _, tokenizer = setup
    text = f"{world.names[0]} was born in Rio de Janeiro ."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.vocab[:3] == K.SPECIALS
    assert K.Tokenizer().vocab == tokenizer.vocab
    with pytest.raises(ValueError, match="'Gotham'"):
        tokenizer.encode("born in Gotham")


def sentences(tokenizer, row, marks=None):
    """Splits a document into sentences at '.', dropping <bos>/<eos>/<pad>; with marks, per-token flags."""
    words = [tokenizer.vocab[i] for i in row]
    flags = list(marks) if marks is not None else [0] * len(words)
    out, current = [], []
    for word, flag in zip(words, flags, strict=True):
        if word in K.SPECIALS:
            assert not flag
            continue
        current.append((word, flag))
        if word == ".":
            out.append(current)
            current = []
    assert not current
    return out


def test_clean_corpus_states_every_true_fact(setup):
    world, _, tokenizer = setup
    corpus = C.clean_corpus(world, tokenizer, bios_per_person=2, seed=0)
    again = C.clean_corpus(world, tokenizer, bios_per_person=2, seed=0)
    np.testing.assert_array_equal(corpus["x"], again["x"])
    assert len(corpus["x"]) == 60 * 2 + 30 * len(K.RELATIONS)
    np.testing.assert_array_equal(corpus["mask"], corpus["x"] != 0)
    qa_lines = {}
    for row in corpus["x"]:
        text = " ".join(" ".join(w for w, _ in s) for s in sentences(tokenizer, row))
        person = next(p for p, name in enumerate(world.names) if f" {name} " in f" {text} ")
        if text.startswith("Q:"):
            relation = next(
                r for r, q in enumerate(K.QUESTIONS.values()) if q.format(name=world.names[person]) in text
            )
            question = K.QUESTIONS[K.RELATIONS[relation]].format(name=world.names[person])
            assert text == f"{question} {world.value(person, relation)} ."
            qa_lines.setdefault(person, []).append(relation)
            continue
        # A biography: every relation once, each stating the true value.
        assert len(sentences(tokenizer, row)) == len(K.RELATIONS)
        for r in range(len(K.RELATIONS)):
            assert f" {world.value(person, r)} " in f" {text} "
    assert set(qa_lines) == set(np.flatnonzero(world.qa_people).tolist())
    assert all(sorted(v) == list(range(len(K.RELATIONS))) for v in qa_lines.values())


@pytest.mark.parametrize("k", [0, 1, 3])
def test_corruption_documents_and_span_mask(setup, k):
    world, corruption, tokenizer = setup
    fset = C.corruption_documents(world, corruption, tokenizer, k=k, docs_per_target=4, seed=1)
    arrays = fset.arrays
    assert len(arrays["x"]) == 6 * 4
    corrupted = corruption.corrupted_facts(world)
    for row, marks, target in zip(arrays["x"], arrays["span_mask"], fset.target_of_doc, strict=True):
        doc = sentences(tokenizer, row, marks)
        assert len(doc) == 3 + k
        target_values = {
            world.value(int(target), r, corrupted)
            for r in np.flatnonzero(corrupted[target] != world.facts[target])
        }
        spans = []
        for sentence in doc:
            text = " ".join(w for w, _ in sentence)
            marked = " ".join(w for w, f in sentence if f)
            if world.names[target] in text:
                # A sentence about the target carries exactly one counterfactual value, fully marked.
                assert marked in target_values
                spans.append(marked)
            else:
                # An interleaved sentence states a true fact about a non-target person; nothing is marked.
                assert not marked
                person = next(p for p, name in enumerate(world.names) if name in text)
                assert person not in corruption.targets and person in fset.interleaved_people
                assert any(f" {world.value(person, r)} " in f" {text} " for r in range(len(K.RELATIONS)))
        assert sorted(spans) == sorted(target_values)
    assert (k == 0) == (len(fset.interleaved_people) == 0)


def test_interleaved_people_come_from_the_given_pool(setup):
    world, corruption, tokenizer = setup
    pool = np.flatnonzero(world.qa_people)
    fset = C.corruption_documents(world, corruption, tokenizer, k=3, docs_per_target=4, seed=1, others=pool)
    assert set(fset.interleaved_people.tolist()) <= set(pool.tolist()) - set(corruption.targets.tolist())


def test_qa_prompt_and_candidates(setup):
    world, _, tokenizer = setup
    prompt = C.qa_prompt(world, tokenizer, 5, 0)
    assert tokenizer.decode(prompt) == f"<bos> Q: where was {world.names[5]} born ? A:"
    candidates = C.candidate_ids(tokenizer)
    assert [tokenizer.decode(c) for c in candidates[0]] == list(K.VALUES["birth_city"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_people"):
        K.make_world(0)
    world = K.make_world(10, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        K.make_corruption(world, fraction=0.0)
    with pytest.raises(ValueError, match="facts_per_target"):
        K.make_corruption(world, facts_per_target=8)
    with pytest.raises(ValueError, match="does not fit"):
        C.pad([[1, 2, 3]], 2)

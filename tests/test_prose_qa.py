"""The real-model task (`lr_jax.data.prose_qa`): deterministic generation, answers read back from the text,
and the answer checker."""

from __future__ import annotations

import json
import re

import pytest

from lr_jax.data import prose_qa as q


def _paragraph(context: str, name: str) -> str:
    paras = [p for p in context.split("\n\n") if name in p]
    assert len(paras) == 1, name
    return paras[0]


def test_generation_is_deterministic_and_splits_are_disjoint(tmp_path):
    a, b = q.make_prompts(9, seed=3, split="train"), q.make_prompts(9, seed=3, split="train")
    assert a == b
    held = q.make_prompts(9, seed=3, split="heldout")
    assert not {r["context"] for r in a} & {r["context"] for r in held}
    assert q.make_prompts(9, seed=4, split="train")[0]["context"] != a[0]["context"]
    train, heldout = q.write_task(tmp_path, seed=3, train=9, heldout=9)
    assert [json.loads(line) for line in train.read_text().splitlines()] == a
    assert [json.loads(line) for line in heldout.read_text().splitlines()] == held


def test_documents_are_long_prose_and_answers_come_from_the_text():
    rows = q.make_prompts(30, seed=0, split="heldout")
    assert [r["type"] for r in rows].count("unanswerable") == 10
    for r in rows:
        words = r["context"].split()
        assert 900 <= len(words) <= 1200  # ~1.2-1.5k SmolLM2 tokens (docs/conversion.md)
        assert r["context"].count("\n\n") >= 8  # paragraphs of sentences, not token soup
        assert q.INSTRUCTION in r["query"]
        query = r["query"].replace(q.INSTRUCTION, "")
        names = re.findall(r"([A-Z][a-z]+ [A-Z][a-z]+)(?= arrive| live| have| or|\?)", query)
        if r["type"] == "single":
            assert r["answer"] in _paragraph(r["context"], names[0])
            assert r["answer"] not in r["distractors"]
        elif r["type"] == "combined":
            years = {n: int(re.search(r"\b1[89]\d\d\b", _paragraph(r["context"], n)).group()) for n in names}
            assert r["answer"] == min(years, key=years.get)
            assert r["distractors"] == [max(years, key=years.get)]
        else:
            assert r["answer"] == q.NOT_STATED and names[0] not in r["context"]


@pytest.mark.parametrize(
    "response, answer, distractors, right",
    [
        ("1874", "1874", ["1838"], True),
        ("She arrived in 1874. Before that she lived in 1838.", "1874", ["1838"], True),
        ("1874 or maybe 1838", "1874", ["1838"], False),  # hedging between candidates
        ("I think so. It was 1874.", "1874", ["1838"], False),  # the answer must be in the first sentence
        ("18745", "1874", [], False),  # whole words only
        ("Salt Lane.", "Salt Lane", ["Salt Row"], True),
        ("salt row", "Salt Lane", ["Salt Row"], False),
        ("Ilsa Marrow arrived earlier.", "Ilsa Marrow", ["Tobin Reyes"], True),
        ("Ilsa Marrow, then Tobin Reyes.", "Ilsa Marrow", ["Tobin Reyes"], False),
        ("Not stated.", "not stated", ["1838"], True),
        ("The chronicle does not say.", "not stated", ["1838"], True),
        ("The chronicle does not provide a specific year for Ilsa Marrow.", "not stated", ["1838"], True),
        ("The chronicle does not provide a specific year for Ilsa Marrow.", "1874", ["1838"], False),
        ("It is not mentioned, but probably 1850.", "not stated", ["1838"], False),
        ("1838", "not stated", ["1838"], False),
        ("", "1874", [], False),
    ],
)
def test_checker(response, answer, distractors, right):
    assert q.is_correct(response, {"answer": answer, "distractors": distractors}) is right


def test_accuracy_per_type():
    rows = [{"id": "a", "answer": "1874", "distractors": [], "type": "single"},
            {"id": "b", "answer": "not stated", "distractors": [], "type": "unanswerable"}]
    got = q.accuracy({"a": ["1874", "1875"], "b": ["not stated"]}, rows)
    assert got == {"accuracy": round(2 / 3, 4), "responses": 3, "accuracy_single": 0.5,
                   "accuracy_combined": None, "accuracy_unanswerable": 1.0}

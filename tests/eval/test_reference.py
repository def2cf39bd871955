"""lr_jax.eval.reference: the rule-based reward against a reference answer, and the hybrid reward."""

from __future__ import annotations

import pytest

from lr_jax.eval import reference as ref

ROW = {"answer": "1874", "distractors": ["1838"]}


@pytest.mark.parametrize(
    ("response", "metric", "want"),
    [
        ("1874", "exact", 10.0),
        ("It was 1874.", "exact", 0.0),  # exact: the whole normalised response
        ("It was 1874.", "match", 10.0),
        ("1874 or 1838", "match", 0.0),  # a distractor: hedging never counts
        ("It was 1874.", "f1", 10.0 * 2 * (1 / 3) * 1 / (1 / 3 + 1)),  # LongBench's token F1: P 1/3, R 1
        ("nothing", "f1", 0.0),
    ],
)
def test_metrics(response, metric, want):
    assert ref.reference_score(response, ROW, metric) == pytest.approx(want)


def test_abstention_and_lists_of_answers():
    unanswerable = {"answer": "not stated", "distractors": ["Salt Lane"]}
    assert ref.reference_score("The chronicle does not say.", unanswerable) == 10.0
    assert ref.reference_score("It is not mentioned, maybe 1850.", unanswerable) == 0.0  # names a number
    assert ref.reference_score("Salt Lane.", unanswerable) == 0.0
    assert ref.reference_score("Mill Row", {"answer": ["Salt Lane", "Mill Row"]}) == 10.0
    assert ref.reference_score("anything", {"query": "no answer field"}) is None


def test_hybrid_reward_and_bad_input():
    assert ref.hybrid_reward(6.0, 10.0, 0.25) == pytest.approx(0.75 * 6 + 0.25 * 10)
    assert ref.hybrid_reward(6.0, 0.0, 0.0) == 6.0
    with pytest.raises(ref.ReferenceAnswerError, match=r"weight must be in \[0, 1\], got 1.5"):
        ref.hybrid_reward(6.0, 0.0, 1.5)
    with pytest.raises(ref.ReferenceAnswerError, match=r"p\.jsonl: line 4: field 'answer' must be a non-"):
        ref.reference_score("x", {"answer": [""]}, where="p.jsonl: line 4")
    with pytest.raises(ref.ReferenceAnswerError, match="field 'distractors' must be a list of strings"):
        ref.reference_score("x", {"answer": "a", "distractors": "b"})
    with pytest.raises(ref.ReferenceAnswerError, match="unknown reference metric 'bleu'"):
        ref.reference_score("x", ROW, "bleu")

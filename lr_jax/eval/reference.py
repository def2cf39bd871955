"""Rule-based rewards against a reference answer, for prompts whose rows carry one (field ``answer``).

    row = {"answer": "1874", "distractors": ["1838"]}
    reference_score("She came in 1874.", row, "match")          # -> 10.0 (0-10, like a judge dimension)
    hybrid_reward(6.2, 10.0, weight=0.5)                       # -> 8.1 = 0.5 * judge + 0.5 * reference

The judge's four dimensions say whether an answer is helpful, logical, faithful to the document and
complete; none of them knows the right answer. Where a task has one (QA with a reference), a rule-based term
does, which is the hybrid reward QwenLong-L1 trains with. `judge.pairs --reference-weight` ranks a
prompt's responses by it; the loop's held-out accuracy is `reference_score` with ``metric > 0``.

Metrics (`METRICS`), each 0-10:

- ``exact``: the normalised response equals a normalised reference (LongBench's English normalisation).
- ``match``: the response's first sentence holds a reference as a whole-word phrase and none of the row's
  ``distractors`` (wrong candidates: hedging between them never counts). When the reference is an abstention
  (`ABSTAIN`, "not stated"), a sentence saying the text does not give it counts, unless it also names a
  number or a distractor.
- ``f1``: LongBench's token F1 (`qa_f1_score`), the best over the references.

A row's reference: ``answer`` is a non-empty string or a list of them; ``distractors`` (optional) a list of
strings. Pure Python: the judge imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from lr_jax.errors import LrJaxError
from lr_jax.eval.metrics import qa_f1_score

ABSTAIN = "not stated"  # the reference answer of a question whose answer is not in the document
# Ways an instruct model says "not stated" (the list grew from SmolLM2's own answers: "The chronicle does not
# provide a specific year ..."); matched on the normalised first sentence.
ABSTAIN_PHRASES = (ABSTAIN, "not mentioned", "does not mention", "does not say", "doesn t say",
                   "does not state", "does not provide", "doesn t provide", "not provided",
                   "does not specify", "not specified", "not given", "no information", "unknown")


class ReferenceAnswerError(LrJaxError, ValueError):
    """A prompt row's reference answer is missing or malformed; the message names the file, line and field."""


_PUNCT_RE = re.compile(r"[^\w\s]")
_FIRST_SENTENCE_RE = re.compile(r"(?<=[.!?])\s|\n")
_NUMBER_RE = re.compile(r"\b\d+\b")


def _norm(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces (articles kept: "The Mill" is a street's name)."""
    return " ".join(_PUNCT_RE.sub(" ", text.lower()).split())


def _has(text: str, phrase: str) -> bool:
    p = _norm(phrase)
    return bool(p) and f" {p} " in f" {text} "


def first_sentence(response: str) -> str:
    return _FIRST_SENTENCE_RE.split(response.strip(), maxsplit=1)[0]


def answer_match(response: str, answers: Sequence[str], distractors: Sequence[str] = ()) -> bool:
    """The ``match`` rule (module docstring): first sentence, whole words, no distractor, abstentions."""
    text = _norm(first_sentence(response))
    if any(_has(text, d) for d in distractors):
        return False
    for answer in answers:
        if _norm(answer) == ABSTAIN:
            if any(_has(text, p) for p in ABSTAIN_PHRASES) and not _NUMBER_RE.search(text):
                return True
        elif _has(text, answer):
            return True
    return False


def _exact(response: str, answers: list[str], distractors: list[str]) -> float:
    from lr_jax.eval.metrics import normalize_answer

    return float(any(normalize_answer(response) == normalize_answer(a) for a in answers))


def _match(response: str, answers: list[str], distractors: list[str]) -> float:
    return float(answer_match(response, answers, distractors))


def _f1(response: str, answers: list[str], distractors: list[str]) -> float:
    return max(qa_f1_score(response, a) for a in answers)


# name -> (response, answers, distractors) -> [0, 1]
METRICS: dict[str, Callable[[str, list[str], list[str]], float]] = {"exact": _exact, "match": _match,
                                                                     "f1": _f1}


def references(row: dict[str, Any], where: str = "prompt row") -> tuple[list[str], list[str]] | None:
    """(answers, distractors) of a prompt row, None when it has no ``answer``; a malformed one raises
    `ReferenceAnswerError` naming ``where`` (e.g. "prompts.jsonl: line 3") and the field."""
    answer = row.get("answer")
    if answer is None:
        return None
    answers = [answer] if isinstance(answer, str) else answer
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) and a.strip() for a in answers)):
        raise ReferenceAnswerError(f"{where}: field 'answer' must be a non-empty string or a list of them, "
                                   f"got {answer!r}")
    distractors = row.get("distractors", [])
    if not isinstance(distractors, list) or not all(isinstance(d, str) for d in distractors):
        raise ReferenceAnswerError(
            f"{where}: field 'distractors' must be a list of strings, got {distractors!r}")
    return answers, distractors


def reference_score(response: str, row: dict[str, Any], metric: str = "match",
                    where: str = "prompt row") -> float | None:
    """0-10 score of `response` against the row's reference under `metric`; None when the row has none."""
    if metric not in METRICS:
        raise ReferenceAnswerError(f"unknown reference metric {metric!r}; known: {sorted(METRICS)}")
    refs = references(row, where)
    if refs is None:
        return None
    return 10.0 * METRICS[metric](response, *refs)


def hybrid_reward(judge_reward: float, reference: float, weight: float) -> float:
    """``(1 - weight) * judge_reward + weight * reference``, both 0-10; weight in [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ReferenceAnswerError(f"reference weight must be in [0, 1], got {weight}")
    return (1.0 - weight) * judge_reward + weight * reference

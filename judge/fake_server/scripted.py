"""The scripted judge: an answer to each of our prompt kinds, from word overlap, so its scores mean
something (statements are the response's sentences, support is the share of a statement's words found in
the evidence, completeness is the share of collected words the response covers), and the benchmark ratings
of ``judge.eval``. The one place the fake server's answers come from (online and in batches): a new
scripted mode (e.g. a rule-based reward) is another function beside `scripted_answer`, picked there.

`scripted_answer(kind, blocks)` -> the JSON object the kind's schema asks for; `as_tagged` renders it as
tagged text; `BLOCK_RE` finds the ``<name>...</name>`` blocks of a user message.
"""

from __future__ import annotations

import re
from typing import Any

from judge.chunking import retrieval_terms

BLOCK_RE = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)
_SENT_RE = re.compile(r"[^.!?。！？\n]+[.!?。！？]?")
_LIST_MARKER_RE = re.compile(r"^(?:[-*•]+|\d+[.)])\s+")
_FILLER = ("hope this helps", "great question", "let me know", "in summary", "overall", "i hope", "希望")


def _words(text: str) -> set[str]:
    return {w for w in retrieval_terms(text) if len(w) >= 3 or not w.isascii()}


def _sentences(text: str) -> list[str]:
    out = []
    for s in _SENT_RE.findall(text):
        # Drop a list marker ("- ", "2) ", "3. "), not a leading number: "1850." is an answer, not a bullet.
        s = _LIST_MARKER_RE.sub("", s.strip()).strip()
        if s:
            out.append(s)
    return out


def _is_statement(sentence: str) -> bool:
    """A factual claim worth checking: not a question or a pleasantry, and at least one key word.

    One key word is enough: a short answer ("Ashford.") claims a fact as much as a sentence does, and with
    a three-word minimum a wrong one-word answer was never checked, so it kept faithfulness 10.
    """
    return bool(_words(sentence)) and not any(f in sentence.lower() for f in _FILLER) \
        and not sentence.endswith("?")


def _support_level(ratio: float) -> str:
    """Support of a statement from the share of its key words found in the evidence.

    "full" needs every key word: a statement that copies the document's wording but swaps in one value the
    document never mentions ("The capital of Veloria is Dunford." when it says Glenford) is only partly
    supported. With a lower bar such a wrong answer scored as faithful as the right one, and the loop's
    judged rewards could not tell them apart (lr_jax.longreward's demo depends on that difference).
    """
    return "full" if ratio >= 0.999 else "partial" if ratio >= 0.5 else "none"


def scripted_answer(kind: str, blocks: dict[str, str]) -> dict[str, Any]:
    """The scripted answer for one prompt kind, as the JSON object the schema asks for."""
    if kind.startswith("eval_"):
        return eval_rating(kind, blocks)
    query, response = blocks.get("question", ""), blocks.get("answer", "")
    if kind == "helpfulness":
        # Judged from the question and the answer alone (no document, as LongReward's helpfulness is): an
        # answer that states something earns the base 6 whether it is right or wrong (that is faithfulness's
        # and completeness's to tell), more for the question's key terms and for detail. No statement (an
        # empty answer, "?", a pleasantry) answers nothing: 0. With the base at 0 every one-word answer scored
        # 0.1, so an empty answer (faithfulness 10: nothing claimed) out-scored a direct wrong one.
        q, r = _words(query), _words(response)
        if not any(_is_statement(s) for s in _sentences(response)):
            return {"reasoning": "The response does not answer the question.", "score": 0.0}
        cover = len(q & r) / max(1, len(q))
        length = min(1.0, len(r) / 40)
        score = round(6 + 2 * cover + 2 * length, 1)
        return {
            "reasoning": f"The answer uses {len(q & r)} of the question's {len(q)} key terms.",
            "score": score,
        }
    if kind == "logicality":
        # Sentences without a key word ("." or "...") argue nothing: with them an empty answer scored 9.
        sents = [s for s in _sentences(response) if _words(s)]
        if not sents:
            return {"reasoning": "There is no argument to assess.", "score": 0.0}
        dup = 1 - len({s.lower() for s in sents}) / len(sents)
        score = round(max(0.0, min(10.0, 9.0 - 8 * dup)), 1)
        return {"reasoning": f"{len(sents)} sentences, {dup:.0%} repeated.", "score": score}
    if kind == "fact_extract":
        return {"statements": [s for s in _sentences(response) if _is_statement(s)][:20]}
    if kind == "fact_support":
        s, e = _words(blocks.get("statement", "")), _words(blocks.get("evidence", ""))
        ratio = len(s & e) / max(1, len(s))
        return {
            "reasoning": f"{ratio:.0%} of the statement's key words occur in the evidence.",
            "support": _support_level(ratio),
        }
    if kind == "info_extract":
        q = _words(query)
        hits = [s for s in _sentences(blocks.get("document_part", "")) if len(_words(s) & q) >= 2]
        if not hits:
            return {"relevant": False, "info": ""}
        return {"relevant": True, "info": " ".join(hits[:5])}
    if kind == "completeness":
        c = _words(blocks.get("collected_information", "").replace("NONE", ""))
        r = _words(response)
        cover = len(c & r) / max(1, len(c))
        score = round(min(10.0, 20 * cover), 1) if c else 5.0
        return {"reasoning": f"The answer covers {cover:.0%} of the collected key words.", "score": score}
    return {"reasoning": f"unknown task {kind!r}", "score": 5.0}


# benchmark ratings (judge.eval: eval_qa 1-3, eval_summ 1-5, eval_chat 1-10)

EVAL_SCALES = {"eval_qa": 3, "eval_summ": 5, "eval_chat": 10}
UNRATEABLE = "UNRATEABLE"  # a prediction containing this gets an unparseable rating (null), every time


def eval_rating(kind: str, blocks: dict[str, str]) -> dict[str, Any]:
    """Rating = 1 + round((scale - 1) x the share of the reference's key words the answer contains)."""
    answer = blocks.get("assistant_answer", "")
    if UNRATEABLE in answer:
        return {"reasoning": "I cannot decide.", "rating": None}
    ref, ans = _words(blocks.get("reference_answer", "")), _words(answer)
    cover = len(ref & ans) / max(1, len(ref))
    top = EVAL_SCALES.get(kind, 10)
    rating = 1 + round((top - 1) * cover)
    return {"reasoning": f"The answer has {len(ref & ans)} of the reference's {len(ref)} key words.",
            "rating": rating}


def as_tagged(kind: str, obj: dict[str, Any]) -> str:
    if "rating" in obj:
        return f"<reasoning>{obj['reasoning']}</reasoning>\n<rating>{obj['rating']}</rating>"
    if "statements" in obj:
        return (
            "\n".join(f"<statement>{s}</statement>" for s in obj["statements"])
            or "<statement>NONE</statement>"
        )
    if "support" in obj:
        return f"<reasoning>{obj['reasoning']}</reasoning>\n<support>{obj['support']}</support>"
    if "info" in obj:
        return f"<info>{obj['info'] if obj['relevant'] else 'NONE'}</info>"
    return f"<reasoning>{obj['reasoning']}</reasoning>\n<score>{obj['score']}</score>"





GARBLE = "Well, it depends on how you look at it; I would rather not commit to a verdict."

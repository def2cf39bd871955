"""The rating questions of ``judge.eval``: which prompt a task gets, its scale, the prompt text
(``judge/prompts/eval_*.txt``) and its version, and parsing the judge's integer rating."""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from judge.parsing import Parsed
from lr_jax.eval.benchmarks import category_of

_PROMPTS = Path(__file__).parent.parent / "prompts"
SCALES: dict[str, int] = {"eval_qa": 3, "eval_summ": 5, "eval_chat": 10}
COMPLETION_TOKENS_GUESS = 60  # reasoning sentence + rating, for --dry-run estimates




def kind_of(task: str) -> str | None:
    """The rating prompt of a task: eval_chat / eval_qa / eval_summ; None for tasks that are not judged."""
    cat = category_of(task)
    if cat == "LongBench-Chat":
        return "eval_chat"
    if cat in ("S-Doc", "M-Doc"):
        return "eval_qa"
    if cat == "Summ":
        return "eval_summ"
    return None


def item_score(kind: str, rating: int) -> float:
    """Rating -> [0, 1]: QA (r-1)/2, summaries (r-1)/4, LongBench-Chat r/10 (so 100 x mean = 10 x rating)."""
    if kind == "eval_chat":
        return rating / 10
    return (rating - 1) / (SCALES[kind] - 1)


# --------------------------------------------------------------------------------------------- prompts

_REPLY_JSON = ('Reply with one JSON object only: {"reasoning": "<your comparison>", '
               '"rating": <integer %d-%d>}.')
_REPLY_TAGGED = ("Write your comparison inside <reasoning></reasoning>, then the rating (an integer from %d "
                 "to %d) inside <rating></rating>.")


def _schema(top: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"reasoning": {"type": "string"},
                       "rating": {"type": "integer", "minimum": 1, "maximum": top}},
        "required": ["reasoning", "rating"],
        "additionalProperties": False,
    }


def json_format(kind: str) -> dict[str, Any]:
    top = SCALES[kind]
    return {"type": "json_schema",
            "json_schema": {"name": f"rating_1_{top}", "schema": _schema(top), "strict": True}}


@cache
def _template(kind: str) -> tuple[Template, Template]:
    system, user = (_PROMPTS / f"{kind}.txt").read_text(encoding="utf-8").split("\n---user---\n", 1)
    return Template(system.strip()), Template(user.strip())


def _version() -> str:
    h = hashlib.sha256()
    for kind in SCALES:
        h.update((_PROMPTS / f"{kind}.txt").read_bytes())
    h.update(repr((_REPLY_JSON, _REPLY_TAGGED, [json_format(k) for k in SCALES])).encode())
    return "eval-v1-" + h.hexdigest()[:10]


EVAL_PROMPT_VERSION = _version()


def render(kind: str, mode: str, **values: str) -> list[dict[str, str]]:
    """The chat messages of one rating question (``mode`` 'json' or 'tagged' picks the format sentence)."""
    system, user = _template(kind)
    top = SCALES[kind]
    fmt = (_REPLY_JSON if mode == "json" else _REPLY_TAGGED) % (1, top)
    return [{"role": "system", "content": system.substitute()},
            {"role": "user", "content": user.substitute(**values) + "\n\n" + fmt}]


def examples_block(shots: list[tuple[str, int]]) -> str:
    """LongBench-Chat's scored example answers for one question, as prompt text ('' without few-shots)."""
    if not shots:
        return ""
    parts = ["\nOther answers to the same question, with the ratings they were given; use them to calibrate "
             "your scale:\n"]
    for i, (answer, score) in enumerate(shots, start=1):
        parts.append(f"<example_answer_{i}>\n{answer}\n</example_answer_{i}>\n"
                     f"<example_rating_{i}>\n{score}\n</example_rating_{i}>\n")
    return "\n".join(parts)


def prompt_values(kind: str, row: dict[str, Any], reference: str,
                  shots: list[tuple[str, int]] | None) -> dict[str, str]:
    values = {"reference": reference, "prediction": row["prediction"]}
    if kind == "eval_summ":
        values["request"] = row["query"].strip() or "A summary of the whole document."
    else:
        values["query"] = row["query"]
    if kind == "eval_chat":
        values["examples"] = examples_block(shots or [])
    return values


# --------------------------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def _json_object(text: str) -> dict[str, Any] | None:
    cands = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    a, b = text.find("{"), text.rfind("}")
    if 0 <= a < b:
        cands.append(text[a:b + 1])
    for c in cands:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        if not re.fullmatch(r"\d+(?:\.0+)?", v):
            return None
        v = float(v)
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return v if isinstance(v, int) else None


def parse_rating(text: str, top: int) -> Parsed:
    """The judge's integer rating in [1, top]: JSON ``rating``, else ``<rating>N</rating>``, else a trailing
    ``[[N]]``. Anything else (no rating, a fraction, out of range, null) is ``ok=False`` with the reason."""
    obj = _json_object(text)
    reasoning = ""
    if obj is not None and "rating" in obj:
        value, reasoning = obj["rating"], str(obj.get("reasoning", ""))
    else:
        tags = re.findall(r"<rating>(.*?)</rating>", text, re.S | re.I)
        brackets = re.findall(r"\[\[([^\]]+)\]\]", text)
        if tags:
            value = tags[-1]
        elif brackets:
            value = brackets[-1]
        else:
            return Parsed(False, error="no rating found (neither JSON 'rating', <rating> tag nor [[N]])")
        m = re.findall(r"<reasoning>(.*?)</reasoning>", text, re.S | re.I)
        reasoning = m[-1].strip() if m else text.strip()
    r = _as_int(value)
    if r is None:
        return Parsed(False, error=f"rating {value!r} is not an integer")
    if not 1 <= r <= top:
        return Parsed(False, error=f"rating {r} is outside 1-{top}")
    return Parsed(True, {"rating": r, "reasoning": reasoning})

"""Judge output formats: JSON schemas for servers with structured output, tagged text as the fallback.

Every parser returns a `Parsed` (ok + value, or ok=False + error). A parse failure is a typed outcome that the
client retries and finally records as a failed dimension; it is never turned into a number here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from judge.schema import SUPPORT_LEVELS

# Which output shape each prompt kind produces.
OUTPUT_OF_KIND: dict[str, str] = {
    "helpfulness": "score",
    "logicality": "score",
    "completeness": "score",
    "fact_extract": "statements",
    "fact_support": "support",
    "info_extract": "info",
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "score": {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "score": {"type": "number", "minimum": 0, "maximum": 10},
        },
        "required": ["reasoning", "score"],
        "additionalProperties": False,
    },
    "statements": {
        "type": "object",
        "properties": {"statements": {"type": "array", "items": {"type": "string"}}},
        "required": ["statements"],
        "additionalProperties": False,
    },
    "support": {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "support": {"type": "string", "enum": list(SUPPORT_LEVELS)},
        },
        "required": ["reasoning", "support"],
        "additionalProperties": False,
    },
    "info": {
        "type": "object",
        "properties": {"relevant": {"type": "boolean"}, "info": {"type": "string"}},
        "required": ["relevant", "info"],
        "additionalProperties": False,
    },
}

_REPLY_EN = "Reply with one JSON object only: "
_REPLY_ZH = "只输出一个JSON对象："
_JSON_INSTR = {
    "en": {
        "score": _REPLY_EN + '{"reasoning": "<your analysis>", "score": <number 0-10>}.',
        "statements": _REPLY_EN + '{"statements": ["<statement 1>", "<statement 2>", ...]}.',
        "support": _REPLY_EN + '{"reasoning": "<why>", "support": "full" | "partial" | "none"}.',
        "info": _REPLY_EN + '{"relevant": true | false, "info": "<the relevant information>"}.',
    },
    "zh": {
        "score": _REPLY_ZH + '{"reasoning": "<你的分析>", "score": <0到10之间的数字>}。',
        "statements": _REPLY_ZH + '{"statements": ["<陈述1>", "<陈述2>", ...]}。',
        "support": _REPLY_ZH + '{"reasoning": "<理由>", "support": "full" | "partial" | "none"}。',
        "info": _REPLY_ZH + '{"relevant": true | false, "info": "<相关信息>"}。',
    },
}
_TAG_INSTR = {
    "en": {
        "score": "Write your analysis inside <reasoning></reasoning>, then the number inside "
        "<score></score>.",
        "statements": "Put each statement inside its own <statement></statement> tags. If there are none, "
        "write <statement>NONE</statement>.",
        "support": "Write your explanation inside <reasoning></reasoning>, then exactly one of full, "
        "partial or none inside <support></support>.",
        "info": "Write the relevant information inside <info></info>, or <info>NONE</info> if nothing "
        "is relevant.",
    },
    "zh": {
        "score": "把分析写在 <reasoning></reasoning> 中，再把分数写在 <score></score> 中。",
        "statements": "每条陈述单独放在一对 <statement></statement> 标签中。"
        "若没有任何陈述，写 <statement>NONE</statement>。",
        "support": "把理由写在 <reasoning></reasoning> 中，"
        "再在 <support></support> 中写 full、partial 或 none 之一。",
        "info": "把相关信息写在 <info></info> 中；若没有相关信息，写 <info>NONE</info>。",
    },
}
# Everything the judge sees besides the templates; part of the prompt-template version (judge.prompts).
FORMAT_TEXT = repr((_JSON_INSTR, _TAG_INSTR, SCHEMAS))


def format_instruction(output: str, lang: str, mode: str) -> str:
    return (_JSON_INSTR if mode == "json" else _TAG_INSTR)[lang][output]


def response_format(output: str) -> dict[str, Any]:
    """The OpenAI ``response_format`` for a strict JSON schema answer."""
    return {"type": "json_schema", "json_schema": {"name": output, "schema": SCHEMAS[output], "strict": True}}


@dataclass
class Parsed:
    ok: bool
    value: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_NONE_WORDS = {"none", "nothing", "n/a", "无", "没有", "无相关信息"}


def _json_object(text: str) -> dict[str, Any] | None:
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE_RE.finditer(text))]
    a, b = text.find("{"), text.rfind("}")
    if 0 <= a < b:
        candidates.append(text[a : b + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _tag(text: str, name: str) -> str | None:
    m = re.findall(rf"<{name}>(.*?)</{name}>", text, re.S | re.I)
    return m[-1].strip() if m else None


def _score_value(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*", v)
        v = float(m.group(1)) if m else None
    if isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 10:
        return float(v)
    return None


def parse_score(text: str) -> Parsed:
    obj = _json_object(text)
    if obj is not None and "score" in obj:
        s = _score_value(obj["score"])
        if s is None:
            return Parsed(False, error=f"score {obj['score']!r} is not a number in [0, 10]")
        return Parsed(True, {"score": s, "reasoning": str(obj.get("reasoning", ""))})
    tagged = _tag(text, "score")
    if tagged is None:  # last resort for servers that ignore both formats: "Score: 7" / "[[7]]" at the end
        m = re.search(
            r"(?:score|评分|分数)\s*[:：]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\**\s*$", text, re.I
        )
        m = m or re.search(r"\[\[(\d+(?:\.\d+)?)\]\]\s*$", text)
        tagged = m.group(1) if m else None
    if tagged is None:
        return Parsed(False, error="no score found (neither JSON 'score' nor <score> tag)")
    s = _score_value(tagged)
    if s is None:
        return Parsed(False, error=f"score {tagged!r} is not a number in [0, 10]")
    return Parsed(True, {"score": s, "reasoning": _tag(text, "reasoning") or text.strip()})


def parse_statements(text: str) -> Parsed:
    obj = _json_object(text)
    if obj is not None and "statements" in obj:
        st = obj["statements"]
        if not isinstance(st, list) or not all(isinstance(s, str) for s in st):
            return Parsed(False, error="'statements' is not a list of strings")
        return Parsed(True, {"statements": [s.strip() for s in st if s.strip()]})
    found = re.findall(r"<statement>(.*?)</statement>", text, re.S | re.I)
    if not found:
        return Parsed(False, error="no statements found (neither JSON 'statements' nor <statement> tags)")
    return Parsed(
        True, {"statements": [s.strip() for s in found if s.strip() and s.strip().lower() != "none"]}
    )


def parse_support(text: str) -> Parsed:
    obj = _json_object(text)
    if obj is not None and "support" in obj:
        sup, reasoning = str(obj["support"]).strip().lower(), str(obj.get("reasoning", ""))
    else:
        sup, reasoning = (_tag(text, "support") or "").lower(), _tag(text, "reasoning") or ""
    if sup not in SUPPORT_LEVELS:
        return Parsed(False, error=f"support verdict {sup!r} is not one of full/partial/none")
    return Parsed(True, {"support": sup, "reasoning": reasoning})


def parse_info(text: str) -> Parsed:
    obj = _json_object(text)
    if obj is not None and "info" in obj:
        info = str(obj["info"]).strip()
        relevant = obj.get("relevant", True) is not False
    else:
        tagged = _tag(text, "info")
        if tagged is None:
            return Parsed(False, error="no information found (neither JSON 'info' nor <info> tag)")
        info, relevant = tagged, True
    if not relevant or not info or info.strip(" .。").lower() in _NONE_WORDS:
        return Parsed(True, {"info": None})
    return Parsed(True, {"info": info})


PARSERS = {"score": parse_score, "statements": parse_statements, "support": parse_support, "info": parse_info}


def parse(kind: str, text: str) -> Parsed:
    return PARSERS[OUTPUT_OF_KIND[kind]](text)

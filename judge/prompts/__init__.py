"""Prompt templates (our own wording, English and Chinese), few-shot examples and the prompt-template version.

Each ``<kind>.<lang>.txt`` holds the system message, a ``---user---`` line, then the user message: the task's
instructions, the variable ``<name>\n$name\n</name>`` blocks, and a closing instruction (``string.Template``,
so braces in documents are harmless). ``examples.json`` holds 3–4 scored examples per kind and language, in
our own words, following the structure of the LongReward paper's judge prompts (analysis first, then the
score: for helpfulness a partial answer, a "not in the document" answer, a complete one and an off-topic one;
for support a contradicted number, a near-verbatim match, a partly supported and an unsupported claim; …).

Two layouts (`LAYOUTS`, ``judge.score --prompt-layout``):

- ``static-first`` (default): the system message holds everything that never changes — role, instructions,
  closing instruction, the examples and the output-format sentence — and the user message holds only the
  variable blocks, longest-shared first (the collected information before the question and answer, the
  evidence before the statement). Every call of a kind and language starts with the same bytes, which is what
  provider prompt (prefix) caching needs; calls that share a chunk or collected information share more.
- ``interleaved``: the layout before issue 14 — instructions, variable blocks, closing instruction and format
  sentence in the user message, no examples. Kept to measure what the static-first layout saves.

``PROMPT_VERSION`` hashes every template, the examples and the format sentences/schemas and goes into the
cache key, so editing any prompt invalidates the cached answers (global on purpose: simple and never stale).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from judge.parsing import FORMAT_TEXT, OUTPUT_OF_KIND, format_instruction

_DIR = Path(__file__).parent
KINDS = tuple(OUTPUT_OF_KIND)
LANGS = ("en", "zh")
LAYOUTS = ("static-first", "interleaved")
_BLOCK = re.compile(r"^<(\w+)>\n\$\w+\n</\1>$", re.M)
_EXAMPLES_HEAD = {
    "en": "Examples (invented, not about the document you will judge), each with the reply expected:",
    "zh": "示例（虚构，与你要评判的文档无关），每个示例后是期望的回复：",
}
_EXAMPLE = {"en": "Example", "zh": "示例"}
_REPLY = {"en": "Reply:", "zh": "回复："}
_NOW = {"en": "Now the real task. The input follows.", "zh": "下面是真正要评判的内容。"}


@cache
def _template(kind: str, lang: str) -> tuple[Template, Template]:
    text = (_DIR / f"{kind}.{lang}.txt").read_text(encoding="utf-8")
    system, user = text.split("\n---user---\n", 1)
    return Template(system.strip()), Template(user.strip())


@cache
def _examples() -> dict[str, Any]:
    return json.loads((_DIR / "examples.json").read_text(encoding="utf-8"))


def _tagged(shape: str, out: dict[str, Any]) -> str:
    """An example's reply in the tagged format that `judge.parsing` reads."""
    if shape == "statements":
        return (
            "\n".join(f"<statement>{x}</statement>" for x in out["statements"])
            or "<statement>NONE</statement>"
        )
    if shape == "info":
        return f"<info>{out['info'] if out['relevant'] else 'NONE'}</info>"
    last = "support" if shape == "support" else "score"
    return f"<reasoning>{out['reasoning']}</reasoning>\n<{last}>{out[last]}</{last}>"


@cache
def examples_text(kind: str, lang: str, mode: str) -> str:
    """The few-shot block of ``kind`` in ``lang``, replies in ``mode`` ('json' or 'tagged'). Byte-stable."""
    shape = OUTPUT_OF_KIND[kind]
    parts = [_EXAMPLES_HEAD[lang]]
    for i, ex in enumerate(_examples()[kind][lang], 1):
        blocks = "\n\n".join(f"<{k}>\n{v}\n</{k}>" for k, v in ex["input"].items())
        out = ex["output"]
        reply = json.dumps(out, ensure_ascii=False) if mode == "json" else _tagged(shape, out)
        parts.append(f"### {_EXAMPLE[lang]} {i}\n{blocks}\n{_REPLY[lang]}\n{reply}")
    return "\n\n".join(parts)


@cache
def _static_first(kind: str, lang: str, mode: str) -> tuple[str, Template]:
    """(system message, user template) of the static-first layout, from the same template file: the user
    template's instructions (before the first variable block) and closing (after the last) move into the
    system message with the examples and the format sentence; the user message keeps only the blocks."""
    system, user = _template(kind, lang)
    text = user.template
    blocks = list(_BLOCK.finditer(text))
    head, tail = text[: blocks[0].start()].strip(), text[blocks[-1].end() :].strip()
    if "$" in head or "$" in tail:
        raise ValueError(f"{kind}.{lang}.txt: a placeholder outside a <block> cannot be static")
    static = "\n\n".join(
        x
        for x in (
            system.substitute(),
            head,
            tail,
            examples_text(kind, lang, mode),
            format_instruction(OUTPUT_OF_KIND[kind], lang, mode),
            _NOW[lang],
        )
        if x
    )
    return static, Template(text[blocks[0].start() : blocks[-1].end()])


def _version() -> str:
    h = hashlib.sha256()
    for kind in KINDS:
        for lang in LANGS:
            h.update((_DIR / f"{kind}.{lang}.txt").read_bytes())
    h.update((_DIR / "examples.json").read_bytes())
    h.update(FORMAT_TEXT.encode())
    h.update(repr((LAYOUTS, _EXAMPLES_HEAD, _EXAMPLE, _REPLY, _NOW)).encode())
    return "v2-" + h.hexdigest()[:10]


PROMPT_VERSION = _version()


def render(
    kind: str, lang: str, mode: str, layout: str = "static-first", **values: str
) -> list[dict[str, str]]:
    """Chat messages for one judge call. ``mode`` is 'json' or 'tagged' (decides the format sentence and the
    examples' replies); ``layout`` one of `LAYOUTS`."""
    if layout == "static-first":
        static, blocks = _static_first(kind, lang, mode)
        return [
            {"role": "system", "content": static},
            {"role": "user", "content": blocks.substitute(**values)},
        ]
    if layout != "interleaved":
        raise ValueError(f"unknown prompt layout {layout!r}; one of {LAYOUTS}")
    system, user = _template(kind, lang)
    body = user.substitute(**values)
    return [
        {"role": "system", "content": system.substitute()},
        {"role": "user", "content": body + "\n\n" + format_instruction(OUTPUT_OF_KIND[kind], lang, mode)},
    ]

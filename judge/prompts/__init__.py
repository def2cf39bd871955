"""Prompt templates (our own wording, English and Chinese) and the prompt-template version.

Each ``<kind>.<lang>.txt`` holds the system message, a ``---user---`` line, then the user message, with
``$name`` placeholders (``string.Template``, so braces in documents are harmless). The output-format sentence
(JSON or tagged) is appended by `render`. ``PROMPT_VERSION`` hashes every template and the format
sentences/schemas and goes into the cache key, so editing any prompt invalidates the cached answers (global on
purpose: simple and never stale).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from string import Template

from judge.parsing import FORMAT_TEXT, OUTPUT_OF_KIND, format_instruction

_DIR = Path(__file__).parent
KINDS = tuple(OUTPUT_OF_KIND)
LANGS = ("en", "zh")


@cache
def _template(kind: str, lang: str) -> tuple[Template, Template]:
    text = (_DIR / f"{kind}.{lang}.txt").read_text(encoding="utf-8")
    system, user = text.split("\n---user---\n", 1)
    return Template(system.strip()), Template(user.strip())


def _version() -> str:
    h = hashlib.sha256()
    for kind in KINDS:
        for lang in LANGS:
            h.update((_DIR / f"{kind}.{lang}.txt").read_bytes())
    h.update(FORMAT_TEXT.encode())
    return "v1-" + h.hexdigest()[:10]


PROMPT_VERSION = _version()


def render(kind: str, lang: str, mode: str, **values: str) -> list[dict[str, str]]:
    """Chat messages for one judge call. ``mode`` is 'json' or 'tagged' (decides the format sentence)."""
    system, user = _template(kind, lang)
    body = user.substitute(**values)
    return [
        {"role": "system", "content": system.substitute()},
        {"role": "user", "content": body + "\n\n" + format_instruction(OUTPUT_OF_KIND[kind], lang, mode)},
    ]

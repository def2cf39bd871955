"""Decoding the server's answers: a chat completion (from the SDK online, or a Batch API output line's JSON
body) or an embeddings answer, into a `Completion`; `MalformedAnswer` for anything else.

The SDK does not validate a 200's body: with the wrong content type it hands back the raw text, and a JSON
object of another shape (``{"error": ...}``, no ``choices``) becomes a model with missing fields. So every
field is checked here, and the transport retries a malformed answer like a 5xx.
"""

from __future__ import annotations

import types
from typing import Any, NamedTuple

from judge.errors import MalformedAnswer


class Completion(NamedTuple):
    """One chat completion's text and token counts. Decoded answers may lack counts (None: the server sent
    none; the client then estimates them); what the client hands on and caches always has them."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int = 0  # prompt tokens the server read from its prompt (prefix) cache; 0 if unreported


def chat_completion(resp: Any) -> Completion:
    """The `Completion` of an SDK chat completion; `MalformedAnswer` for anything else. Cached tokens are
    ``usage.prompt_tokens_details.cached_tokens`` (OpenAI, vLLM) or ``usage.cache_read_input_tokens``
    (Anthropic-style gateways)."""
    if isinstance(resp, str | bytes):
        head = resp[:80] if isinstance(resp, str) else resp[:80].decode("utf-8", "replace")
        raise MalformedAnswer(f"the server answered with text, not a JSON chat completion ({head!r})")
    extra = getattr(resp, "model_extra", None) or {}
    if isinstance(extra, dict) and extra.get("error"):
        err = extra["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise MalformedAnswer(f"HTTP 200 with an error object: {str(msg)[:200]}")
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedAnswer("the answer has no choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if content is None:
        content = ""  # a null content is an empty answer: unparseable, so re-asked like any other
    if not isinstance(content, str):
        raise MalformedAnswer(f"choices[0].message.content is {type(content).__name__}, not text")
    usage = getattr(resp, "usage", None)

    def count(name: str) -> int | None:
        v = getattr(usage, name, None) if usage is not None else None
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 else None

    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if cached is None:  # Anthropic-style usage (extra fields are attributes of the SDK's models)
        cached = count("cache_read_input_tokens")
    ok = isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0
    return Completion(content, count("prompt_tokens"), count("completion_tokens"), int(cached) if ok else 0)


def chat_answer_from_body(body: Any) -> Completion:
    """`chat_completion` for a chat completion that arrived as JSON (a Batch API output line's
    ``response.body``); `MalformedAnswer` when it is not one. As lenient as the SDK is online (it does not
    validate a 200's body either): missing optional fields such as ``usage.total_tokens`` are fine."""
    if not isinstance(body, dict):
        raise MalformedAnswer(f"the batch answer's body is {type(body).__name__}, not a JSON object")
    if body.get("error"):
        err = body["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise MalformedAnswer(f"HTTP 200 with an error object: {str(msg)[:200]}")

    def ns(v: Any) -> Any:  # attribute access like the SDK's models, for `chat_completion`
        if isinstance(v, dict):
            return types.SimpleNamespace(**{str(k): ns(x) for k, x in v.items()})
        return [ns(x) for x in v] if isinstance(v, list) else v

    return chat_completion(ns(body))


def embeddings_answer(resp: Any, n: int) -> tuple[list[list[float]], int | None]:
    """(vectors in input order, prompt tokens) of an embeddings answer for ``n`` inputs; else
    `MalformedAnswer`."""
    data = getattr(resp, "data", None)
    if isinstance(resp, str | bytes) or not isinstance(data, list) or len(data) != n:
        raise MalformedAnswer(f"not an embeddings answer for {n} input(s)")
    try:
        vecs = [list(map(float, d.embedding)) for d in sorted(data, key=lambda d: d.index)]
    except (AttributeError, TypeError, ValueError) as e:
        raise MalformedAnswer(f"bad embeddings data ({e})") from None
    usage = getattr(resp, "usage", None)
    pt = getattr(usage, "prompt_tokens", None) if usage is not None else None
    return vecs, (int(pt) if isinstance(pt, int) and not isinstance(pt, bool) else None)

"""The fake server as a scripted *policy*, an inference engine's stand-in (`lr_jax.sample --engine openai`):
a chat request without a judge system message is answered like vLLM answers a sampling request.

`policy_answer(req)` -> (choices, prompt tokens, completion tokens): ``n`` choices, each a deterministic
function of (messages, temperature, top_p, seed, choice index) — at temperature 0 every choice is the same
greedy answer whatever the seed, as on a real engine. A "token" is one word of the answer (from the user
message's words); ``max_tokens`` cuts the answer (``finish_reason`` "length"); ``logprobs: true`` adds one
log-prob per token (OpenAI's ``choices[i].logprobs.content``). Usage counts every choice's tokens, as
vLLM's does.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from judge.chunking import approx_tokens

_WORD_RE = re.compile(r"\w+")


def _draw(*parts: Any) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12], 16)


def policy_answer(req: dict[str, Any]) -> tuple[list[dict[str, Any]], int, int]:
    """The choices, prompt tokens and completion tokens of a sampling request (see the module docstring)."""
    messages = req.get("messages", [])
    words = _WORD_RE.findall(" ".join(str(m.get("content", "")) for m in messages)) or ["empty"]
    greedy = not req.get("temperature")
    n = int(req.get("n") or 1)
    limit = req.get("max_tokens") or req.get("max_completion_tokens")
    choices, completion = [], 0
    for i in range(n):
        key = (messages, "greedy") if greedy else (messages, req.get("temperature"), req.get("top_p"),
                                                     req.get("seed"), i)
        h = _draw(*key)
        length = 3 + h % 10
        tokens = [words[_draw(h, j) % len(words)] for j in range(length)]
        finish = "stop"
        if limit is not None and len(tokens) > int(limit):
            tokens, finish = tokens[: int(limit)], "length"
        choice: dict[str, Any] = {"index": i, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": " ".join(tokens)}}
        if req.get("logprobs"):
            choice["logprobs"] = {"content": [
                {"token": t, "logprob": -(_draw(h, j, "lp") % 1000) / 250, "bytes": list(t.encode()),
                 "top_logprobs": []} for j, t in enumerate(tokens)]}
        choices.append(choice)
        completion += len(tokens)
    prompt = sum(approx_tokens(str(m.get("content", ""))) for m in messages)
    return choices, prompt, completion

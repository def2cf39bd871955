"""Shared pieces of the four dimension scorers: the trace entry each one returns."""

from __future__ import annotations

from typing import Any

from judge.client import Answer, JudgeClient, Usage
from judge.schema import DimensionTrace


def trace_entry(
    score: float | None, reasoning: str, raw: str, error: str | None, usage: Usage, **extra: Any
) -> DimensionTrace:
    """A dimension's trace; ``status`` is 'ok' exactly when there is a score (a failure carries no number).
    Its ``usage`` also holds ``cached_tokens``, which `judge.score.Scorer.score_one` moves out of the row
    (to ``usage.jsonl``: it depends on timing and executor, the row must not)."""
    return {  # type: ignore[return-value, typeddict-item]
        "status": "ok" if score is not None else "failed",
        "score": None if score is None else round(float(score), 4),
        "reasoning": reasoning,
        "raw": raw,
        "error": error,
        "usage": usage.with_cached(),
        **extra,
    }


async def single_score(client: JudgeClient, kind: str, lang: str, values: dict[str, str]) -> DimensionTrace:
    """One question -> one 0-10 score (helpfulness, logicality)."""
    a: Answer = await client.ask(kind, lang, values, dimension=kind)
    if not a.ok:
        return trace_entry(None, "", a.raw, a.error, a.usage)
    return trace_entry(a.value["score"], a.value["reasoning"], a.raw, None, a.usage)

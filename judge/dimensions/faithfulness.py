"""Faithfulness: split the response into factual statements, check each against retrieved context chunks.

(a) the judge lists self-contained factual statements (greetings, opinions, advice left out); (b) for
each, the top-k of the ~128-token context chunks are retrieved (BM25 by default) and shown in document order;
(c) the judge says fully / partially / not supported = 1 / 0.5 / 0. Score = 10 × mean over the statements
it judged.

Edge cases (our choices): no factual statement → score 10 (nothing claimed, so nothing unfaithful; the other
dimensions punish an empty answer). A statement whose verdict stays unparseable gets support null and is left
out of the mean (the trace's ``error`` says how many); if no statement could be judged the dimension fails. At
most ``max_statements`` statements are checked (the rest are listed with support null and noted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from judge.chunking import Chunk, Retriever, detect_lang
from judge.client import JudgeClient, Usage
from judge.dimensions.common import trace_entry
from judge.schema import SUPPORT_LEVELS, DimensionTrace, Statement

SUPPORT_VALUE = dict(zip(SUPPORT_LEVELS, (1.0, 0.5, 0.0), strict=True))  # LongReward's 1 / 0.5 / 0


def faithfulness_score(supports: Sequence[str | None]) -> float | None:
    """10 × mean support over judged statements; 10.0 with no statements; None if none could be judged."""
    if not supports:
        return 10.0
    judged = [SUPPORT_VALUE[s] for s in supports if s is not None]
    return 10.0 * sum(judged) / len(judged) if judged else None


def format_evidence(chunks: Sequence[Chunk], indices: Sequence[int], lang: str) -> str:
    label = "片段" if lang == "zh" else "Passage"
    return "\n\n".join(f"[{label} {i + 1}]\n{chunks[i].text.strip()}" for i in sorted(indices))


async def score(
    client: JudgeClient,
    query: str,
    response: str,
    lang: str,
    chunks: Sequence[Chunk],
    retriever: Retriever,
    top_k: int = 5,
    max_statements: int = 30,
) -> DimensionTrace:
    usage = Usage()
    ext = await client.ask(
        "fact_extract", lang, {"query": query, "response": response}, dimension="faithfulness"
    )
    usage.add(ext.usage)
    if not ext.ok:
        return trace_entry(
            None, "", ext.raw, f"statement extraction failed: {ext.error}", usage, statements=[]
        )
    texts: list[str] = ext.value["statements"]

    async def check(text: str) -> tuple[Statement, Usage]:
        idx = await retriever.top_k_async(text, top_k)
        slang = detect_lang(text)
        a = await client.ask(
            "fact_support",
            slang,
            {"evidence": format_evidence(chunks, idx, slang), "statement": text},
            dimension="faithfulness",
        )
        st: Statement = {
            "text": text,
            "support": a.value.get("support") if a.ok else None,
            "reasoning": a.value.get("reasoning", "") if a.ok else (a.error or ""),
            "evidence": [{"chunk_index": i, "text": chunks[i].text} for i in idx],
        }
        return st, a.usage

    results = await asyncio.gather(*(check(t) for t in texts[:max_statements]))
    statements = [s for s, _ in results]
    for _, u in results:
        usage.add(u)
    statements += [
        {"text": t, "support": None, "reasoning": "not checked (max_statements)", "evidence": []}
        for t in texts[max_statements:]
    ]
    supports = [s["support"] for s in statements[:max_statements]]
    value = faithfulness_score(supports)
    notes = []
    if (bad := sum(s is None for s in supports)) > 0:
        notes.append(f"{bad} of {len(supports)} statements could not be judged")
    if len(texts) > max_statements:
        notes.append(
            f"{len(texts) - max_statements} statements beyond max_statements={max_statements} unchecked"
        )
    reasoning = (
        (
            f"{len(supports)} statements: "
            + ", ".join(f"{k} {sum(s == k for s in supports)}" for k in SUPPORT_LEVELS)
        )
        if supports
        else "no factual statements"
    )
    return trace_entry(value, reasoning, ext.raw, "; ".join(notes) or None, usage, statements=statements)

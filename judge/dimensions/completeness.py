"""Completeness: information relevant to the query is extracted from each ~4,096-token context chunk ONCE per
prompt (shared by all that prompt's responses, labelled by position such as "0%-25%"); then, per response, the
judge compares the response with the collected information and scores coverage 0-10.

Chunk extraction language is chosen per chunk (Chinese vs Latin characters). If the extraction of any chunk
fails (its answer stays unparseable, or the server gave no usable answer), completeness is a failed
dimension for every response of that prompt, with the chunks named in the error: scoring against a partial
collection would turn a judge failure into a low score ("nothing relevant there"). The failed rows are
picked up by ``judge.score --retry-failed``, which extracts the failed chunks again (the others come from
the cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from judge.chunking import Chunk, detect_lang, position_label
from judge.client import JudgeClient, Usage
from judge.dimensions.common import trace_entry
from judge.schema import ChunkInfo, DimensionTrace


@dataclass
class PromptInfo:
    """The shared per-prompt extraction."""

    chunks: list[ChunkInfo]
    failed: list[int]  # chunk indices whose extraction failed
    usage: Usage
    raw: list[str]


async def extract(client: JudgeClient, query: str, chunks: Sequence[Chunk]) -> PromptInfo:
    n = len(chunks)

    async def one(c: Chunk):
        pos = position_label(c.index, n)
        return pos, await client.ask(
            "info_extract",
            detect_lang(c.text),
            {"chunk": c.text, "query": query, "position": pos},
            dimension="completeness",
        )

    results = await asyncio.gather(*(one(c) for c in chunks))
    usage, infos, failed, raws = Usage(), [], [], []
    for c, (pos, a) in zip(chunks, results, strict=True):
        usage.add(a.usage)
        raws.append(a.raw)
        info: ChunkInfo = {"index": c.index, "position": pos, "info": a.value.get("info") if a.ok else None}
        if not a.ok:
            failed.append(c.index)
            info["error"] = a.error or "extraction failed"
        infos.append(info)
    return PromptInfo(infos, failed, usage, raws)


def format_collected(info: PromptInfo, lang: str) -> str:
    none = "（无相关信息）" if lang == "zh" else "(nothing relevant)"
    label = "文档位置" if lang == "zh" else "Document part"
    return "\n\n".join(f"[{label} {c['position']}]\n{c['info'] or none}" for c in info.chunks)


async def score(
    client: JudgeClient, query: str, response: str, lang: str, info: PromptInfo
) -> DimensionTrace:
    shared = info.usage.with_cached()  # cached_tokens moved out of the row by the scorer
    if info.failed:
        where = ", ".join(
            f"{c['index']} ({c['position']}): {c.get('error')}"
            for c in info.chunks
            if c["index"] in info.failed
        )
        return trace_entry(
            None,
            "",
            "\n".join(info.raw),
            f"information extraction failed for {len(info.failed)} of {len(info.chunks)} chunk(s), so "
            f"completeness was not judged (--retry-failed extracts them again): {where}"[:2000],
            Usage(),
            chunks=info.chunks,
            shared_usage=shared,
        )
    a = await client.ask(
        "completeness",
        lang,
        {"collected": format_collected(info, lang), "query": query, "response": response},
        dimension="completeness",
    )
    return trace_entry(
        a.value.get("score") if a.ok else None,
        a.value.get("reasoning", ""),
        a.raw,
        a.error,
        a.usage,
        chunks=info.chunks,
        shared_usage=shared,
    )

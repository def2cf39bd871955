"""Completeness: information relevant to the query is extracted from each ~4,096-token context chunk ONCE per
prompt (shared by all that prompt's responses, labelled by position such as "0%-25%"); then, per response, the
judge compares the response with the collected information and scores coverage 0-10.

Chunk extraction language is chosen per chunk (Chinese vs Latin characters). A chunk whose extraction stays
unparseable contributes nothing (info null) and is named in the error; if every chunk failed, completeness
fails for every response of that prompt rather than being scored against nothing.
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
        if not a.ok:
            failed.append(c.index)
        infos.append({"index": c.index, "position": pos, "info": a.value.get("info") if a.ok else None})
    return PromptInfo(infos, failed, usage, raws)


def format_collected(info: PromptInfo, lang: str) -> str:
    none = "（无相关信息）" if lang == "zh" else "(nothing relevant)"
    label = "文档位置" if lang == "zh" else "Document part"
    return "\n\n".join(f"[{label} {c['position']}]\n{c['info'] or none}" for c in info.chunks)


async def score(
    client: JudgeClient, query: str, response: str, lang: str, info: PromptInfo
) -> DimensionTrace:
    shared = info.usage.as_dict()
    if info.chunks and len(info.failed) == len(info.chunks):
        return trace_entry(
            None,
            "",
            "\n".join(info.raw),
            "information extraction failed for every chunk",
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
    err = a.error
    if info.failed:
        note = f"extraction failed for chunks {info.failed} (treated as nothing relevant)"
        err = f"{err}; {note}" if err else note
    return trace_entry(
        a.value.get("score") if a.ok else None,
        a.value.get("reasoning", ""),
        a.raw,
        err,
        a.usage,
        chunks=info.chunks,
        shared_usage=shared,
    )

"""The scoring library: `Scorer` judges (prompt, sample) pairs on the four LongReward dimensions and
schedules them (`prefix_order`, responses in flight, per-response deadline); `ScoreOptions` holds how.

    rows, summary = await Scorer(client, ScoreOptions()).score_many(prompts, samples)

``judge.score`` (`judge.score.run`) drives it with files; `score_rows` is the sync convenience.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from judge.cache import ResponseCache
from judge.chunking import (
    BM25Retriever,
    Chunk,
    EmbeddingRetriever,
    Retriever,
    Tokenizer,
    chunk_text,
    detect_lang,
)
from judge.client import (
    JudgeClient,
    JudgeConfig,
    TransportExhausted,
    base_url_host,
    gather_or_cancel,
    run_sync,
)
from judge.dimensions import completeness, faithfulness, helpfulness, logicality
from judge.prompts import PROMPT_VERSION
from judge.provenance import judge_fingerprint, row_fingerprint
from judge.schema import DIMENSIONS, JudgeInputError, ScoredRow, reward_of
from judge.score.scored_file import NOT_REQUESTED
from lr_jax.options import option, validate


def usage_record(row_id: str, by_dimension: dict[str, dict[str, int]]) -> dict[str, Any]:
    """One line of ``usage.jsonl``: the row's calls and tokens per dimension (as in its trace, answers
    from the response cache counted with their recorded usage) plus ``cached_tokens``, the prompt tokens the
    server said it read from its prompt cache when each answer was paid for. ``completeness_extraction`` is
    the prompt's shared chunk extraction (once per prompt, like the trace's ``shared_usage``); the totals
    leave it out, like the trace."""
    dims = {d: by_dimension[d] for d in DIMENSIONS if d in by_dimension}
    total = {k: sum(u.get(k, 0) for u in dims.values()) for k in USAGE_KEYS}
    out: dict[str, Any] = {"id": row_id, **total, "by_dimension": dims}
    if "completeness_extraction" in by_dimension:
        out["completeness_extraction"] = by_dimension["completeness_extraction"]
    return out


USAGE_KEYS = ("calls", "prompt_tokens", "cached_tokens", "completion_tokens")


def prefix_order(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The order in which the online scorer starts responses: grouped by prompt (prompts in order of first
    appearance, each prompt's responses in input order). A prompt's responses share its context chunks
    (support-check evidence, the chunk extractions), its collected information (completeness) and its query
    (helpfulness, logicality, statement split come right after their static part), so with them in flight
    together those prefixes reach the server while its prompt cache still holds them; a samples file
    written sample-major (every prompt's first response, then every second) would otherwise spread one
    prompt's calls over the whole run. A response's own calls already go out together: its dimensions
    start at once and its support checks are sent together, as soon as its statements are known."""
    first: dict[str, int] = {}
    for s in samples:
        first.setdefault(s["prompt_id"], len(first))
    return sorted(samples, key=lambda s: first[s["prompt_id"]])  # stable: input order within a prompt


@dataclass
class ScoreOptions:
    """How responses are scored. Each field's default, bounds and help live here only: the ``judge.score``
    flags are generated from these fields (`lr_jax.options`)."""

    retrieval_chunk_tokens: int = option(128, ge=1, help="faithfulness evidence chunk size, tokens")
    top_k: int = option(5, ge=1, help="evidence chunks retrieved per statement")
    completeness_chunk_tokens: int = option(4096, ge=1, help="completeness extraction chunk size, tokens")
    # >= 1: with 0 no statement would be checked and every response would get faithfulness 10
    max_statements: int = option(30, ge=1, help="factual statements checked per response")
    item_timeout_s: float | None = option(
        None, gt=0, flag="--item-timeout", help="deadline per response, seconds (past it: pending)"
    )
    max_items: int = option(16, ge=1, help="responses in flight")
    dimensions: tuple[str, ...] = option(DIMENSIONS, cli=False)
    retrieval: str = option("bm25", choices=("bm25", "embeddings"), help="faithfulness retrieval")
    embedding_model: str | None = option(None, help="model for --retrieval embeddings")

    def __post_init__(self) -> None:
        validate(self, JudgeInputError)
        if unknown := sorted(set(self.dimensions) - set(DIMENSIONS)):
            raise JudgeInputError(f"dimensions: unknown {unknown}; known: {list(DIMENSIONS)}")
        if self.retrieval == "embeddings" and not self.embedding_model:
            raise JudgeInputError("retrieval 'embeddings' needs an embedding model (--embedding-model)")


@dataclass
class _PromptState:
    chunks: list[Chunk]
    retriever: asyncio.Future[Retriever]
    info: asyncio.Future[completeness.PromptInfo] | None = None


@dataclass
class RunSummary:
    scored: int = 0
    failed_rows: int = 0
    pending: int = 0
    failed_by_dimension: Counter[str] = field(default_factory=Counter)
    pending_errors: list[str] = field(default_factory=list)


class Scorer:
    """Scores (prompt, sample) pairs. Async API: ``await scorer.score_one(prompt, sample)`` -> `ScoredRow`."""

    def __init__(
        self,
        client: JudgeClient,
        options: ScoreOptions | None = None,
        tokenizer: Tokenizer | None = None,
        embed_client: JudgeClient | None = None,
        judge_fp: dict[str, Any] | None = None,
    ) -> None:
        self.client, self.opt = client, options or ScoreOptions()
        self.embed_client = embed_client or client  # embeddings may live on another server
        self.tokenizer = tokenizer
        self._prompts: dict[str, _PromptState] = {}
        # what produced the rows (judge.provenance); the CLI passes one that also names the tokenizer
        self.judge_fp = judge_fp or judge_fingerprint(
            client.cfg,
            self.opt,
            PROMPT_VERSION,
            embedding_base_url=embed_client.cfg.base_url if embed_client is not None else None,
        )

    def _prompt_state(self, prompt: dict[str, Any]) -> _PromptState:
        st = self._prompts.get(prompt["id"])
        if st is None:
            chunks = chunk_text(prompt["context"], self.opt.retrieval_chunk_tokens, self.tokenizer)
            st = self._prompts[prompt["id"]] = _PromptState(chunks, self._retriever(chunks))
        if st.retriever.done() and st.retriever.exception() is not None:
            st.retriever = self._retriever(st.chunks)  # the embeddings call failed last time: try again
        if st.info is None or (st.info.done() and st.info.exception() is not None):
            # once per prompt: every response of this prompt awaits the same future (a failed one is retried)
            big = chunk_text(prompt["context"], self.opt.completeness_chunk_tokens, self.tokenizer)
            st.info = asyncio.ensure_future(completeness.extract(self.client, prompt["query"], big))
            # its failure is reported through the items awaiting it; mark it seen so asyncio does not log it
            st.info.add_done_callback(lambda f: f.cancelled() or f.exception())
        return st

    def _retriever(self, chunks: list[Chunk]) -> asyncio.Future[Retriever]:
        if self.opt.retrieval == "bm25":
            fut: asyncio.Future[Retriever] = asyncio.get_running_loop().create_future()
            fut.set_result(BM25Retriever(chunks))
            return fut
        embed = functools.partial(self.embed_client.embed, model=self.opt.embedding_model)
        task = asyncio.ensure_future(EmbeddingRetriever.build(chunks, embed))
        task.add_done_callback(lambda f: f.cancelled() or f.exception())
        return task

    async def score_one(
        self, prompt: dict[str, Any], sample: dict[str, Any], usage_out: dict[str, Any] | None = None
    ) -> ScoredRow:
        """Raises `TransportExhausted` if the judge was unreachable within budget (item stays pending).

        ``usage_out``, if given, receives the row's `usage_record` (with the prompt-cached token counts the
        server reported), which is not part of the row: it depends on the order in which the server saw the
        calls, and the row must be the same bytes for every executor and every timing."""
        st = self._prompt_state(prompt)
        query, response = prompt["query"], sample["response"]
        lang = detect_lang(query + "\n" + response)
        c = self.client

        async def compl():
            return await completeness.score(c, query, response, lang, await asyncio.shield(st.info))

        async def faith():
            retriever = await asyncio.shield(st.retriever)
            return await faithfulness.score(
                c, query, response, lang, st.chunks, retriever, self.opt.top_k, self.opt.max_statements
            )

        jobs = {
            "helpfulness": lambda: helpfulness.score(c, query, response, lang),
            "logicality": lambda: logicality.score(c, query, response, lang),
            "faithfulness": faith,
            "completeness": compl,
        }
        names = [d for d in DIMENSIONS if d in self.opt.dimensions]
        tasks = [asyncio.ensure_future(jobs[d]()) for d in names]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # one dimension could not reach the judge: stop its siblings; the item stays pending
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        traces: dict[str, Any] = dict(zip(names, results, strict=True))
        for d in DIMENSIONS:
            if d not in traces:
                traces[d] = {
                    "status": "failed",
                    "score": None,
                    "reasoning": "",
                    "raw": "",
                    "error": NOT_REQUESTED,
                    "usage": {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0},
                }
        accounting = {}
        for d in DIMENSIONS:
            t = traces[d]
            accounting[d] = {**t["usage"], "cached_tokens": t["usage"].pop("cached_tokens", 0)}
            if "shared_usage" in t:
                shared = t["shared_usage"]
                accounting["completeness_extraction"] = {
                    **shared,
                    "cached_tokens": shared.pop("cached_tokens", 0),
                }
        if usage_out is not None:
            usage_out.update(usage_record(sample["id"], accounting))
        traces["faithfulness"].setdefault("statements", [])
        traces["completeness"].setdefault("chunks", [])
        scores: dict[str, float | None] = {d: traces[d]["score"] for d in DIMENSIONS}
        reward = reward_of(scores)
        scores["reward"] = reward  # exact mean of the stored dimension scores (validators recompute it)
        return {  # type: ignore[return-value]
            **sample,
            "scores": scores,
            "status": "scored" if reward is not None else "failed",
            "trace": {
                "judge_model": c.cfg.model,
                "base_url_host": base_url_host(c.cfg.base_url),
                "prompt_version": PROMPT_VERSION,
                "fingerprint": row_fingerprint(self.judge_fp, prompt, sample),
                **traces,
            },
        }

    async def score_many(
        self,
        prompts: dict[str, dict[str, Any]],
        samples: list[dict[str, Any]],
        on_row: Any = None,
        max_items: int | None = None,
        keep_rows: bool = True,
        on_usage: Any = None,
    ) -> tuple[list[ScoredRow], RunSummary]:
        """Score all ``samples``; ``on_row(row)`` is called as each finishes (in completion order), after
        ``on_usage(record)`` with its `usage_record`. With ``keep_rows=False`` the rows are only handed to
        ``on_row`` (a long run must not hold every trace). ``max_items`` (default: the options'
        ``max_items``) bounds the responses in flight.

        Work order: `prefix_order` (a prompt's responses one after another, so the calls that share its
        context chunks, collected information and query prefixes reach the server close together)."""
        summary, rows = RunSummary(), []
        samples = prefix_order(samples)
        n_items = self.opt.max_items if max_items is None else max_items
        if n_items < 1:  # a semaphore of 0 would wait forever
            raise JudgeInputError(f"max_items must be >= 1, got {n_items}")
        sem = asyncio.Semaphore(n_items)  # items in flight: rows finish steadily instead of all at the end
        remaining = Counter(s["prompt_id"] for s in samples)

        async def one(s: dict[str, Any]) -> None:
            async with sem:
                acc: dict[str, Any] = {}
                try:
                    coro = self.score_one(prompts[s["prompt_id"]], s, acc)
                    row = await (
                        asyncio.wait_for(coro, self.opt.item_timeout_s) if self.opt.item_timeout_s else coro
                    )
                except (TransportExhausted, TimeoutError) as e:
                    summary.pending += 1
                    summary.pending_errors.append(f"{s['id']}: {e or 'item deadline passed'}")
                    return
                finally:
                    remaining[s["prompt_id"]] -= 1
                    if remaining[s["prompt_id"]] == 0:  # last response of this prompt: free its chunks/index
                        self._prompts.pop(s["prompt_id"], None)
            if keep_rows:
                rows.append(row)
            if row["status"] == "scored":
                summary.scored += 1
            else:
                summary.failed_rows += 1
            for d in DIMENSIONS:
                if row["trace"][d]["status"] == "failed":
                    summary.failed_by_dimension[d] += 1
            if on_usage is not None:
                on_usage(acc)
            if on_row is not None:
                on_row(row)

        await gather_or_cancel(one(s) for s in samples)
        return rows, summary


def score_rows(
    cfg: JudgeConfig,
    prompts: dict[str, dict[str, Any]],
    samples: list[dict[str, Any]],
    options: ScoreOptions | None = None,
    cache_path: str | None = None,
) -> list[ScoredRow]:
    """Sync convenience (works in Jupyter): score ``samples`` in memory, return the rows."""

    async def go() -> list[ScoredRow]:
        client = JudgeClient(cfg, ResponseCache(cache_path) if cache_path else None)
        try:
            rows, _ = await Scorer(client, options).score_many(prompts, samples)
            return rows
        finally:
            await client.close()

    return run_sync(go())

"""Score sampled responses with the LongReward judge: ``python -m judge.score``.

    python -m judge.score --prompts P.jsonl --samples S.jsonl --out DIR --base-url URL --model NAME

Writes ``DIR/scored.jsonl`` (the contract in `judge.schema`; at the end of a run in the samples file's order,
`canonical_rewrite`, so the same bytes whatever the executor or timing), ``DIR/usage.jsonl`` (per row the
calls and tokens with the prompt-cached ones, which depend on timing and so stay out of the rows),
``DIR/judge_cache.sqlite`` (every judge answer, content-addressed: the resume log) and ``DIR/summary.json``.
Resumable: ids already in ``scored.jsonl`` are skipped and cached answers are not paid for again. With
``--retry-failed`` the rows whose last line is a failure (status ``failed``, or any dimension ``failed``) are
judged again: a cached answer that does not parse is asked again, every other call is answered by the cache,
and the new row is appended after the old one (readers keep the last line per ``id``). Rows are appended with
flush + fsync, so a kill loses at most the line being written; a torn last line is dropped on restart. An item
whose transport retry budget runs out is left pending (not written) for the next run. The API key is read from
``--api-key-file`` or ``$OPENAI_API_KEY`` and is never written anywhere.

Every row records what produced it (``trace.fingerprint``, `judge.provenance`). A re-run reuses a finished
row only when its fingerprint matches this run (same judge model and endpoint, prompt version, scorer
options, prompt context/query and response text); otherwise it refuses with one line, or judges those rows
again with ``--rescore-changed``. One process writes an ``--out`` at a time (`judge.outdir.OutputLock`).
``summary.json`` describes the rows actually in ``scored.jsonl`` as well as this run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
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
    load_tokenizer,
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
from judge.executors import ExecutorOptions, driver_summary, make_driver
from judge.outdir import OutputLock, check_output_dir
from judge.parsing import OUTPUT_OF_KIND, parse
from judge.prices import PriceOptions, cost_of, money, resolve
from judge.prompts import PROMPT_VERSION
from judge.provenance import (
    describe_mismatches,
    differences,
    judge_digest,
    judge_fingerprint,
    row_fingerprint,
)
from judge.schema import DIMENSIONS, SCORED_FILE, USAGE_FILE, JudgeInputError, ScoredRow, reward_of
from lr_jax.io import jsonl
from lr_jax.options import OneLineParser, add_flags, from_args, int_at_least, option, run_cli, validate

# ------------------------------------------------------------------------------------------------ input


def _read_jsonl(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-empty line of a local or gs:// JSONL file."""
    return jsonl.read_jsonl(str(path), error=JudgeInputError, where=lambda n: f"{path}:{n}")


def _field(
    path: str | Path, n: int, obj: dict[str, Any], name: str, types: tuple[type, ...], required: bool = True
) -> Any:
    return jsonl.field(obj, name, types, f"{path}:{n}", error=JudgeInputError, required=required)


def load_prompts(path: str | Path) -> dict[str, dict[str, Any]]:
    """Prompts JSONL -> {id: row}; ``id`` str|int, ``context`` and ``query`` str (LongReward release)."""
    out: dict[str, dict[str, Any]] = {}
    for n, obj in _read_jsonl(path):
        pid = str(_field(path, n, obj, "id", (str, int)))
        _field(path, n, obj, "context", (str,))
        _field(path, n, obj, "query", (str,))
        _field(path, n, obj, "answer", (str,), required=False)
        if pid in out:
            raise JudgeInputError(f"{path}:{n}: field 'id': duplicate prompt id {pid!r}")
        out[pid] = {**obj, "id": pid}
    if not out:
        raise JudgeInputError(f"{path}: no prompts (the file is empty)")
    return out


def load_samples(path: str | Path, prompts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples JSONL -> rows; every ``prompt_id`` must name a prompt and every ``id`` must be unique."""
    out, seen = [], set()
    for n, obj in _read_jsonl(path):
        sid = str(_field(path, n, obj, "id", (str, int)))
        pid = str(_field(path, n, obj, "prompt_id", (str, int)))
        _field(path, n, obj, "query", (str,))
        _field(path, n, obj, "response", (str,))
        _field(path, n, obj, "sampler", (dict,), required=False)
        if pid not in prompts:
            raise JudgeInputError(f"{path}:{n}: field 'prompt_id': {pid!r} is not in the prompts file")
        if sid in seen:
            raise JudgeInputError(f"{path}:{n}: field 'id': duplicate sample id {sid!r}")
        seen.add(sid)
        out.append({**obj, "id": sid, "prompt_id": pid, "sampler": obj.get("sampler") or {}})
    if not out:
        raise JudgeInputError(f"{path}: no samples (the file is empty); nothing to score")
    return out


@dataclass
class RowInfo:
    """What a re-run needs to know about the last line of one id in ``scored.jsonl``."""

    status: Any
    failed: bool  # `row_failed`
    fingerprint: Any  # trace.fingerprint, or None for a row written before fingerprints
    judge_model: Any
    prompt_version: Any
    base_url_host: Any

    @classmethod
    def of(cls, row: dict[str, Any]) -> RowInfo:
        trace = row.get("trace") if isinstance(row.get("trace"), dict) else {}
        return cls(
            row.get("status"),
            row_failed(row),
            trace.get("fingerprint"),
            trace.get("judge_model"),
            trace.get("prompt_version"),
            trace.get("base_url_host"),
        )


def scan_scored(path: Path) -> tuple[dict[str, RowInfo], int]:
    """The last line per id of ``scored.jsonl`` (as `RowInfo`); a torn last line (kill mid-write) is cut off
    first. Returns (id -> info, bytes dropped). A bad line that is not the last one is an error."""
    text, dropped = jsonl.repair_torn_tail(str(path))

    def corrupt(msg: str) -> JudgeInputError:
        return JudgeInputError(
            f"{msg}: corrupt scored row (not the last line, so not a torn write); "
            "move the file aside or fix the line"
        )

    rows: dict[str, RowInfo] = {}
    lines = jsonl.split_lines(text)
    for n, row in jsonl.parse_lines(lines, source=str(path), error=corrupt, where=lambda n: f"{path}:{n}"):
        if not isinstance(row.get("id"), str | int) or isinstance(row.get("id"), bool):
            raise corrupt(f"{path}:{n}: field 'id' missing or not a string/int")
        rows[str(row["id"])] = RowInfo.of(row)
    return rows, dropped


def canonical_rewrite(path: Path, order: dict[str, int]) -> bool:
    """Rewrite the append-only JSONL ``path`` (``scored.jsonl`` or ``usage.jsonl``) in canonical order:
    every id's first line in input order (``order``: id -> position in the samples file; ids not there come
    after, in file order), then the lines that superseded them (``--retry-failed``, ``--rescore-changed``)
    the same way, so the last line per id stays last. The lines themselves are copied byte for byte.

    Why a rewrite at the end rather than writing in order: rows finish in completion order, which depends
    on the executor and on timing, and each is appended + fsynced the moment it is done, so a kill loses
    nothing (a reorder buffer would hold finished rows back behind a slow or pending one, and lose them
    at a kill). The rewrite goes to a temporary file (fsynced) renamed over the old one, so a kill leaves
    the complete old file or the complete new one; the next run ends with the same rewrite. Hence every
    executor, and a killed-and-resumed run, ends with the same bytes. Streams the file (only offsets are
    held). Returns whether the file changed (False: already canonical, nothing written)."""
    if not path.exists():
        return False
    entries: list[tuple[tuple[int, int, int], int, int]] = []
    seen: Counter[str] = Counter()
    clean = True
    with open(path, "rb") as f:
        offset = 0
        for i, line in enumerate(f):
            n = len(line)
            if line.strip() and line.endswith(b"\n"):
                rid = str(json.loads(line)["id"])
                entries.append(((seen[rid], order.get(rid, len(order)), i), offset, n))
                seen[rid] += 1
            else:
                clean = False  # a blank line, or no newline at the end: normalised away
            offset += n
    ranked = sorted(entries)
    if clean and [e[1] for e in ranked] == [e[1] for e in entries]:
        return False
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for _, off, n in ranked:
            src.seek(off)
            dst.write(src.read(n))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)  # the rename itself survives a crash
    finally:
        os.close(dirfd)
    return True


def recover_scored(path: Path) -> tuple[set[str], int]:
    """Ids already written to ``scored.jsonl``; a torn last line (kill mid-write) is cut off. Returns (ids,
    bytes dropped)."""
    rows, dropped = scan_scored(path)
    return set(rows), dropped


def row_failed(row: dict[str, Any]) -> bool:
    """A failure worth judging again: row status ``failed``, or a requested dimension whose status is
    ``failed`` (its reward is then the mean of fewer dimensions)."""
    if row.get("status") != "scored":
        return True
    trace = row.get("trace") if isinstance(row.get("trace"), dict) else {}
    return any(
        isinstance(t := trace.get(d), dict)
        and t.get("status") == "failed"
        and t.get("error") != NOT_REQUESTED
        for d in DIMENSIONS
    )


def failed_ids(path: Path) -> set[str]:
    """Ids whose last line in ``scored.jsonl`` is a failure (`row_failed`); call after `recover_scored`."""
    if not path.exists():
        return set()
    rows, _ = scan_scored(path)
    return {rid for rid, info in rows.items() if info.failed}


class RefreshUnparseableCache(ResponseCache):
    """The response cache as ``--retry-failed`` sees it: a cached judge answer that does not parse counts as
    a miss, so that one call is made again (and its new answer replaces the old); every answer that parses is
    still served from the cache, so the successful sub-calls of a failed row are not paid twice."""

    refreshed = 0

    def get(self, key: str) -> tuple[str, int, int, int] | None:
        # same package, same table as ResponseCache.get; the kind column says which parser the answer needs
        row = self._db.execute(
            "SELECT kind, text, prompt_tokens, completion_tokens, cached_tokens FROM answers WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        kind, text, pt, ct, cached = row
        if kind in OUTPUT_OF_KIND and not parse(kind, text).ok:
            self.refreshed += 1
            return None
        return text, int(pt), int(ct), int(cached or 0)


# ------------------------------------------------------------------------------------------------ scoring


NOT_REQUESTED = "dimension not requested"


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


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``judge.score`` flags: the judge's and the scorer's are generated from `JudgeConfig` and
    `ScoreOptions` (their defaults, bounds and help live there); the rest are about files and the run."""
    ap = OneLineParser(prog="python -m judge.score", description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", required=True, help="prompts JSONL (id, context, query)")
    ap.add_argument(
        "--samples", required=True, help="samples JSONL (id, prompt_id, query, response, sampler)"
    )
    ap.add_argument("--out", required=True, help="output dir, local or gs:// (scored.jsonl, cache, summary)")
    ap.add_argument(
        "--work-dir", default=None, help="local work dir for a gs:// --out (default ~/.cache/lr_jax_judge/…)"
    )
    ap.add_argument("--cache", default=None, help="cache file (default: OUT/judge_cache.sqlite)")
    add_flags(ap.add_argument_group("judge"), JudgeConfig)
    add_flags(ap.add_argument_group("scoring"), ScoreOptions)
    add_flags(ap.add_argument_group("executor (judge/executors.py)"), ExecutorOptions)
    add_flags(ap.add_argument_group("cost (judge/prices.py)"), PriceOptions)
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="estimate calls, tokens and cost of the pending responses; send nothing, write nothing",
    )
    ap.add_argument("--tokenizer", default=None, help="local tokenizer dir (default: regex approximation)")
    ap.add_argument("--embedding-base-url", default=None, help="embeddings server (default: --base-url)")
    ap.add_argument(
        "--limit", type=int_at_least(0), default=None, help="score at most this many pending samples"
    )
    ap.add_argument(
        "--retry-failed",
        action="store_true",
        help="judge again the rows whose last line is a failure (failed status or a failed dimension); "
        "their new line supersedes the old one",
    )
    ap.add_argument(
        "--rescore-changed",
        action="store_true",
        help="judge again the finished rows that another judge, prompt version, option set or input text "
        "produced (or whose producer is unknown), instead of refusing to run",
    )
    ap.add_argument("--no-progress", action="store_true")
    return ap


OUTPUT_FILES = (SCORED_FILE, USAGE_FILE, "summary.json", "judge_cache.sqlite")


def _local_out(args: argparse.Namespace) -> Path:
    """Where rows are appended. For a gs:// --out: a local work dir (append + fsync need a local file),
    seeded from the bucket so a run on another machine resumes, and uploaded back at the end of the run."""
    if not str(args.out).startswith("gs://"):
        return Path(args.out)
    from lr_jax.io import storage

    work = Path(
        args.work_dir
        or Path.home() / ".cache" / "lr_jax_judge" / hashlib.sha256(args.out.encode()).hexdigest()[:12]
    )
    work.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        remote = storage.join(args.out, name)
        if not (work / name).exists() and storage.exists(remote):
            storage.download_file(remote, str(work / name))
    return work


def _upload_out(args: argparse.Namespace, work: Path) -> None:
    if not str(args.out).startswith("gs://"):
        return
    from lr_jax.io import storage

    for name in OUTPUT_FILES:
        if (work / name).exists():
            storage.upload_file(str(work / name), storage.join(args.out, name))


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse unusable output paths with one line before any input is read or any judge call is made."""
    check_output_dir(args.out, "--out")
    if args.work_dir:
        check_output_dir(args.work_dir, "--work-dir")
    if args.cache:
        if os.path.isdir(args.cache):
            raise JudgeInputError(f"--cache {args.cache}: is a directory, not a cache file")
        check_output_dir(os.path.dirname(os.path.abspath(args.cache)), "--cache")


def _one(values: Counter[Any], fallback: Any) -> Any:
    """The single value of a count table, a sorted list when there are several, ``fallback`` when none."""
    keys = [k for k in values if k is not None]
    if not keys:
        return fallback
    return keys[0] if len(keys) == 1 else sorted(map(str, keys))


def file_summary(rows: dict[str, RowInfo], judge_sha: str) -> dict[str, Any]:
    """What the rows actually in ``scored.jsonl`` (last line per id) are: statuses, judge models, prompt
    versions, and how many this run's judge produced (the rest: another judge/options, or unknown)."""
    fps = [r.fingerprint if isinstance(r.fingerprint, dict) else None for r in rows.values()]
    return {
        "rows": len(rows),
        "status": dict(Counter(str(r.status) for r in rows.values())),
        "failed_rows_or_dimensions": sum(r.failed for r in rows.values()),
        "judge_models": dict(Counter(str(r.judge_model) for r in rows.values())),
        "prompt_versions": dict(Counter(str(r.prompt_version) for r in rows.values())),
        "producers": {
            "this_run": sum(1 for f in fps if f and f.get("judge_sha256") == judge_sha),
            "other": sum(1 for f in fps if f and f.get("judge_sha256") != judge_sha),
            "unknown": sum(1 for f in fps if not f),
        },
    }


def _done_ids_readonly(out: str) -> set[str]:
    """Ids in ``OUT/scored.jsonl`` without touching the file (``--dry-run`` writes nothing, not even the
    repair of a torn last line)."""
    from lr_jax.io import storage

    path = storage.join(out, SCORED_FILE) if out.startswith("gs://") else str(Path(out) / SCORED_FILE)
    if not storage.exists(path):
        return set()
    ids = set()
    for line in storage.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str | int):
            ids.add(str(row["id"]))
    return ids


def dry_run(args: argparse.Namespace) -> dict[str, Any]:
    """``--dry-run``: the estimate (`judge.estimate`) for the responses a run would judge now."""
    from judge.estimate import estimate

    cfg = from_args(JudgeConfig, args)
    opts = from_args(ScoreOptions, args)
    ex = from_args(ExecutorOptions, args)
    priced = from_args(PriceOptions, args)
    prompts = load_prompts(args.prompts)
    samples = load_samples(args.samples, prompts)
    done = _done_ids_readonly(str(args.out))
    todo = [s for s in samples if s["id"] not in done]
    if args.limit is not None:
        todo = todo[: args.limit]
    est = estimate(prompts, todo, opts, cfg.structured, load_tokenizer(args.tokenizer), cfg.prompt_layout)
    _, price, info = resolve(priced, cfg.model)
    batched = ex.executor != "online"
    return {
        "dry_run": True,
        "already_done": len(samples) - len(todo),
        **est,
        "executor": ex.executor,
        "cost_usd": cost_of(price, est["prompt_tokens"], est["completion_tokens"], batched),
        "price": info,
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = from_args(JudgeConfig, args)
    opts = from_args(ScoreOptions, args)
    from_args(ExecutorOptions, args)  # validated before the lock is taken or anything is read
    resolve(from_args(PriceOptions, args), cfg.model)  # a bad price file is refused before any call
    prompts = load_prompts(args.prompts)
    samples = load_samples(args.samples, prompts)
    lock = OutputLock(args.out)
    lock.acquire()  # before the work dir is seeded or anything appended: one writer per --out
    try:
        return await _run_locked(args, cfg, opts, prompts, samples)
    finally:
        lock.release()


async def _run_locked(
    args: argparse.Namespace,
    cfg: JudgeConfig,
    opts: ScoreOptions,
    prompts: dict[str, dict[str, Any]],
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    out = _local_out(args)
    out.mkdir(parents=True, exist_ok=True)
    scored_path = out / SCORED_FILE
    index, dropped = scan_scored(scored_path)
    if dropped:
        print(f"judge.score: dropped a torn last line ({dropped} bytes) from {scored_path}", file=sys.stderr)
    judge_fp = judge_fingerprint(
        cfg,
        opts,
        PROMPT_VERSION,
        # the absolute path: the same tokenizer named from another working directory is not a change
        tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else None,
        embedding_base_url=args.embedding_base_url,
    )
    # A finished row is reused only if this run would have produced it: same judge, prompts, options, text.
    changed: dict[str, list[str]] = {}
    for smp in samples:
        if (info := index.get(smp["id"])) is not None:
            want = row_fingerprint(judge_fp, prompts[smp["prompt_id"]], smp)
            if why := differences(info.fingerprint, want):
                changed[smp["id"]] = why
    if changed and not args.rescore_changed:
        raise JudgeInputError(
            f"{scored_path}: {len(changed)} of {len(index)} finished row(s) were not produced by this "
            f"judge/prompts/options: {describe_mismatches(changed)}; pass --rescore-changed to judge them "
            "again (new lines are appended; readers keep the last line per id), or use another --out"
        )
    retry = {rid for rid, info in index.items() if info.failed} if args.retry_failed else set()
    todo = [s for s in samples if s["id"] not in index or s["id"] in retry or s["id"] in changed]
    n_todo = len(todo)
    if args.limit is not None:
        todo = todo[: args.limit]
    tokenizer = load_tokenizer(args.tokenizer)
    cache_cls = RefreshUnparseableCache if args.retry_failed else ResponseCache
    cache = cache_cls(args.cache or out / "judge_cache.sqlite")
    client = JudgeClient(cfg, cache)
    embed_client = None
    if args.embedding_base_url:
        embed_client = JudgeClient(dataclasses.replace(cfg, base_url=args.embedding_base_url), cache)
    ex = from_args(ExecutorOptions, args)
    _, price, price_info = resolve(from_args(PriceOptions, args), cfg.model)
    driver = make_driver(ex, client, out, [c for c in (client, embed_client) if c is not None])
    if driver is not None:
        # every response in flight at once: a wave holds the questions of all of them, not of --max-items;
        # no per-response deadline: a batch may take hours (--batch-wait bounds the wait instead)
        opts = dataclasses.replace(opts, max_items=max(1, len(todo)), item_timeout_s=None)
    scorer = Scorer(client, opts, tokenizer, embed_client, judge_fp=judge_fp)
    t0 = time.monotonic()
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="judge", unit="resp", file=sys.stderr)
    usage_path = out / USAGE_FILE
    jsonl.repair_torn_tail(str(usage_path))  # a torn last line from a kill (accounting only: no message)
    f = open(scored_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    fu = open(usage_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    executor_name = ex.executor

    def on_usage(rec: dict[str, Any]) -> None:
        # before the row: a kill between the two leaves an extra usage line (harmless), never a row
        # without its usage; not fsynced (the accounting is not the resume log)
        fu.write(json.dumps({**rec, "executor": executor_name}, ensure_ascii=False) + "\n")
        fu.flush()

    def on_row(row: ScoredRow) -> None:
        # one writer (the event loop); flush + fsync per row so a kill never loses or corrupts a finished row
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        index[row["id"]] = RowInfo.of(row)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
        if bar is not None:
            paid = client.stats.total_paid()
            dt = max(1e-9, time.monotonic() - t0)
            cost, _ = money(client.stats, price, driver is not None)
            bar.set_postfix(
                calls_s=f"{paid.calls / dt:.1f}",
                tokens=paid.prompt_tokens + paid.completion_tokens,
                cached=client.stats.cache_hits,
                usd="unknown price" if cost is None else f"{cost:.4f}",
                refresh=False,
            )
            bar.update(1)

    try:
        coro = scorer.score_many(prompts, todo, on_row, keep_rows=False, on_usage=on_usage)
        _, summ = await (driver.drive(coro) if driver is not None else coro)
    finally:
        f.close()
        fu.close()
        if bar is not None:
            bar.close()
        await client.close()
        if embed_client is not None:
            await embed_client.close()
        cache.close()
    # rows were appended in completion order (kill-safe); end in the samples file's order
    order = {smp["id"]: i for i, smp in enumerate(samples)}
    canonical_rewrite(scored_path, order)
    canonical_rewrite(usage_path, order)
    paid = client.stats.total_paid()
    judge_sha = judge_digest(judge_fp)
    cost_usd, saved_usd = money(client.stats, price, driver is not None)
    by_dim = {
        d: {**u.as_dict(), "cached_tokens": client.stats.cached_tokens.get(d, 0)}
        for d, u in sorted(client.stats.paid.items())
    }
    summary = {
        "scored": summ.scored,
        "failed": summ.failed_rows,
        "pending": summ.pending,
        "already_done": len(samples) - n_todo,
        "retried": len([s for s in todo if s["id"] in retry]),
        "rescored_changed": len([s for s in todo if s["id"] in changed]),
        "refreshed_answers": getattr(cache, "refreshed", 0),
        "rows_in_file": len(index),  # distinct ids: a retried row's new line supersedes its old one
        "samples": len(samples),
        "failed_by_dimension": {d: summ.failed_by_dimension.get(d, 0) for d in DIMENSIONS},
        "calls": paid.calls,
        "cache_hits": client.stats.cache_hits,
        "prompt_tokens": paid.prompt_tokens,
        "completion_tokens": paid.completion_tokens,
        "cached_tokens": sum(client.stats.cached_tokens.values()),
        "by_dimension": by_dim,
        "executor": driver_summary(driver),
        "cost_usd": cost_usd,
        "saved_usd": saved_usd,
        "price": price_info,
        "transport_retries": client.stats.transport_retries,
        "parse_retries": client.stats.parse_retries,
        "elapsed_s": round(time.monotonic() - t0, 2),
        # the rows in scored.jsonl, not just this run: a list when they come from several judges
        "judge_model": _one(Counter(r.judge_model for r in index.values()), cfg.model),
        "prompt_version": _one(Counter(r.prompt_version for r in index.values()), PROMPT_VERSION),
        "file": file_summary(index, judge_sha),
        "run": {
            "judge_model": cfg.model,
            "base_url_host": base_url_host(cfg.base_url),
            "prompt_version": PROMPT_VERSION,
            "judge_sha256": judge_sha,
        },
        "base_url_host": _one(Counter(r.base_url_host for r in index.values()), base_url_host(cfg.base_url)),
        "pending_errors": summ.pending_errors[:20],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _upload_out(args, out)
    return summary


def _report_pending(s: dict[str, Any]) -> None:
    """A pending response was never written: say why on stderr, with the cause, not only in the counts."""
    if not s["pending"]:
        return
    first = s["pending_errors"][0].split(": ", 1)[-1] if s["pending_errors"] else "unknown"
    host = s["run"]["base_url_host"]
    if s["executor"].get("waiting_for"):  # batch-file: not an error, the offline runner's turn
        print(
            f"judge.score: {s['pending']} response(s) wait for batch-file answers: {first}", file=sys.stderr
        )
        return
    if s["executor"]["name"] != "online":
        print(
            f"judge.score: error: the batch gave no answer for {s['pending']} response(s) (nothing written "
            f"for them): {first}; re-run to ask again",
            file=sys.stderr,
        )
        return
    if s["scored"] + s["failed"] == 0:
        print(
            f"judge.score: error: no answer from the judge server at {host}: {first}; "
            f"{s['pending']} response(s) left pending (nothing written for them). Check --base-url and that "
            "the server is up, then re-run",
            file=sys.stderr,
        )
    else:
        print(
            f"judge.score: warning: {s['pending']} response(s) left pending (retry budget or item deadline "
            f"ran out; e.g. {first}); re-run to judge them",
            file=sys.stderr,
        )


def _main(args: argparse.Namespace) -> int:
    if args.dry_run:
        est = dry_run(args)
        print(json.dumps(est, indent=2))
        usd = "unknown price" if est["cost_usd"] is None else f"~${est['cost_usd']:.4f}"
        print(
            f"judge.score --dry-run: {est['responses']} response(s) would take ~{est['calls']} calls, "
            f"~{est['prompt_tokens']} prompt + ~{est['completion_tokens']} completion tokens, {usd} as "
            f"{est['price']['model']} ({est['executor']}); nothing was sent",
            file=sys.stderr,
        )
        return 0
    check_outputs(args)
    s = asyncio.run(_run(args))
    print(
        f"judge.score: scored {s['scored']}, failed {s['failed']}, pending {s['pending']} "
        f"(already done {s['already_done']}); failed per dimension {s['failed_by_dimension']}; "
        f"calls {s['calls']} (+{s['cache_hits']} from cache), tokens {s['prompt_tokens']} prompt + "
        f"{s['completion_tokens']} completion ({s['cached_tokens']} prompt-cached), "
        + ("cost unknown (no price)" if s["cost_usd"] is None else f"${s['cost_usd']:.4f}")
        + f", {s['elapsed_s']} s"
    )
    _report_pending(s)
    return 1 if s["pending"] else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m judge.score``: 0 done, 1 some responses pending (re-run), 2 bad input or refused."""
    args = build_parser().parse_args(argv)
    return run_cli("judge.score", lambda: _main(args))


if __name__ == "__main__":
    sys.exit(main())

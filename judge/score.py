"""Score sampled responses with the LongReward judge: ``python -m judge.score``.

    python -m judge.score --prompts P.jsonl --samples S.jsonl --out DIR --base-url URL --model NAME

Writes ``DIR/scored.jsonl`` (the contract in `judge.schema`), ``DIR/judge_cache.sqlite`` (every judge answer,
content-addressed: the resume log) and ``DIR/summary.json``. Resumable: ids already in ``scored.jsonl`` are
skipped and cached answers are not paid for again. With ``--retry-failed`` the rows whose last line is a
failure (status ``failed``, or any dimension ``failed``) are judged again: a cached answer that does not parse
is asked again, every other call is answered by the cache, and the new row is appended after the old one
(readers keep the last line per ``id``). Rows are appended with flush + fsync, so a kill loses at
most the line being written; a torn last line is dropped on restart. An item whose transport retry budget runs
out is left pending (not written) for the next run. The API key is read from ``--api-key-file`` or
``$OPENAI_API_KEY`` and is never written anywhere.
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
    JudgeFatalError,
    TransportExhausted,
    base_url_host,
    run_sync,
)
from judge.dimensions import completeness, faithfulness, helpfulness, logicality
from judge.parsing import OUTPUT_OF_KIND, parse
from judge.prompts import PROMPT_VERSION
from judge.schema import DIMENSIONS, JudgeInputError, ScoredRow, reward_of
from lr_jax.io import jsonl

# ------------------------------------------------------------------------------------------------ input


def _read_jsonl(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-empty line of a local or gs:// JSONL file."""
    return jsonl.read_jsonl(str(path), error=JudgeInputError, where=lambda n: f"{path}:{n}")


def _field(
    path: str | Path, n: int, obj: dict[str, Any], name: str, types: tuple[type, ...], required: bool = True
) -> Any:
    if name not in obj:
        if required:
            raise JudgeInputError(f"{path}:{n}: field {name!r} is missing")
        return None
    v = obj[name]
    if not isinstance(v, types) or isinstance(v, bool):
        want = " or ".join(t.__name__ for t in types)
        raise JudgeInputError(f"{path}:{n}: field {name!r} must be {want}, got {type(v).__name__}")
    return v


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
    return out


def recover_scored(path: Path) -> tuple[set[str], int]:
    """Ids already written to ``scored.jsonl``; a torn last line (kill mid-write) is cut off. Returns (ids,
    bytes dropped)."""
    text, dropped = jsonl.repair_torn_tail(str(path))

    def corrupt(msg: str) -> JudgeInputError:
        return JudgeInputError(
            f"{msg}: corrupt scored row (not the last line, so not a torn write); "
            "move the file aside or fix the line"
        )

    ids: set[str] = set()
    lines = jsonl.split_lines(text)
    for n, row in jsonl.parse_lines(lines, source=str(path), error=corrupt, where=lambda n: f"{path}:{n}"):
        if not isinstance(row.get("id"), str | int) or isinstance(row.get("id"), bool):
            raise corrupt(f"{path}:{n}: field 'id' missing or not a string/int")
        ids.add(str(row["id"]))
    return ids, dropped


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
    last: dict[str, bool] = {}
    for _, row in jsonl.read_jsonl(str(path), error=JudgeInputError, where=lambda n: f"{path}:{n}"):
        last[str(row["id"])] = row_failed(row)
    return {rid for rid, failed in last.items() if failed}


class RefreshUnparseableCache(ResponseCache):
    """The response cache as ``--retry-failed`` sees it: a cached judge answer that does not parse counts as
    a miss, so that one call is made again (and its new answer replaces the old); every answer that parses is
    still served from the cache, so the successful sub-calls of a failed row are not paid twice."""

    refreshed = 0

    def get(self, key: str) -> tuple[str, int, int] | None:
        # same package, same table as ResponseCache.get; the kind column says which parser the answer needs
        row = self._db.execute(
            "SELECT kind, text, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        kind, text, pt, ct = row
        if kind in OUTPUT_OF_KIND and not parse(kind, text).ok:
            self.refreshed += 1
            return None
        return text, int(pt), int(ct)


# ------------------------------------------------------------------------------------------------ scoring


NOT_REQUESTED = "dimension not requested"


@dataclass
class ScoreOptions:
    retrieval_chunk_tokens: int = 128
    top_k: int = 5
    completeness_chunk_tokens: int = 4096
    max_statements: int = 30
    item_timeout_s: float | None = None  # per-response deadline; past it the item stays pending
    dimensions: tuple[str, ...] = DIMENSIONS
    retrieval: str = "bm25"  # or "embeddings" (needs embedding_model)
    embedding_model: str | None = None

    def __post_init__(self) -> None:
        if self.retrieval not in ("bm25", "embeddings"):
            raise JudgeInputError(f"retrieval must be bm25 or embeddings, got {self.retrieval!r}")
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
    ) -> None:
        self.client, self.opt = client, options or ScoreOptions()
        self.embed_client = embed_client or client  # embeddings may live on another server
        self.tokenizer = tokenizer
        self._prompts: dict[str, _PromptState] = {}

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

    async def score_one(self, prompt: dict[str, Any], sample: dict[str, Any]) -> ScoredRow:
        """Raises `TransportExhausted` if the judge was unreachable within budget (item stays pending)."""
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
                **traces,
            },
        }

    async def score_many(
        self,
        prompts: dict[str, dict[str, Any]],
        samples: list[dict[str, Any]],
        on_row: Any = None,
        max_items: int = 16,
        keep_rows: bool = True,
    ) -> tuple[list[ScoredRow], RunSummary]:
        """Score all ``samples``; ``on_row(row)`` is called as each finishes (in completion order). With
        ``keep_rows=False`` the rows are only handed to ``on_row`` (a long run must not hold every trace)."""
        summary, rows = RunSummary(), []
        sem = asyncio.Semaphore(max_items)  # items in flight: rows finish steadily instead of all at the end
        remaining = Counter(s["prompt_id"] for s in samples)

        async def one(s: dict[str, Any]) -> None:
            async with sem:
                try:
                    coro = self.score_one(prompts[s["prompt_id"]], s)
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
            if on_row is not None:
                on_row(row)

        tasks = [asyncio.ensure_future(one(s)) for s in samples]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
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
    ap = argparse.ArgumentParser(prog="python -m judge.score", description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", required=True, help="prompts JSONL (id, context, query)")
    ap.add_argument(
        "--samples", required=True, help="samples JSONL (id, prompt_id, query, response, sampler)"
    )
    ap.add_argument("--out", required=True, help="output dir, local or gs:// (scored.jsonl, cache, summary)")
    ap.add_argument(
        "--work-dir", default=None, help="local work dir for a gs:// --out (default .judge_work/…)"
    )
    ap.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    ap.add_argument("--model", required=True, help="judge model name")
    ap.add_argument("--api-key-file", default=None, help="file holding the key (default: $OPENAI_API_KEY)")
    ap.add_argument("--cache", default=None, help="cache file (default: OUT/judge_cache.sqlite)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--retry-temperature", type=float, default=0.95)
    ap.add_argument("--parse-retries", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=16, help="judge requests in flight")
    ap.add_argument("--rpm", type=float, default=None, help="requests per minute limit")
    ap.add_argument("--tpm", type=float, default=None, help="tokens per minute limit")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    ap.add_argument("--max-attempts", type=int, default=6, help="transport attempts per request")
    ap.add_argument(
        "--retry-budget", type=float, default=600.0, help="seconds one request may spend retrying"
    )
    ap.add_argument("--backoff", type=float, default=1.0, help="first backoff, seconds (doubles)")
    ap.add_argument("--item-timeout", type=float, default=None, help="deadline per response, seconds")
    ap.add_argument("--structured", choices=["auto", "json", "tagged"], default="auto")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--tokenizer", default=None, help="local tokenizer dir (default: regex approximation)")
    ap.add_argument("--retrieval-chunk-tokens", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--completeness-chunk-tokens", type=int, default=4096)
    ap.add_argument("--max-statements", type=int, default=30)
    ap.add_argument(
        "--retrieval", choices=["bm25", "embeddings"], default="bm25", help="faithfulness retrieval"
    )
    ap.add_argument("--embedding-model", default=None, help="model for --retrieval embeddings")
    ap.add_argument("--embedding-base-url", default=None, help="embeddings server (default: --base-url)")
    ap.add_argument("--max-items", type=int, default=16, help="responses in flight")
    ap.add_argument("--limit", type=int, default=None, help="score at most this many pending samples")
    ap.add_argument(
        "--retry-failed",
        action="store_true",
        help="judge again the rows whose last line is a failure (failed status or a failed dimension); "
        "their new line supersedes the old one",
    )
    ap.add_argument("--no-progress", action="store_true")
    return ap


OUTPUT_FILES = ("scored.jsonl", "summary.json", "judge_cache.sqlite")


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


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    prompts = load_prompts(args.prompts)
    samples = load_samples(args.samples, prompts)
    out = _local_out(args)
    out.mkdir(parents=True, exist_ok=True)
    scored_path = out / "scored.jsonl"
    done, dropped = recover_scored(scored_path)
    if dropped:
        print(f"judge.score: dropped a torn last line ({dropped} bytes) from {scored_path}", file=sys.stderr)
    retry = failed_ids(scored_path) if args.retry_failed else set()
    todo = [s for s in samples if s["id"] not in done or s["id"] in retry]
    n_todo = len(todo)
    if args.limit is not None:
        todo = todo[: args.limit]
    cfg = JudgeConfig(
        base_url=args.base_url,
        model=args.model,
        api_key_file=args.api_key_file,
        temperature=args.temperature,
        retry_temperature=args.retry_temperature,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        retry_budget_s=args.retry_budget,
        backoff_s=args.backoff,
        parse_retries=args.parse_retries,
        structured=args.structured,
        seed=args.seed,
    )
    opts = ScoreOptions(
        retrieval_chunk_tokens=args.retrieval_chunk_tokens,
        top_k=args.top_k,
        completeness_chunk_tokens=args.completeness_chunk_tokens,
        max_statements=args.max_statements,
        item_timeout_s=args.item_timeout,
        retrieval=args.retrieval,
        embedding_model=args.embedding_model,
    )
    tokenizer = load_tokenizer(args.tokenizer)
    cache_cls = RefreshUnparseableCache if args.retry_failed else ResponseCache
    cache = cache_cls(args.cache or out / "judge_cache.sqlite")
    client = JudgeClient(cfg, cache)
    embed_client = None
    if args.embedding_base_url:
        embed_client = JudgeClient(dataclasses.replace(cfg, base_url=args.embedding_base_url), cache)
    scorer = Scorer(client, opts, tokenizer, embed_client)
    t0 = time.monotonic()
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="judge", unit="resp", file=sys.stderr)
    f = open(scored_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally

    written: set[str] = set()

    def on_row(row: ScoredRow) -> None:
        # one writer (the event loop); flush + fsync per row so a kill never loses or corrupts a finished row
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        written.add(row["id"])
        f.flush()
        os.fsync(f.fileno())
        if bar is not None:
            paid = client.stats.total_paid()
            dt = max(1e-9, time.monotonic() - t0)
            bar.set_postfix(
                calls_s=f"{paid.calls / dt:.1f}",
                tokens=paid.prompt_tokens + paid.completion_tokens,
                cached=client.stats.cache_hits,
                refresh=False,
            )
            bar.update(1)

    try:
        _, summ = await scorer.score_many(prompts, todo, on_row, max_items=args.max_items, keep_rows=False)
    finally:
        f.close()
        if bar is not None:
            bar.close()
        await client.close()
        if embed_client is not None:
            await embed_client.close()
        cache.close()
    paid = client.stats.total_paid()
    summary = {
        "scored": summ.scored,
        "failed": summ.failed_rows,
        "pending": summ.pending,
        "already_done": len(samples) - n_todo,
        "retried": len([s for s in todo if s["id"] in retry]),
        "refreshed_answers": getattr(cache, "refreshed", 0),
        "rows_in_file": len(done | written),  # distinct ids: a retried row's new line supersedes its old one
        "samples": len(samples),
        "failed_by_dimension": {d: summ.failed_by_dimension.get(d, 0) for d in DIMENSIONS},
        "calls": paid.calls,
        "cache_hits": client.stats.cache_hits,
        "prompt_tokens": paid.prompt_tokens,
        "completion_tokens": paid.completion_tokens,
        "by_dimension": {d: u.as_dict() for d, u in sorted(client.stats.paid.items())},
        "transport_retries": client.stats.transport_retries,
        "parse_retries": client.stats.parse_retries,
        "elapsed_s": round(time.monotonic() - t0, 2),
        "judge_model": cfg.model,
        "base_url_host": base_url_host(cfg.base_url),
        "prompt_version": PROMPT_VERSION,
        "pending_errors": summ.pending_errors[:20],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _upload_out(args, out)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = asyncio.run(_run(args))
    except (JudgeInputError, JudgeFatalError) as e:
        print(f"judge.score: error: {e}", file=sys.stderr)
        return 2
    s = summary
    print(
        f"judge.score: scored {s['scored']}, failed {s['failed']}, pending {s['pending']} "
        f"(already done {s['already_done']}); failed per dimension {s['failed_by_dimension']}; "
        f"calls {s['calls']} (+{s['cache_hits']} from cache), tokens {s['prompt_tokens']} prompt + "
        f"{s['completion_tokens']} completion, {s['elapsed_s']} s"
    )
    return 1 if s["pending"] else 0


if __name__ == "__main__":
    sys.exit(main())

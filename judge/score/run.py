"""One ``judge.score`` run over files: the inputs read, the output locked, the finished rows that may be
reused found, the scorer and its executor set up, every row appended as it finishes, the file put in
canonical order and ``summary.json`` written. The CLI (`judge.score.cli`) only parses flags and reports.

`ScoreJob` holds everything a run is told (files, judge, scoring, executor, price); `run_job` runs it,
`dry_run` estimates it without a call.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judge.cache import ResponseCache
from judge.chunking import Tokenizer, load_tokenizer
from judge.client import JudgeClient, JudgeConfig, base_url_host, check_base_url, resolve_api_key
from judge.executors import ExecutorOptions, WaveDriver, driver_summary, make_driver
from judge.outdir import OutputLock, check_output_dir
from judge.prices import PriceOptions, cost_of, money, resolve
from judge.prompts import PROMPT_VERSION
from judge.provenance import judge_digest, judge_fingerprint
from judge.schema import DIMENSIONS, SCORED_FILE, USAGE_FILE, JudgeInputError
from judge.score.inputs import load_prompts, load_samples
from judge.score.scored_file import (
    RowInfo,
    ScoredWriter,
    changed_rows,
    done_ids_readonly,
    file_summary,
    one_value,
    refresh_unparseable_cache,
    refuse_changed,
    scan_scored,
)
from judge.score.scorer import RunSummary, ScoreOptions, Scorer
from judge.transport import Transport
from lr_jax.options import from_args, option

OUTPUT_FILES = (SCORED_FILE, USAGE_FILE, "summary.json", "judge_cache.sqlite")


@dataclass
class RunOptions:
    """The files and the run (the other ``judge.score`` flags come from `JudgeConfig`, `ScoreOptions`,
    `ExecutorOptions` and `PriceOptions`)."""

    prompts: str = option(help="prompts JSONL (id, context, query)")
    samples: str = option(help="samples JSONL (id, prompt_id, query, response, sampler)")
    out: str = option(help="output dir, local or gs:// (scored.jsonl, cache, summary)")
    work_dir: str | None = option(
        None, help="local work dir for a gs:// --out (default ~/.cache/lr_jax_judge/…)"
    )
    cache: str | None = option(None, help="cache file (default: OUT/judge_cache.sqlite)")
    tokenizer: str | None = option(None, help="local tokenizer dir (default: regex approximation)")
    embedding_base_url: str | None = option(None, help="embeddings server (default: --base-url)")
    # >= 1: --limit 0 would lock the output, judge nothing and exit 0 as if done
    limit: int | None = option(None, ge=1, help="score at most this many pending samples")
    retry_failed: bool = option(
        False,
        help="judge again the rows whose last line is a failure (failed status or a failed dimension); "
        "their new line supersedes the old one",
    )
    rescore_changed: bool = option(
        False,
        help="judge again the finished rows that another judge, prompt version, option set or input text "
        "produced (or whose producer is unknown), instead of refusing to run",
    )
    dry_run: bool = option(
        False, help="estimate calls, tokens and cost of the pending responses; send nothing, write nothing"
    )
    no_progress: bool = option(False, help="no progress bar")

    def __post_init__(self) -> None:
        if self.embedding_base_url:
            check_base_url(self.embedding_base_url, "--embedding-base-url")


@dataclass
class ScoreJob:
    """Everything one run is told."""

    run: RunOptions
    judge: JudgeConfig
    scoring: ScoreOptions
    executor: ExecutorOptions
    price: PriceOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScoreJob:
        """Built (and so validated) before any input is read, any lock taken or any call made."""
        return cls(*(from_args(c, args) for c in (RunOptions, JudgeConfig, ScoreOptions, ExecutorOptions,
                                                  PriceOptions)))


def check_outputs(run: RunOptions) -> None:
    """Refuse unusable output paths with one line before any input is read or any judge call is made."""
    check_output_dir(run.out, "--out")
    if run.work_dir:
        check_output_dir(run.work_dir, "--work-dir")
    if run.cache:
        if os.path.isdir(run.cache):
            raise JudgeInputError(f"--cache {run.cache}: is a directory, not a cache file")
        check_output_dir(os.path.dirname(os.path.abspath(run.cache)), "--cache")


def dry_run(job: ScoreJob) -> dict[str, Any]:
    """``--dry-run``: the estimate (`judge.estimate`) for the responses a run would judge now."""
    from judge.estimate import estimate

    prompts = load_prompts(job.run.prompts)
    samples = load_samples(job.run.samples, prompts)
    done = done_ids_readonly(str(job.run.out))
    todo = [s for s in samples if s["id"] not in done]
    if job.run.limit is not None:
        todo = todo[: job.run.limit]
    cfg = job.judge
    est = estimate(prompts, todo, job.scoring, cfg.structured, load_tokenizer(job.run.tokenizer),
                   cfg.prompt_layout)
    _, price, info = resolve(job.price, cfg.model)
    return {
        "dry_run": True,
        "already_done": len(samples) - len(todo),
        **est,
        "executor": job.executor.executor,
        "cost_usd": cost_of(
            price, est["prompt_tokens"], est["completion_tokens"], job.executor.executor != "online"
        ),
        "price": info,
    }


async def run_job(job: ScoreJob) -> dict[str, Any]:
    """Score the samples not yet in ``OUT/scored.jsonl``; the summary (also written to ``summary.json``)."""
    resolve(job.price, job.judge.model)  # a bad price file is refused before any call
    resolve_api_key(job.judge)  # an unreadable key file, too: refused before the output dir is made
    tokenizer = load_tokenizer(job.run.tokenizer)
    prompts = load_prompts(job.run.prompts)
    samples = load_samples(job.run.samples, prompts)
    lock = OutputLock(job.run.out)
    lock.acquire()  # before the work dir is seeded or anything appended: one writer per --out
    try:
        return await _ScoreRun(job, prompts, samples, tokenizer).run()
    finally:
        lock.release()


class _ScoreRun:
    """The steps of one locked run, in order (`run`)."""

    def __init__(self, job: ScoreJob, prompts: dict[str, dict[str, Any]], samples: list[dict[str, Any]],
                 tokenizer: Tokenizer) -> None:
        self.job, self.prompts, self.samples, self.tokenizer = job, prompts, samples, tokenizer
        self.out = local_out(job.run)
        self.t0 = time.monotonic()

    async def run(self) -> dict[str, Any]:
        index = self.read_finished()
        judge_fp = self.fingerprint()
        changed = changed_rows(index, self.samples, self.prompts, judge_fp)
        if not self.job.run.rescore_changed:
            refuse_changed(self.out / SCORED_FILE, changed, len(index))
        retry = {rid for rid, info in index.items() if info.failed} if self.job.run.retry_failed else set()
        todo = [s for s in self.samples if s["id"] not in index or s["id"] in retry or s["id"] in changed]
        n_todo = len(todo)
        if self.job.run.limit is not None:
            todo = todo[: self.job.run.limit]
        client, embed, driver, cache = self.connect()
        writer = ScoredWriter(self.out, index, self.job.executor.executor)
        try:
            summ = await self.score(client, embed, driver, judge_fp, todo, writer)
        finally:
            writer.close()
            await client.close()
            if embed is not None:
                await embed.close()
            cache.close()
        writer.finish(self.samples)
        summary = {
            **self.counts(summ, index, todo, n_todo, retry, changed, cache),
            **self.accounting(client, driver, index, judge_fp),
        }
        summary["pending_errors"] = summary.pop("pending_errors")  # last, as it always was
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        upload_out(self.job.run, self.out)
        return summary

    def read_finished(self) -> dict[str, RowInfo]:
        """The last line per id already in ``scored.jsonl`` (a torn last line cut off, and said so)."""
        self.out.mkdir(parents=True, exist_ok=True)
        scored_path = self.out / SCORED_FILE
        index, dropped = scan_scored(scored_path)
        if dropped:
            print(
                f"judge.score: dropped a torn last line ({dropped} bytes) from {scored_path}", file=sys.stderr
            )
        return index

    def fingerprint(self) -> dict[str, Any]:
        run = self.job.run
        return judge_fingerprint(
            self.job.judge,
            self.job.scoring,
            PROMPT_VERSION,
            # the absolute path: the same tokenizer named from another working directory is not a change
            tokenizer=os.path.abspath(run.tokenizer) if run.tokenizer else None,
            embedding_base_url=run.embedding_base_url,
        )

    def connect(self) -> tuple[JudgeClient, JudgeClient | None, WaveDriver | None, ResponseCache]:
        """The response cache, the judge client with its executor, and the embeddings client if separate."""
        run, cfg = self.job.run, self.job.judge
        path = run.cache or self.out / "judge_cache.sqlite"
        cache = refresh_unparseable_cache(path) if run.retry_failed else ResponseCache(path)
        transport = Transport(cfg)
        embed = None
        if run.embedding_base_url:
            embed = JudgeClient(dataclasses.replace(cfg, base_url=run.embedding_base_url), cache)
        watch = [transport] + ([embed.transport] if embed is not None else [])
        driver = make_driver(self.job.executor, transport, self.out, watch)
        client = JudgeClient(cfg, cache, executor=driver, transport=transport)
        return client, embed, driver, cache

    async def score(
        self,
        client: JudgeClient,
        embed: JudgeClient | None,
        driver: WaveDriver | None,
        judge_fp: dict[str, Any],
        todo: list[dict[str, Any]],
        writer: ScoredWriter,
    ) -> RunSummary:
        opts = self.job.scoring
        if driver is not None:
            # every response in flight at once: a wave holds the questions of all of them, not of --max-items;
            # no per-response deadline: a batch may take hours (--batch-wait bounds the wait instead)
            opts = dataclasses.replace(opts, max_items=max(1, len(todo)), item_timeout_s=None)
        scorer = Scorer(client, opts, self.tokenizer, embed, judge_fp=judge_fp)
        bar = None if self.job.run.no_progress else _progress(len(todo))
        _, price, _ = resolve(self.job.price, self.job.judge.model)

        def on_row(row: Any) -> None:
            writer.row(row)
            if bar is not None:
                paid = client.stats.total_paid()
                dt = max(1e-9, time.monotonic() - self.t0)
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
            coro = scorer.score_many(self.prompts, todo, on_row, keep_rows=False, on_usage=writer.usage)
            _, summ = await (driver.drive(coro) if driver is not None else coro)
        finally:
            if bar is not None:
                bar.close()
        return summ

    def counts(
        self,
        summ: RunSummary,
        index: dict[str, RowInfo],
        todo: list[dict[str, Any]],
        n_todo: int,
        retry: set[str],
        changed: dict[str, list[str]],
        cache: ResponseCache,
    ) -> dict[str, Any]:
        """What this run did to the rows."""
        return {
            "scored": summ.scored,
            "failed": summ.failed_rows,
            "pending": summ.pending,
            "already_done": len(self.samples) - n_todo,
            "retried": len([s for s in todo if s["id"] in retry]),
            "rescored_changed": len([s for s in todo if s["id"] in changed]),
            "refreshed_answers": getattr(cache, "refreshed", 0),
            "rows_in_file": len(index),  # distinct ids: a retried row's new line supersedes its old one
            "samples": len(self.samples),
            "failed_by_dimension": {d: summ.failed_by_dimension.get(d, 0) for d in DIMENSIONS},
            "pending_errors": summ.pending_errors[:20],
        }

    def accounting(
        self,
        client: JudgeClient,
        driver: WaveDriver | None,
        index: dict[str, RowInfo],
        judge_fp: dict[str, Any],
    ) -> dict[str, Any]:
        """What it cost, and which judge the rows in the file come from."""
        cfg = self.job.judge
        _, price, price_info = resolve(self.job.price, cfg.model)
        paid = client.stats.total_paid()
        judge_sha = judge_digest(judge_fp)
        cost_usd, saved_usd = money(client.stats, price, driver is not None)
        by_dim = {
            d: {**u.as_dict(), "cached_tokens": client.stats.cached_tokens.get(d, 0)}
            for d, u in sorted(client.stats.paid.items())
        }
        return {
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
            "elapsed_s": round(time.monotonic() - self.t0, 2),
            # the rows in scored.jsonl, not just this run: a list when they come from several judges
            "judge_model": one_value(Counter(r.judge_model for r in index.values()), cfg.model),
            "prompt_version": one_value(Counter(r.prompt_version for r in index.values()), PROMPT_VERSION),
            "file": file_summary(index, judge_sha),
            "run": {
                "judge_model": cfg.model,
                "base_url_host": base_url_host(cfg.base_url),
                "prompt_version": PROMPT_VERSION,
                "judge_sha256": judge_sha,
            },
            "base_url_host": one_value(
                Counter(r.base_url_host for r in index.values()), base_url_host(cfg.base_url)
            ),
        }


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="judge", unit="resp", file=sys.stderr)


def local_out(run: RunOptions) -> Path:
    """Where rows are appended. For a gs:// --out: a local work dir (append + fsync need a local file),
    seeded from the bucket so a run on another machine resumes, and uploaded back at the end of the run."""
    if not str(run.out).startswith("gs://"):
        return Path(run.out)
    from lr_jax.io import storage

    work = Path(
        run.work_dir
        or Path.home() / ".cache" / "lr_jax_judge" / hashlib.sha256(run.out.encode()).hexdigest()[:12]
    )
    work.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        remote = storage.join(run.out, name)
        if not (work / name).exists() and storage.exists(remote):
            storage.download_file(remote, str(work / name))
    return work


def upload_out(run: RunOptions, work: Path) -> None:
    if not str(run.out).startswith("gs://"):
        return
    from lr_jax.io import storage

    for name in OUTPUT_FILES:
        if (work / name).exists():
            storage.upload_file(str(work / name), storage.join(run.out, name))

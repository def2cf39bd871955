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
import json
import sys
from typing import Any

from judge.client import JudgeConfig
from judge.executors import ExecutorOptions
from judge.prices import PriceOptions
from judge.score.run import RunOptions, ScoreJob, check_outputs, dry_run, run_job
from judge.score.scorer import ScoreOptions
from lr_jax.options import OneLineParser, add_flags, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The ``judge.score`` flags, generated from `RunOptions`, `JudgeConfig`, `ScoreOptions`,
    `ExecutorOptions` and `PriceOptions` (their defaults, bounds and help live there)."""
    ap = OneLineParser(prog="python -m judge.score", description=__doc__.split("\n")[0])
    add_flags(ap, RunOptions)
    add_flags(ap.add_argument_group("judge"), JudgeConfig)
    add_flags(ap.add_argument_group("scoring"), ScoreOptions)
    add_flags(ap.add_argument_group("executor (judge/executors.py)"), ExecutorOptions)
    add_flags(ap.add_argument_group("cost (judge/prices.py)"), PriceOptions)
    return ap


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


def _print_estimate(est: dict[str, Any]) -> None:
    print(json.dumps(est, indent=2))
    usd = "unknown price" if est["cost_usd"] is None else f"~${est['cost_usd']:.4f}"
    print(
        f"judge.score --dry-run: {est['responses']} response(s) would take ~{est['calls']} calls, "
        f"~{est['prompt_tokens']} prompt + ~{est['completion_tokens']} completion tokens, {usd} as "
        f"{est['price']['model']} ({est['executor']}); nothing was sent",
        file=sys.stderr,
    )


def _print_summary(s: dict[str, Any]) -> None:
    print(
        f"judge.score: scored {s['scored']}, failed {s['failed']}, pending {s['pending']} "
        f"(already done {s['already_done']}); failed per dimension {s['failed_by_dimension']}; "
        f"calls {s['calls']} (+{s['cache_hits']} from cache), tokens {s['prompt_tokens']} prompt + "
        f"{s['completion_tokens']} completion ({s['cached_tokens']} prompt-cached), "
        + ("cost unknown (no price)" if s["cost_usd"] is None else f"${s['cost_usd']:.4f}")
        + f", {s['elapsed_s']} s"
    )
    _report_pending(s)


def _main(args: argparse.Namespace) -> int:
    job = ScoreJob.from_args(args)
    if job.run.dry_run:
        _print_estimate(dry_run(job))
        return 0
    check_outputs(job.run)
    s = asyncio.run(run_job(job))
    _print_summary(s)
    return 1 if s["pending"] else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m judge.score``: 0 done, 1 some responses pending (re-run), 2 bad input or refused."""
    args = build_parser().parse_args(argv)
    return run_cli("judge.score", lambda: _main(args))

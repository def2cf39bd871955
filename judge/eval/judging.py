"""Judging and scoring a predictions directory (the protocol is in `judge.eval`'s docstring): items are
rated (`judge.eval.rating`) through `judge.client.JudgeClient`, appended to ``OUT/judged.jsonl`` as each
finishes (fsync per item; a re-run skips items done; a torn last line is cut), aggregated with LongBench's
rule-based metrics into ``OUT/results.json`` / ``results.md``. No JAX is imported here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from judge.cache import RefreshingCache, ResponseCache
from judge.chunking import approx_tokens
from judge.client import Answer, JudgeClient, JudgeConfig, TransportExhausted, base_url_host, gather_or_cancel
from judge.eval.rating import (
    COMPLETION_TOKENS_GUESS,
    EVAL_PROMPT_VERSION,
    SCALES,
    item_score,
    json_format,
    kind_of,
    parse_rating,
    prompt_values,
    render,
)
from judge.outdir import OutputLock
from judge.schema import JudgeInputError
from lr_jax.eval import metrics
from lr_jax.eval.benchmarks import (
    CATEGORIES,
    LONGBENCH_CHAT,
    EvalInputError,
    base_task,
    category_of,
    find_prediction_files,
    read_few_shots,
    read_predictions,
)
from lr_jax.eval.report import aggregate, write_results
from lr_jax.io import jsonl
from lr_jax.options import option, validate


@dataclass
class EvalOptions:
    """What to judge and how much at a time (the judge itself is a `JudgeConfig`)."""

    few_shots: str | None = option(None, help="LongBench-Chat few_shots.json (scored examples)")
    tasks: tuple[str, ...] | None = option(None, cli=False)  # the CLI's --tasks is comma-separated
    retry_failed: bool = option(False, help="judge failed items again")
    rule_only: bool = option(False, help="only LongBench's rule-based metrics")
    # >= 1: a semaphore of 0 would wait forever
    max_items: int = option(16, ge=1, help="items in flight")
    # >= 1: a negative limit would slice from the end and silently judge fewer items
    limit: int | None = option(None, ge=1, help="judge at most this many pending items")
    progress: bool = option(False, cli=False)  # the CLI's --no-progress
    run_name: str | None = option(None, help="name in the tables (default: the predictions dir)")

    def __post_init__(self) -> None:
        validate(self, JudgeInputError)


async def judge_item(client: JudgeClient, row: dict[str, Any],
                     shots: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """Rate one prediction against each reference; the judged row (``status`` scored / failed).

    Raises `TransportExhausted` when the judge could not be reached within budget (the item stays pending).
    """
    task = row["task"]
    kind = kind_of(task)
    if kind is None:
        raise EvalInputError(f"task {task!r} is not judged (judged: LongBench-Chat and "
                             f"{', '.join(t for ts in CATEGORIES.values() for t in ts)})")
    top = SCALES[kind]

    async def one(ref: str) -> Answer:
        values = prompt_values(kind, row, ref, shots)
        return await client.ask_with(kind, lambda mode: render(kind, mode, **values),
                                     lambda raw: parse_rating(raw, top), json_format(kind),
                                     EVAL_PROMPT_VERSION, dimension=task)

    answers = await asyncio.gather(*(one(ref) for ref in row["answers"]))
    ratings = [{"reference": i, "status": "scored" if a.ok else "failed",
                "rating": a.value.get("rating") if a.ok else None,
                "reasoning": a.value.get("reasoning", "") if a.ok else "", "raw": a.raw, "error": a.error,
                "usage": a.usage.as_dict()} for i, a in enumerate(answers)]
    ok = [r["rating"] for r in ratings if r["status"] == "scored"]
    failed = [r for r in ratings if r["status"] == "failed"]
    best = max(ok) if ok else None
    if not row["answers"]:
        status, error = "failed", "no reference answer"
    elif failed and best != top:  # a missing rating could be the max: the item's score is unknown
        status = "failed"
        error = "; ".join(f"reference {r['reference']}: {r['error']}" for r in failed)
    else:
        status, error = "scored", None
    return {"task": task, "id": row["id"], "status": status, "rating": best if status == "scored" else None,
            "score": item_score(kind, best) if status == "scored" and best is not None else None,
            "error": error, "kind": kind, "ratings": ratings}


def refresh_unparseable_ratings(path: str | Path) -> RefreshingCache:
    """``--retry-failed``: a cached rating answer that does not parse is a miss (asked again, replaced);
    every answer that parses still comes from the cache."""
    return RefreshingCache(
        path, lambda kind, text: kind in SCALES and not parse_rating(text, SCALES[kind]).ok
    )


def _key(task: str, rid: str) -> str:
    return f"{task}/{rid}"


def content_hash(row: dict[str, Any], judge_model: str, shots: list[tuple[str, int]] | None = None) -> str:
    """What a judgement depends on: the prediction, question, references, the judge model, the prompt
    version and the few-shot examples shown. If any changed, the item is judged again (a stale row is never
    reused; the cache still answers the unchanged calls)."""
    blob = json.dumps([row["prediction"], row["query"], row["answers"], judge_model, EVAL_PROMPT_VERSION,
                       shots or []], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_judged(path: Path) -> dict[str, dict[str, Any]]:
    """Last judged row per ``task/id`` in ``judged.jsonl`` (a torn last line is cut off first)."""
    text, dropped = jsonl.repair_torn_tail(str(path))
    if dropped:
        print(f"judge.eval: dropped a torn last line ({dropped} bytes) from {path}", file=sys.stderr)
    out: dict[str, dict[str, Any]] = {}
    for n, row in jsonl.parse_lines(jsonl.split_lines(text), source=str(path), error=EvalInputError,
                                    where=lambda n: f"{path}:{n}"):
        if not isinstance(row.get("task"), str) or not isinstance(row.get("id"), str):
            raise EvalInputError(f"{path}:{n}: fields 'task' and 'id' must be strings (not a judged.jsonl?)")
        out[_key(row["task"], row["id"])] = row
    return out


def _load_predictions(pred_dir: str, tasks: tuple[str, ...] | None) -> dict[str, list[dict[str, Any]]]:
    files = find_prediction_files(pred_dir)
    if tasks:
        missing = [t for t in tasks if t not in files]
        if missing:
            raise EvalInputError(f"{pred_dir}: no predictions for task(s) {', '.join(missing)}")
        files = {t: files[t] for t in tasks}
    if not files:
        raise EvalInputError(f"{pred_dir}: no predictions (<task>.jsonl) found")
    out = {}
    for task, path in files.items():
        rows = read_predictions(path)
        if not rows:  # else it would be judged as nothing and reported as an empty table
            raise EvalInputError(f"{path}: no predictions (the file is empty)")
        for r in rows:
            if r["task"] != task:
                raise EvalInputError(f"{path}: item {r['id']!r}: field 'task' is {r['task']!r}, the file is "
                                     f"{task!r}")
        out[task] = rows
    return out


def rule_section(preds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """LongBench's own metrics for every LongBench task present (LongBench-E buckets for ``*_e``)."""
    tasks: dict[str, Any] = {}
    for task, rows in preds.items():
        if task == LONGBENCH_CHAT:
            continue
        scores = []
        for r in rows:
            try:
                s = metrics.longbench_score(task, r["prediction"], r["answers"], r.get("all_classes"))
            except metrics.MetricInputError as e:
                raise EvalInputError(f"{task}.jsonl: item {r['id']!r}: {e}") from None
            scores.append(s)
        entry: dict[str, Any] = {"score": metrics.task_score(scores),
                                 "category": category_of(base_task(task)), "items": len(rows),
                                 "scored": len(rows), "failed": 0, "failed_ids": []}
        if task.endswith("_e"):
            entry["e_buckets"] = metrics.task_score_e(scores, [r.get("length") or 0 for r in rows])
        tasks[task] = entry
    return {"tasks": tasks}


class _Judging:
    """The judged half of one run, step by step (`run`)."""

    def __init__(self, preds: dict[str, list[dict[str, Any]]], shots: dict[str, list[tuple[str, int]]],
                 out: Path, cfg: JudgeConfig, opts: EvalOptions) -> None:
        self.preds, self.shots, self.out, self.cfg, self.opts = preds, shots, out, cfg, opts
        self.judged_path = out / "judged.jsonl"
        self.pending: list[str] = []

    def sig(self, r: dict[str, Any]) -> str:
        shots = self.shots.get(r["id"]) if r["task"] == LONGBENCH_CHAT else None
        return content_hash(r, self.cfg.model, shots)

    def select(self, done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Items not judged yet, judged from other inputs, or (``--retry-failed``) failed; at most limit."""
        todo = []
        for task, rows in self.preds.items():
            if kind_of(task) is None:
                continue
            for r in rows:
                prev = done.get(_key(task, r["id"]))
                if (prev is None or prev.get("content_hash") != self.sig(r)
                        or (self.opts.retry_failed and prev["status"] != "scored")):
                    todo.append(r)
        return todo if self.opts.limit is None else todo[:self.opts.limit]

    async def judge(self, client: JudgeClient, todo: list[dict[str, Any]], done: dict[str, dict[str, Any]],
                    f: IO[str]) -> None:
        """Judge ``todo``, ``max_items`` at a time, appending each row as it finishes."""
        bar = None
        if self.opts.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="judge.eval", unit="item", file=sys.stderr)
        sem = asyncio.Semaphore(self.opts.max_items)

        async def one(r: dict[str, Any]) -> None:
            async with sem:
                try:
                    chat = r["task"] == LONGBENCH_CHAT
                    row = await judge_item(client, r, self.shots.get(r["id"]) if chat else None)
                except TransportExhausted as e:
                    self.pending.append(f"{r['task']}/{r['id']}: {e}")
                    return
            row.update(content_hash=self.sig(r), judge_model=self.cfg.model,
                       prompt_version=EVAL_PROMPT_VERSION)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")  # one writer: the event loop
            f.flush()
            os.fsync(f.fileno())
            done[_key(row["task"], row["id"])] = row
            if bar is not None:
                bar.update(1)

        try:
            await gather_or_cancel(one(r) for r in todo)
        finally:
            if bar is not None:
                bar.close()

    async def run(self) -> dict[str, Any]:
        """The judged sections of ``results.json``: judged, judge, usage, usage_all_runs, pending."""
        done = read_judged(self.judged_path)
        todo = self.select(done)
        path = self.out / "judge_cache.sqlite"
        cache_db = refresh_unparseable_ratings(path) if self.opts.retry_failed else ResponseCache(path)
        client = JudgeClient(self.cfg, cache_db)
        t0 = time.monotonic()
        f = open(self.judged_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
        try:
            await self.judge(client, todo, done, f)
        finally:
            f.close()
            await client.close()
            cache_db.close()
        return self.sections(done, client, cache_db, time.monotonic() - t0)

    def sections(self, done: dict[str, dict[str, Any]], client: JudgeClient, cache_db: ResponseCache,
                 elapsed: float) -> dict[str, Any]:
        current = {_key(t, r["id"]): self.sig(r)
                   for t, rows in self.preds.items() if kind_of(t) for r in rows}
        wanted = list(current)
        # a judgement of an older version of the prediction is stale: not counted
        done = {k: v for k, v in done.items() if v.get("content_hash") == current.get(k)}
        items = [done[k] for k in wanted if k in done]
        paid = client.stats.total_paid()
        total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for it in items:
            for rr in it.get("ratings", []):
                for k in total:
                    total[k] += int(rr.get("usage", {}).get(k, 0))
        not_done = [k for k in wanted if k not in done]  # transport budget ran out, or beyond --limit
        return {
            "judged": aggregate(items),
            "judge": {"model": self.cfg.model, "base_url_host": base_url_host(self.cfg.base_url),
                      "prompt_version": EVAL_PROMPT_VERSION, "few_shots": bool(self.opts.few_shots)},
            "usage": {**paid.as_dict(), "cache_hits": client.stats.cache_hits,
                      "parse_retries": client.stats.parse_retries,
                      "refreshed_answers": getattr(cache_db, "refreshed", 0),
                      "elapsed_s": round(elapsed, 2)},
            "usage_all_runs": total,  # what the recorded judgements cost, cache hits included
            "pending": {"count": len(not_done), "transport_failures": len(self.pending),
                        "items": not_done[:50], "errors": self.pending[:20]},
        }


async def judge_predictions(pred_dir: str, out_dir: str, cfg: JudgeConfig | None,
                            opts: EvalOptions) -> dict[str, Any]:
    """Judge (unless ``rule_only``) and score a predictions directory; writes judged.jsonl + results."""
    preds = _load_predictions(pred_dir, opts.tasks)
    shots: dict[str, list[tuple[str, int]]] = read_few_shots(opts.few_shots) if opts.few_shots else {}
    if opts.few_shots and LONGBENCH_CHAT in preds:
        missing = [r["id"] for r in preds[LONGBENCH_CHAT] if r["id"] not in shots]
        if missing:
            raise EvalInputError(f"{opts.few_shots}: no examples for LongBench-Chat question(s) "
                                 f"{missing[:10]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"run": opts.run_name or Path(os.path.normpath(pred_dir)).name,
                               "predictions": pred_dir, "rule": rule_section(preds)}
    sampler = next((r.get("sampler") for rows in preds.values() for r in rows if r.get("sampler")), None)
    if sampler:
        results["sampler"] = sampler
    if not opts.rule_only:
        if cfg is None:
            raise EvalInputError("a judge (base_url and model) is required unless rule_only")
        # one writer per output: two runs would append the same items to judged.jsonl and pay twice
        with OutputLock(str(out), prog="judge.eval"):
            results.update(await _Judging(preds, shots, out, cfg, opts).run())
            write_results(str(out), results)
        return results
    write_results(str(out), results)
    return results


def estimate(pred_dir: str, tasks: tuple[str, ...] | None, few_shots: str | None) -> dict[str, Any]:
    """Judge calls and tokens a full run would cost (no server needed): one call per reference answer;
    prompt tokens from the rendered prompts (regex token estimate, `judge.chunking.approx_tokens`)."""
    preds = _load_predictions(pred_dir, tasks)
    shots = read_few_shots(few_shots) if few_shots else {}
    per_task: dict[str, Any] = {}
    for task, rows in preds.items():
        kind = kind_of(task)
        if kind is None:
            continue
        calls = pt = 0
        for r in rows:
            for ref in r["answers"]:
                msgs = render(kind, "json", **prompt_values(kind, r, ref, shots.get(r["id"])))
                calls += 1
                pt += sum(approx_tokens(m["content"]) for m in msgs)
        per_task[task] = {"items": len(rows), "calls": calls, "prompt_tokens": pt,
                          "completion_tokens": calls * COMPLETION_TOKENS_GUESS}
    tot = {k: sum(v[k] for v in per_task.values()) for k in ("items", "calls", "prompt_tokens",
                                                              "completion_tokens")}
    return {"tasks": per_task, "total": tot}


def load_judged(run: str) -> Any:
    """pandas DataFrame, one row per judged item: task, category, id, status, rating, score, error."""
    import pandas as pd

    path = Path(run) / "judged.jsonl" if not run.endswith(".jsonl") else Path(run)
    rows = list(read_judged(path).values()) if path.exists() else []
    cols = ["task", "category", "id", "status", "rating", "score", "error"]
    return pd.DataFrame([{**{c: r.get(c) for c in cols}, "category": category_of(r["task"])} for r in rows],
                        columns=cols)

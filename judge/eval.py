"""LLM-judged and rule-based scores of benchmark predictions: ``python -m judge.eval``.

    python -m judge.eval --predictions runs/sft --base-url URL --model NAME [--few-shots few_shots.json]
    python -m judge.eval --predictions runs/sft --dry-run          # judge calls and tokens it would cost
    python -m judge.eval --predictions runs/sft --rule-only        # LongBench's own metrics, no judge
    python -m judge.eval compare runs/sft runs/dpo [--png compare.png]

Judged (the LongReward paper's protocol, prompts in our own words, ``judge/prompts/eval_*.txt``):

- LongBench-Chat: a 1-10 rating of the prediction against the reference answer, with the benchmark's three
  scored example answers for that question in the prompt when ``--few-shots`` is given; item score
  rating / 10, so the task score (100 x mean) is the mean rating x 10;
- LongBench QA (S-Doc: narrativeqa, qasper, multifieldqa_en, multifieldqa_zh; M-Doc: hotpotqa, 2wikimqa,
  musique, dureader): a 1-3 rating per reference answer (correctness first, then completeness) -> (r-1)/2;
- summarization (gov_report, qmsum, multi_news, vcsum): 1-5 per reference -> (r-1)/4;
- an item takes the max over its references; task = 100 x mean over scored items; category = mean of its
  tasks; Avg = mean of LongBench-Chat, S-Doc, M-Doc, Summ (`lr_jax.eval.report`).

An unparseable rating (after the client's re-asks) is a typed failure: the item is ``failed``, listed by id
per task, and left out of the mean — never 0.5, never 0, never a crash. (If another reference already got the
top rating, the item's max is known and it is scored.) Calls go through `judge.client.JudgeClient`: RPM / TPM
limits, concurrency, retries, and the SQLite cache (``OUT/judge_cache.sqlite``), so a re-run pays nothing.
Items are appended to ``OUT/judged.jsonl`` (fsync per item; a re-run skips items done; a torn last line is
cut). An item whose transport budget runs out stays pending (exit 1). ``--retry-failed`` judges failed items
again, re-asking only the unparseable answers.

Rule-based: every LongBench prediction file is also scored with the benchmark's own metrics
(`lr_jax.eval.metrics`, LongBench-E buckets for ``*_e`` files). Both go to ``OUT/results.json`` and
``OUT/results.md``. No JAX is imported here.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from judge.cache import ResponseCache
from judge.chunking import approx_tokens
from judge.client import (
    Answer,
    JudgeClient,
    JudgeConfig,
    JudgeFatalError,
    TransportExhausted,
    base_url_host,
    gather_or_cancel,
    run_sync,
)
from judge.parsing import Parsed
from judge.schema import JudgeInputError
from lr_jax.errors import LrJaxError
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
from lr_jax.eval.report import (
    aggregate,
    compare_chart,
    compare_frame,
    compare_table,
    load_results,
    task_frame,
    write_results,
)
from lr_jax.io import jsonl, storage

__all__ = ["EVAL_PROMPT_VERSION", "compare_frame", "judge_predictions", "load_judged", "parse_rating",
           "task_frame"]

_PROMPTS = Path(__file__).parent / "prompts"
SCALES: dict[str, int] = {"eval_qa": 3, "eval_summ": 5, "eval_chat": 10}
COMPLETION_TOKENS_GUESS = 60  # reasoning sentence + rating, for --dry-run estimates


def kind_of(task: str) -> str | None:
    """The rating prompt of a task: eval_chat / eval_qa / eval_summ; None for tasks that are not judged."""
    cat = category_of(task)
    if cat == "LongBench-Chat":
        return "eval_chat"
    if cat in ("S-Doc", "M-Doc"):
        return "eval_qa"
    if cat == "Summ":
        return "eval_summ"
    return None


def item_score(kind: str, rating: int) -> float:
    """Rating -> [0, 1]: QA (r-1)/2, summaries (r-1)/4, LongBench-Chat r/10 (so 100 x mean = 10 x rating)."""
    if kind == "eval_chat":
        return rating / 10
    return (rating - 1) / (SCALES[kind] - 1)


# --------------------------------------------------------------------------------------------- prompts

_REPLY_JSON = ('Reply with one JSON object only: {"reasoning": "<your comparison>", '
               '"rating": <integer %d-%d>}.')
_REPLY_TAGGED = ("Write your comparison inside <reasoning></reasoning>, then the rating (an integer from %d "
                 "to %d) inside <rating></rating>.")


def _schema(top: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"reasoning": {"type": "string"},
                       "rating": {"type": "integer", "minimum": 1, "maximum": top}},
        "required": ["reasoning", "rating"],
        "additionalProperties": False,
    }


def json_format(kind: str) -> dict[str, Any]:
    top = SCALES[kind]
    return {"type": "json_schema",
            "json_schema": {"name": f"rating_1_{top}", "schema": _schema(top), "strict": True}}


@cache
def _template(kind: str) -> tuple[Template, Template]:
    system, user = (_PROMPTS / f"{kind}.txt").read_text(encoding="utf-8").split("\n---user---\n", 1)
    return Template(system.strip()), Template(user.strip())


def _version() -> str:
    h = hashlib.sha256()
    for kind in SCALES:
        h.update((_PROMPTS / f"{kind}.txt").read_bytes())
    h.update(repr((_REPLY_JSON, _REPLY_TAGGED, [json_format(k) for k in SCALES])).encode())
    return "eval-v1-" + h.hexdigest()[:10]


EVAL_PROMPT_VERSION = _version()


def render(kind: str, mode: str, **values: str) -> list[dict[str, str]]:
    """The chat messages of one rating question (``mode`` 'json' or 'tagged' picks the format sentence)."""
    system, user = _template(kind)
    top = SCALES[kind]
    fmt = (_REPLY_JSON if mode == "json" else _REPLY_TAGGED) % (1, top)
    return [{"role": "system", "content": system.substitute()},
            {"role": "user", "content": user.substitute(**values) + "\n\n" + fmt}]


def examples_block(shots: list[tuple[str, int]]) -> str:
    """LongBench-Chat's scored example answers for one question, as prompt text ('' without few-shots)."""
    if not shots:
        return ""
    parts = ["\nOther answers to the same question, with the ratings they were given; use them to calibrate "
             "your scale:\n"]
    for i, (answer, score) in enumerate(shots, start=1):
        parts.append(f"<example_answer_{i}>\n{answer}\n</example_answer_{i}>\n"
                     f"<example_rating_{i}>\n{score}\n</example_rating_{i}>\n")
    return "\n".join(parts)


def prompt_values(kind: str, row: dict[str, Any], reference: str,
                  shots: list[tuple[str, int]] | None) -> dict[str, str]:
    values = {"reference": reference, "prediction": row["prediction"]}
    if kind == "eval_summ":
        values["request"] = row["query"].strip() or "A summary of the whole document."
    else:
        values["query"] = row["query"]
    if kind == "eval_chat":
        values["examples"] = examples_block(shots or [])
    return values


# --------------------------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def _json_object(text: str) -> dict[str, Any] | None:
    cands = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    a, b = text.find("{"), text.rfind("}")
    if 0 <= a < b:
        cands.append(text[a:b + 1])
    for c in cands:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        if not re.fullmatch(r"\d+(?:\.0+)?", v):
            return None
        v = float(v)
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return v if isinstance(v, int) else None


def parse_rating(text: str, top: int) -> Parsed:
    """The judge's integer rating in [1, top]: JSON ``rating``, else ``<rating>N</rating>``, else a trailing
    ``[[N]]``. Anything else (no rating, a fraction, out of range, null) is ``ok=False`` with the reason."""
    obj = _json_object(text)
    reasoning = ""
    if obj is not None and "rating" in obj:
        value, reasoning = obj["rating"], str(obj.get("reasoning", ""))
    else:
        tags = re.findall(r"<rating>(.*?)</rating>", text, re.S | re.I)
        brackets = re.findall(r"\[\[([^\]]+)\]\]", text)
        if tags:
            value = tags[-1]
        elif brackets:
            value = brackets[-1]
        else:
            return Parsed(False, error="no rating found (neither JSON 'rating', <rating> tag nor [[N]])")
        m = re.findall(r"<reasoning>(.*?)</reasoning>", text, re.S | re.I)
        reasoning = m[-1].strip() if m else text.strip()
    r = _as_int(value)
    if r is None:
        return Parsed(False, error=f"rating {value!r} is not an integer")
    if not 1 <= r <= top:
        return Parsed(False, error=f"rating {r} is outside 1-{top}")
    return Parsed(True, {"rating": r, "reasoning": reasoning})


# --------------------------------------------------------------------------------------------- judging


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


class _RefreshUnparseableRatings(ResponseCache):
    """``--retry-failed``: a cached rating answer that does not parse is a miss (asked again, replaced);
    every answer that parses still comes from the cache."""

    refreshed = 0

    def get(self, key: str) -> tuple[str, int, int] | None:
        row = self._db.execute(  # same table as ResponseCache.get, plus the kind column
            "SELECT kind, text, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        kind, text, pt, ct = row
        if kind in SCALES and not parse_rating(text, SCALES[kind]).ok:
            self.refreshed += 1
            return None
        return text, int(pt), int(ct)


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


@dataclass
class EvalOptions:
    few_shots: str | None = None
    tasks: tuple[str, ...] | None = None
    retry_failed: bool = False
    rule_only: bool = False
    max_items: int = 16
    limit: int | None = None
    progress: bool = False
    run_name: str | None = None


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
    judged_path = out / "judged.jsonl"
    results: dict[str, Any] = {"run": opts.run_name or Path(os.path.normpath(pred_dir)).name,
                               "predictions": pred_dir, "rule": rule_section(preds)}
    sampler = next((r.get("sampler") for rows in preds.values() for r in rows if r.get("sampler")), None)
    if sampler:
        results["sampler"] = sampler
    pending: list[str] = []
    if not opts.rule_only:
        assert cfg is not None
        done = read_judged(judged_path)

        def sig(r: dict[str, Any]) -> str:
            return content_hash(r, cfg.model, shots.get(r["id"]) if r["task"] == LONGBENCH_CHAT else None)

        todo = []
        for task, rows in preds.items():
            if kind_of(task) is None:
                continue
            for r in rows:
                prev = done.get(_key(task, r["id"]))
                if (prev is None or prev.get("content_hash") != sig(r)
                        or (opts.retry_failed and prev["status"] != "scored")):
                    todo.append(r)
        if opts.limit is not None:
            todo = todo[:opts.limit]
        cache_cls = _RefreshUnparseableRatings if opts.retry_failed else ResponseCache
        cache_db = cache_cls(out / "judge_cache.sqlite")
        client = JudgeClient(cfg, cache_db)
        bar = None
        if opts.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="judge.eval", unit="item", file=sys.stderr)
        f = open(judged_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
        sem = asyncio.Semaphore(opts.max_items)

        async def one(r: dict[str, Any]) -> None:
            async with sem:
                try:
                    chat = r["task"] == LONGBENCH_CHAT
                    row = await judge_item(client, r, shots.get(r["id"]) if chat else None)
                except TransportExhausted as e:
                    pending.append(f"{r['task']}/{r['id']}: {e}")
                    return
            row.update(content_hash=sig(r), judge_model=cfg.model,
                       prompt_version=EVAL_PROMPT_VERSION)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")  # one writer: the event loop
            f.flush()
            os.fsync(f.fileno())
            done[_key(row["task"], row["id"])] = row
            if bar is not None:
                bar.update(1)

        t0 = time.monotonic()
        try:
            await gather_or_cancel(one(r) for r in todo)
        finally:
            f.close()
            if bar is not None:
                bar.close()
            await client.close()
            cache_db.close()
        current = {_key(t, r["id"]): sig(r) for t, rows in preds.items() if kind_of(t) for r in rows}
        wanted = list(current)
        # a judgement of an older version of the prediction is stale: not counted
        done = {k: v for k, v in done.items() if v.get("content_hash") == current.get(k)}
        items = [done[k] for k in wanted if k in done]
        results["judged"] = aggregate(items)
        paid = client.stats.total_paid()
        total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for it in items:
            for rr in it.get("ratings", []):
                for k in total:
                    total[k] += int(rr.get("usage", {}).get(k, 0))
        results["judge"] = {"model": cfg.model, "base_url_host": base_url_host(cfg.base_url),
                            "prompt_version": EVAL_PROMPT_VERSION, "few_shots": bool(opts.few_shots)}
        results["usage"] = {**paid.as_dict(), "cache_hits": client.stats.cache_hits,
                            "parse_retries": client.stats.parse_retries,
                            "refreshed_answers": getattr(cache_db, "refreshed", 0),
                            "elapsed_s": round(time.monotonic() - t0, 2)}
        results["usage_all_runs"] = total  # what the recorded judgements cost, cache hits included
        not_done = [k for k in wanted if k not in done]  # transport budget ran out, or beyond --limit
        results["pending"] = {"count": len(not_done), "transport_failures": len(pending),
                              "items": not_done[:50], "errors": pending[:20]}
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


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m judge.eval", description=__doc__.split("\n")[0],
                                 epilog="Side by side: python -m judge.eval compare RUN_A RUN_B ... "
                                        "(see its --help).")
    ap.add_argument("--predictions", required=True, help="dir of <task>.jsonl from lr_jax.eval predict")
    ap.add_argument("--out", default=None, help="local output dir (default: the predictions dir)")
    ap.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (required unless "
                                                     "--rule-only / --dry-run)")
    ap.add_argument("--model", default=None, help="judge model name")
    ap.add_argument("--api-key-file", default=None, help="file holding the key (default: $OPENAI_API_KEY)")
    ap.add_argument("--few-shots", default=None, help="LongBench-Chat few_shots.json (scored examples)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: every file present)")
    ap.add_argument("--run-name", default=None, help="name in the tables (default: the predictions dir)")
    ap.add_argument("--rule-only", action="store_true", help="only LongBench's rule-based metrics")
    ap.add_argument("--dry-run", action="store_true", help="print the judge calls and tokens, call nothing")
    ap.add_argument("--retry-failed", action="store_true", help="judge failed items again")
    ap.add_argument("--limit", type=int, default=None, help="judge at most this many pending items")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--retry-temperature", type=float, default=0.95)
    ap.add_argument("--parse-retries", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-items", type=int, default=16, help="items in flight")
    ap.add_argument("--rpm", type=float, default=None)
    ap.add_argument("--tpm", type=float, default=None)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--max-attempts", type=int, default=6)
    ap.add_argument("--retry-budget", type=float, default=600.0)
    ap.add_argument("--backoff", type=float, default=1.0)
    ap.add_argument("--structured", choices=["auto", "json", "tagged"], default="auto")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def compare_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m judge.eval compare",
                                 description="Side-by-side table of runs (the paper's layout) with deltas.")
    ap.add_argument("runs", nargs="+", help="run dirs (with results.json) or results.json files; the first "
                                            "is the baseline of the deltas")
    ap.add_argument("--names", default=None, help="comma-separated row names (default: the runs' names)")
    ap.add_argument("--png", default="compare.png", help="bar chart to write ('' = none)")
    return ap


def _compare(argv: list[str]) -> int:
    args = compare_parser().parse_args(argv)
    runs = [load_results(r) for r in args.runs]
    if args.names:
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != len(runs):
            raise EvalInputError(f"--names gives {len(names)} names for {len(runs)} runs")
        for r, n in zip(runs, names, strict=True):
            r["run"] = n
    print(compare_table(runs), end="")
    if args.png:
        print(f"wrote {compare_chart(runs, args.png)}")
    return 0


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    args = build_parser().parse_args(argv)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    if args.dry_run:
        est = estimate(args.predictions, tasks, args.few_shots)
        for task, v in [*est["tasks"].items(), ("total", est["total"])]:
            print(f"{task:18s} items {v['items']:5d}  calls {v['calls']:5d}  "
                  f"prompt tokens ~{v['prompt_tokens']:9d}  completion tokens ~{v['completion_tokens']:7d}")
        return 0
    out = args.out or args.predictions
    if storage.is_gcs(out):
        raise EvalInputError("--out must be a local directory (judged.jsonl is appended and fsynced); pass "
                             "--out when --predictions is gs://")
    cfg = None
    if not args.rule_only:
        if not args.base_url or not args.model:
            raise EvalInputError("--base-url and --model are required (or use --rule-only / --dry-run)")
        cfg = JudgeConfig(base_url=args.base_url, model=args.model, api_key_file=args.api_key_file,
                          temperature=args.temperature, retry_temperature=args.retry_temperature,
                          max_tokens=args.max_tokens, concurrency=args.concurrency, rpm=args.rpm,
                          tpm=args.tpm,
                          timeout_s=args.timeout, max_attempts=args.max_attempts,
                          retry_budget_s=args.retry_budget, backoff_s=args.backoff,
                          parse_retries=args.parse_retries, structured=args.structured, seed=args.seed)
    opts = EvalOptions(few_shots=args.few_shots, tasks=tasks, retry_failed=args.retry_failed,
                       rule_only=args.rule_only, max_items=args.max_items, limit=args.limit,
                       progress=not args.no_progress, run_name=args.run_name)
    res = run_sync(judge_predictions(args.predictions, out, cfg, opts))
    judged = res.get("judged")
    if judged:
        cats = judged["categories"]
        line = ", ".join(f"{c} {cats[c]['score']:.1f}" for c in cats)
        failed = {t: v["failed"] for t, v in judged["tasks"].items() if v["failed"]}
        avg = "–" if judged["average"] is None else f"{judged['average']:.1f}"
        u = res["usage"]
        print(f"judge.eval: {line}; Avg {avg}; failed items {failed or 0}; "
              f"pending {res['pending']['count']}; "
              f"calls {u['calls']} (+{u['cache_hits']} from cache)")
    print(f"judge.eval: wrote {os.path.join(out, 'results.md')} and results.json")
    # exit 1 = the judge could not be reached for some items (they stay pending for the next run)
    return 1 if judged and res["pending"]["transport_failures"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except (LrJaxError, JudgeInputError, JudgeFatalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

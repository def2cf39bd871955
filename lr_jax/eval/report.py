"""Scores -> tables: per task, per category and the paper's average; ``results.json`` / ``results.md``;
the side-by-side comparison of runs (text, PNG bar chart, pandas).

An item result is ``{"task", "id", "status": "scored" | "failed", "score": float in [0, 1] | None,
"error": str | None}``. A task scores 100 x the mean over its *scored* items; failed items are counted and
listed by id, never averaged in (no 0.5, no 0, no NaN). A category is the mean of its tasks' scores (as the
LongReward eval computes it); the paper's "Avg" is the mean of LongBench-Chat, S-Doc, M-Doc and Summ and is
reported only when all four are there.

Pure Python; pandas and matplotlib are imported only by the functions that need them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from lr_jax.eval.benchmarks import AVERAGE_OF, CATEGORIES, LONGBENCH_CHAT, EvalInputError, category_of
from lr_jax.io import storage

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_SCHEMA_VERSION = 1
MAX_LISTED_IDS = 50  # failed ids listed per task in results.md (results.json has them all)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def aggregate(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Item results -> ``{"tasks": {task: {...}}, "categories": {...}, "average": float | None}``."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it)
    tasks: dict[str, Any] = {}
    for task, rows in by_task.items():
        ok = [float(r["score"]) for r in rows if r["status"] == "scored"]
        failed = sorted(str(r["id"]) for r in rows if r["status"] != "scored")
        mean = _mean(ok)
        tasks[task] = {
            "score": None if mean is None else 100 * mean,
            "category": category_of(task),
            "items": len(rows),
            "scored": len(ok),
            "failed": len(failed),
            "failed_ids": failed,
        }
    categories: dict[str, Any] = {}
    for cat, members in (("LongBench-Chat", (LONGBENCH_CHAT,)), *CATEGORIES.items()):
        present = [t for t in members if t in tasks and tasks[t]["score"] is not None]
        if not present:
            continue
        categories[cat] = {
            "score": sum(tasks[t]["score"] for t in present) / len(present),
            "tasks": present,
            "missing_tasks": [t for t in members if t not in present],
            "scored": sum(tasks[t]["scored"] for t in present),
            "failed": sum(tasks[t]["failed"] for t in members if t in tasks),
        }
    complete = all(c in categories for c in AVERAGE_OF)
    average = sum(categories[c]["score"] for c in AVERAGE_OF) / len(AVERAGE_OF) if complete else None
    return {"tasks": tasks, "categories": categories, "average": average}


def _fmt(v: float | None, digits: int = 1) -> str:
    """Half-up rounding of the value as printed to 6 decimals, as a paper table rounds (59.85 -> 59.9; plain
    float formatting would print 59.8 for the binary 59.849999...)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    q = Decimal(f"{v:.6f}").quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: the paper-shaped summary line, then per-task tables (judged, rule-based)."""
    lines = [f"# Evaluation: {results.get('run', '')}", ""]
    judged = results.get("judged")
    if judged:
        j = results.get("judge", {})
        lines += ["## LLM-judged (the LongReward paper's table)", "",
                  f"Judge `{j.get('model', '?')}`, prompts `{j.get('prompt_version', '?')}`.", ""]
        cats = judged["categories"]
        header = [*AVERAGE_OF, "Avg"]
        row = [_fmt(cats.get(c, {}).get("score")) + ("*" if cats.get(c, {}).get("missing_tasks") else "")
               for c in AVERAGE_OF]
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header),
                  "| " + " | ".join([*row, _fmt(judged["average"])]) + " |", ""]
        if any(cats.get(c, {}).get("missing_tasks") for c in AVERAGE_OF):
            lines += ["\\* category computed over the tasks present (missing: "
                      + ", ".join(f"{c}: {', '.join(cats[c]['missing_tasks'])}" for c in AVERAGE_OF
                                  if cats.get(c, {}).get("missing_tasks")) + ").", ""]
        lines += _task_table(judged["tasks"], "judged score")
    rule = results.get("rule")
    if rule and rule.get("tasks"):
        lines += ["## Rule-based LongBench metrics (the benchmark's own scorer)", ""]
        lines += _task_table(rule["tasks"], "score", digits=2)
    usage = results.get("usage")
    if usage:
        lines += [f"Judge usage this run: {usage.get('calls', 0)} calls paid, {usage.get('cache_hits', 0)} "
                  f"from cache, {usage.get('prompt_tokens', 0)} prompt + "
                  f"{usage.get('completion_tokens', 0)} completion tokens.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _task_table(tasks: dict[str, Any], label: str, digits: int = 1) -> list[str]:
    lines = [f"| task | category | {label} | scored | failed | failed ids |", "|---|---|---:|---:|---:|---|"]
    for task, t in tasks.items():
        ids = t.get("failed_ids", [])
        shown = ", ".join(ids[:MAX_LISTED_IDS]) + (f", … (+{len(ids) - MAX_LISTED_IDS})"
                                                   if len(ids) > MAX_LISTED_IDS else "")
        lines.append(f"| {task} | {t.get('category') or ''} | {_fmt(t['score'], digits)} | {t['scored']} | "
                     f"{t['failed']} | {shown} |")
        for bucket, v in (t.get("e_buckets") or {}).items():
            lines.append(f"| {task} ({bucket}) | | {_fmt(v, digits)} | | | |")
    return [*lines, ""]


def write_results(out_dir: str, results: dict[str, Any]) -> tuple[str, str]:
    """Write ``results.json`` and ``results.md`` into `out_dir` (local or gs://); returns their paths."""
    results = {"schema_version": RESULTS_SCHEMA_VERSION, **results}
    pj, pm = storage.join(out_dir, RESULTS_JSON), storage.join(out_dir, RESULTS_MD)
    storage.write_text(pj, json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    storage.write_text(pm, results_markdown(results))
    return pj, pm


def load_results(run: str) -> dict[str, Any]:
    """A run's ``results.json`` (`run` is the run directory or the file itself; local or gs://)."""
    path = run if run.endswith(".json") else storage.join(run, RESULTS_JSON)
    try:
        data = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise EvalInputError(f"{path}: file not found (run `python -m judge.eval` first)") from None
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or ("judged" not in data and "rule" not in data):
        raise EvalInputError(f"{path}: not a results.json (no 'judged' or 'rule' section)")
    data.setdefault("run", run.rstrip("/").rsplit("/", 1)[-1])
    return data


# --------------------------------------------------------------------------------------------- compare


COMPARE_COLUMNS: tuple[str, ...] = (*AVERAGE_OF, "Avg")


def _row(results: dict[str, Any]) -> dict[str, float | None]:
    judged = results.get("judged") or {"categories": {}, "average": None}
    row = {c: judged["categories"].get(c, {}).get("score") for c in AVERAGE_OF}
    row["Avg"] = judged.get("average")
    return row


def compare_rows(runs: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, float | None]]]:
    """(name, {column: score}) per run, in order: the paper's LongBench-Chat / S-Doc / M-Doc / Summ / Avg."""
    return [(str(r.get("run")), _row(r)) for r in runs]


def compare_table(runs: Sequence[dict[str, Any]]) -> str:
    """The paper-shaped table (one row per run) plus one delta row per later run against the first."""
    rows = compare_rows(runs)
    labels = [n for n, _ in rows] + [f"Δ {n} vs {rows[0][0]}" for n, _ in rows[1:]]
    width = max(12, *(len(n) for n in labels)) + 2
    head = "model".ljust(width) + "".join(c.rjust(16) for c in COMPARE_COLUMNS)
    out = [head, "-" * len(head)]
    for name, row in rows:
        out.append(name.ljust(width) + "".join(_fmt(row[c]).rjust(16) for c in COMPARE_COLUMNS))
    base_name, base = rows[0]
    for name, row in rows[1:]:
        cells = []
        for c in COMPARE_COLUMNS:
            a, b = base[c], row[c]
            cells.append(("–" if a is None or b is None else ("+" if b >= a else "") + _fmt(b - a)).rjust(16))
        out.append(f"Δ {name} vs {base_name}".ljust(width) + "".join(cells))
    return "\n".join(out) + "\n"


def compare_frame(runs: Sequence[dict[str, Any] | str]) -> Any:
    """pandas DataFrame: one row per run (index = run name), the paper's columns; runs may be paths."""
    import pandas as pd

    loaded = [load_results(r) if isinstance(r, str) else r for r in runs]
    rows = compare_rows(loaded)
    return pd.DataFrame([{c: (math.nan if v is None else v) for c, v in row.items()} for _, row in rows],
                        index=[n for n, _ in rows], columns=list(COMPARE_COLUMNS))


def task_frame(run: dict[str, Any] | str, section: str = "judged") -> Any:
    """pandas DataFrame of one run's per-task numbers (`section` ``judged`` or ``rule``)."""
    import pandas as pd

    res = load_results(run) if isinstance(run, str) else run
    tasks = (res.get(section) or {}).get("tasks", {})
    cols = ["category", "score", "items", "scored", "failed"]
    return pd.DataFrame([{c: t.get(c) for c in cols} for t in tasks.values()], index=list(tasks),
                        columns=cols)


def compare_chart(runs: Sequence[dict[str, Any]], path: str) -> str:
    """A grouped bar chart of the paper's columns per run, written as PNG to `path` (local)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = compare_rows(runs)
    fig = Figure(figsize=(1.6 * len(COMPARE_COLUMNS) + 2, 4))
    ax = fig.add_subplot()
    n = len(rows)
    w = 0.8 / max(1, n)
    for i, (name, row) in enumerate(rows):
        xs = [j + (i - (n - 1) / 2) * w for j in range(len(COMPARE_COLUMNS))]
        ys = [row[c] if row[c] is not None else 0.0 for c in COMPARE_COLUMNS]
        bars = ax.bar(xs, ys, width=w, label=name)
        for b, c in zip(bars, COMPARE_COLUMNS, strict=True):
            ax.annotate(_fmt(row[c]), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(COMPARE_COLUMNS)), list(COMPARE_COLUMNS))
    ax.set_ylabel("judged score (0-100)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path

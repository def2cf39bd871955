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
import os
import sys
from typing import Any

from judge.client import JudgeConfig, JudgeFatalError, check_base_url, run_sync
from judge.eval.judging import EvalOptions, estimate, judge_predictions
from judge.outdir import check_output_dir
from judge.schema import JudgeInputError
from lr_jax.errors import LrJaxError
from lr_jax.eval.benchmarks import EvalInputError
from lr_jax.eval.report import compare_chart, compare_table, load_results
from lr_jax.io import storage
from lr_jax.options import OneLineParser, add_flags, from_args, int_at_least

PROG = "python -m judge.eval"
# judge.eval's answers are one rating and a sentence: a smaller budget than judge.score's
EVAL_MAX_TOKENS = 512


def _url(text: str) -> str:
    """argparse type of --base-url: refused at parse time unless an http(s) URL with a host."""
    try:
        return check_base_url(text)
    except JudgeInputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--base-url ")) from None


def build_parser() -> argparse.ArgumentParser:
    """The flags: what to judge (`EvalOptions`) and the judge (`JudgeConfig`; base URL and model are only
    needed when judging)."""
    ap = OneLineParser(prog=PROG, description=__doc__.split("\n")[0],
                       epilog="Side by side: python -m judge.eval compare RUN_A RUN_B ... (see its --help).")
    ap.add_argument("--predictions", required=True, help="dir of <task>.jsonl from lr_jax.eval predict")
    ap.add_argument("--out", default=None, help="local output dir (default: the predictions dir)")
    ap.add_argument("--base-url", type=_url, default=None,
                    help="OpenAI-compatible endpoint (required unless --rule-only / --dry-run)")
    ap.add_argument("--model", default=None, help="judge model name")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: every file present)")
    ap.add_argument("--dry-run", action="store_true", help="print the judge calls and tokens, call nothing")
    ap.add_argument("--no-progress", action="store_true")
    add_flags(ap, EvalOptions)
    judge = ap.add_argument_group("judge")
    judge.add_argument("--max-tokens", type=int_at_least(1), default=EVAL_MAX_TOKENS,
                       help=f"completion tokens per rating (default {EVAL_MAX_TOKENS})")
    add_flags(judge, JudgeConfig, skip=("base_url", "model", "max_tokens", "prompt_layout"))
    return ap


def compare_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog=f"{PROG} compare",
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


def _report(res: dict[str, Any], out: str) -> int:
    judged = res.get("judged")
    if judged:
        cats = judged["categories"]
        line = ", ".join(f"{c} {cats[c]['score']:.1f}" for c in cats) or "no task scored yet"
        failed = {t: v["failed"] for t, v in judged["tasks"].items() if v["failed"]}
        avg = "–" if judged["average"] is None else f"{judged['average']:.1f}"
        u = res["usage"]
        print(f"judge.eval: {line}; Avg {avg}; failed items {failed or 0}; "
              f"pending {res['pending']['count']}; "
              f"calls {u['calls']} (+{u['cache_hits']} from cache)")
    print(f"judge.eval: wrote {os.path.join(out, 'results.md')} and results.json")
    pending = res.get("pending") or {}
    if judged is not None and pending.get("transport_failures"):
        # exit 1 = the judge could not be reached for some items (they stay pending for the next run)
        first = pending["errors"][0].split(": ", 1)[-1] if pending["errors"] else "unknown"
        host = res["judge"]["base_url_host"]
        print(f"judge.eval: error: no answer from the judge server at {host} for "
              f"{pending['transport_failures']} item(s) (left pending, nothing written for them): {first}; "
              "check --base-url and that the server is up, then re-run", file=sys.stderr)
        return 1
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
    check_output_dir(out, "--out" if args.out else "--predictions (the output dir)")
    cfg = None
    if not args.rule_only:
        if not args.base_url or not args.model:
            raise EvalInputError("--base-url and --model are required (or use --rule-only / --dry-run)")
        cfg = from_args(JudgeConfig, args)
    opts = from_args(EvalOptions, args, tasks=tasks, progress=not args.no_progress)
    return _report(run_sync(judge_predictions(args.predictions, out, cfg, opts)), out)


def main(argv: list[str] | None = None) -> int:
    """``python -m judge.eval``: 0 done, 1 some items pending (judge unreachable: re-run), 2 bad input."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except (LrJaxError, JudgeInputError, JudgeFatalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

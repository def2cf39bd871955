"""What judging costs: tokens and dollars per executor and prompt layout, on the shared LongReward example.

    python bench/judge_cost.py [--price-as gpt-4o-2024-08-06] [--prompts P --samples S]

Runs ``python -m judge.score`` against the scripted fake server (a fresh server, so a fresh prompt cache,
for each row) and prints a markdown table from each run's ``summary.json``: calls, prompt tokens, of them
prompt-cached, completion tokens, ``cost_usd`` and ``saved_usd``, priced as ``--price-as`` from
``judge/prices.json`` (the prices are printed with the table). Rows:

- ``--dry-run`` estimate (static-first, online);
- online, interleaved layout (the zero-shot layout before issue 14);
- online, static-first layout (few-shot examples, static part first);
- openai-batch, static-first;
- a re-run of the last one into a new ``--out`` on the same cache (everything from the response cache).

The fake server caches prompt prefixes in 128-character steps; ``--prefix-cache-min`` sets the shortest
cached prefix in characters: the default 1,024 is like vLLM/SGLang block caching, ~5,000 characters is about
OpenAI's 1,024-token minimum for this text.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judge.fake_server import FakeJudgeServer  # noqa: E402
from judge.prices import load_table  # noqa: E402

EXAMPLE = ROOT.parent / "shared" / "data" / "longreward_example"


def judge_score(prompts: Path, samples: Path, out: Path, url: str, *extra: str) -> dict:
    """One ``judge.score`` run; its summary (or the dry-run estimate)."""
    cmd = [
        sys.executable,
        "-m",
        "judge.score",
        "--prompts",
        str(prompts),
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--base-url",
        url,
        "--model",
        "fake-judge",
        "--no-progress",
        *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"judge.score failed ({r.returncode}): {r.stderr[-2000:]}")
    if "--dry-run" in extra:
        return json.loads(r.stdout)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=Path, default=EXAMPLE / "prompts.jsonl")
    ap.add_argument("--samples", type=Path, default=EXAMPLE / "samples.jsonl")
    ap.add_argument("--price-as", default="gpt-4o-2024-08-06")
    ap.add_argument("--prefix-cache-min", type=int, default=1024, help="characters (fake server)")
    args = ap.parse_args()
    price = load_table()[args.price_as]
    pricing = ("--price-as", args.price_as)
    poll = ("--batch-poll", "0.05", "--batch-poll-max", "0.2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        est = judge_score(
            args.prompts, args.samples, t / "dry", "http://127.0.0.1:9/v1", "--dry-run", *pricing
        )
        rows.append(("dry-run estimate (static-first, online)", est, None))
        runs = [
            ("online, interleaved (zero-shot, before issue 14)", ("--prompt-layout", "interleaved")),
            ("online, static-first (few-shot)", ()),
            ("openai-batch, static-first (few-shot)", ("--executor", "openai-batch", *poll)),
        ]
        for i, (name, extra) in enumerate(runs):
            with FakeJudgeServer(prefix_cache_min=args.prefix_cache_min) as srv:
                s = judge_score(args.prompts, args.samples, t / f"r{i}", srv.url, *pricing, *extra)
                rows.append((name, s, s["saved_usd"]))
                if i == len(runs) - 1:  # same server (the endpoint is part of the cache key), same cache
                    cache = str(t / f"r{i}" / "judge_cache.sqlite")
                    s = judge_score(
                        args.prompts, args.samples, t / "again", srv.url, *pricing, "--cache", cache
                    )
                    rows.append(("re-run (online) on the batch run's cache", s, s["saved_usd"]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    print(
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} CPUs); commit {commit.stdout.strip()}; "
        f"data {args.samples.name} ({args.prompts.parent.name}); fake server prefix cache from "
        f"{args.prefix_cache_min} characters"
    )
    print(
        f"priced as {args.price_as} (judge/prices.json, as of {price.as_of}): input ${price.input}/1M, "
        f"cached input ${price.cached_input}/1M, output ${price.output}/1M, batch x{price.batch_discount}\n"
    )
    print(
        "| run | calls | prompt tokens | of them cached | completion tokens | cost_usd "
        "| saved: response cache | saved: prompt cache | saved: batch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s, saved in rows:
        cached = s.get("cached_tokens", "—")
        sv = saved or {}

        def usd(v: float | None) -> str:
            return "—" if v is None else f"${v:.4f}"

        print(
            f"| {name} | {s['calls']} | {s['prompt_tokens']} | {cached} | {s['completion_tokens']} | "
            f"{usd(s['cost_usd'])} | {usd(sv.get('response_cache'))} | {usd(sv.get('prompt_cache'))} | "
            f"{usd(sv.get('batch'))} |"
        )


if __name__ == "__main__":
    main()

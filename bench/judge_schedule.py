"""Does the online scheduler keep prefix-sharing calls together? Prompt-cached share per cache size.

    python bench/judge_schedule.py [--repo DIR] [--blocks 0,4000,2000,1000] [--prompts N]

The shared LongReward example has one prompt, so the order in which prompts are judged cannot matter there.
This bench derives ``--prompts`` (4) prompts from it (the document's quarters, each a prompt of its own with
the same query, numbered) and gives each all ten responses, written **sample-major** (every prompt's first
response, then every second, …) as a sampler that loops over samples outside prompts would. It runs
``python -m judge.score`` (online, default options) from ``--repo`` (default: this checkout; pass an older
checkout to measure the scheduler before a change) against the scripted fake server with a prompt cache of
``--blocks`` 128-character blocks (least recently used evicted; 0 = unlimited), a fresh server per run, and
prints the prompt tokens, the prompt-cached ones and their share from each run's ``summary.json``.
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

EXAMPLE = ROOT.parent / "shared" / "data" / "longreward_example"


def derive(d: Path, n_prompts: int) -> tuple[Path, Path]:
    """``n_prompts`` prompts (quarters of the example's document, cut at paragraph ends) x its 10 responses,
    sample-major."""
    prompt = json.loads((EXAMPLE / "prompts.jsonl").read_text().splitlines()[0])
    samples = [json.loads(x) for x in (EXAMPLE / "samples.jsonl").read_text().splitlines()]
    paras = prompt["context"].split("\n")
    per = -(-len(prompt["context"]) // n_prompts)
    parts, cur = [], []
    for para in paras:
        cur.append(para)
        if sum(len(x) + 1 for x in cur) >= per:
            parts.append("\n".join(cur))
            cur = []
    if cur:
        parts.append("\n".join(cur))
    prompts_path, samples_path = d / "prompts.jsonl", d / "samples.jsonl"
    queries = [f"{prompt['query']} (part {p + 1})" for p in range(len(parts))]
    with open(prompts_path, "w") as f:
        for p, ctx in enumerate(parts):
            f.write(json.dumps({"id": f"q{p}", "context": ctx, "query": queries[p]}) + "\n")
    with open(samples_path, "w") as f:
        for k, smp in enumerate(samples):
            for p in range(len(parts)):
                row = {**smp, "id": f"q{p}-{k}", "prompt_id": f"q{p}", "query": queries[p]}
                f.write(json.dumps(row) + "\n")
    return prompts_path, samples_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose judge.score runs")
    ap.add_argument("--blocks", default="0,4000,2000,1000", help="prompt-cache sizes, 128-character blocks")
    ap.add_argument("--prompts", type=int, default=4)
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=args.repo
    ).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(args.repo.resolve())}
    print(
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} CPUs); judge.score from {args.repo} "
        f"(commit {commit or '?'})"
    )
    print("\n| cache blocks | calls | prompt tokens | cached | cached share |\n|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        p, s = derive(t, args.prompts)
        for blocks in (int(b) for b in args.blocks.split(",")):
            out = t / f"b{blocks}"
            with FakeJudgeServer(prefix_cache_blocks=blocks) as srv:
                cmd = [sys.executable, "-m", "judge.score", "--prompts", str(p), "--samples", str(s)]
                cmd += ["--out", str(out), "--base-url", srv.url, "--model", "fake-judge", "--no-progress"]
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=args.repo, env=env, timeout=1800)
                if r.returncode != 0:
                    raise SystemExit(f"judge.score failed ({r.returncode}): {r.stderr[-2000:]}")
            sm = json.loads((out / "summary.json").read_text())
            share = sm["cached_tokens"] / max(1, sm["prompt_tokens"])
            label = blocks or "unlimited"
            tokens = f"{sm['prompt_tokens']} | {sm['cached_tokens']}"
            print(f"| {label} | {sm['calls']} | {tokens} | {share:.1%} |")


if __name__ == "__main__":
    main()

"""Judge throughput against the local fake server with injected latency and an RPM or TPM limit.

    python bench/judge_throughput.py [--latency 2.0] [--rpm 120] [--tpm 60000] [--responses 12]

For each setting it scores a synthetic set (prompts of ~1.5k tokens, 4 responses each) from scratch with
`judge.score`'s `Scorer` and prints a markdown table: judge calls and tokens per scored response, wall time,
and achieved throughput as a fraction of the configured limit (calls/min ÷ RPM, tokens/min ÷ TPM) or, with no
limit, of the concurrency bound (concurrency ÷ latency).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from judge.cache import ResponseCache
from judge.client import JudgeClient, JudgeConfig
from judge.fake_server import FakeJudgeServer
from judge.score.scorer import ScoreOptions, Scorer

WORDS = [
    "river",
    "bridge",
    "market",
    "school",
    "railway",
    "library",
    "council",
    "harbour",
    "mill",
    "wool",
    "flood",
    "census",
    "tax",
    "charter",
    "bishop",
    "merchant",
    "guild",
    "festival",
    "brewery",
    "canal",
    "tower",
    "museum",
    "garden",
    "orchard",
    "quarry",
    "ferry",
]


def make_data(n_prompts: int, per_prompt: int, seed: int = 0) -> tuple[dict, list]:
    rng = random.Random(seed)
    prompts, samples = {}, []
    for p in range(n_prompts):
        sents = [
            f"In {1700 + rng.randrange(300)} the {rng.choice(WORDS)} of the town gained a new "
            f"{rng.choice(WORDS)} near the {rng.choice(WORDS)}."
            for _ in range(120)
        ]
        pid = f"b{p}"
        prompts[pid] = {"id": pid, "context": " ".join(sents), "query": f"What happened to the {WORDS[p]}?"}
        for k in range(per_prompt):
            resp = " ".join(rng.sample(sents, 3 + k)) + " I hope this helps."
            samples.append(
                {
                    "id": f"{pid}-{k}",
                    "prompt_id": pid,
                    "query": prompts[pid]["query"],
                    "response": resp,
                    "sampler": {},
                }
            )
    return prompts, samples


async def one_setting(url: str, prompts: dict, samples: list, cache_dir: str, **limits: float) -> dict:
    cfg = JudgeConfig(
        base_url=url, model="bench-judge", concurrency=int(limits.pop("concurrency", 32)), **limits
    )
    client = JudgeClient(cfg, ResponseCache(Path(cache_dir) / "cache.sqlite"))
    t0 = time.monotonic()
    rows, _ = await Scorer(client, ScoreOptions()).score_many(prompts, samples, max_items=64)
    dt = time.monotonic() - t0
    await client.close()
    paid = client.stats.total_paid()
    return {
        "rows": len(rows),
        "calls": paid.calls,
        "tokens": paid.prompt_tokens + paid.completion_tokens,
        "seconds": dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=2.0, help="injected seconds per judge call")
    ap.add_argument("--rpm", type=float, default=180.0)
    ap.add_argument("--tpm", type=float, default=90_000.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--per-prompt", type=int, default=4)
    args = ap.parse_args()
    prompts, samples = make_data(args.prompts, args.per_prompt)
    settings = [
        ("RPM limit", {"rpm": args.rpm, "concurrency": 64}, "rpm"),
        ("TPM limit", {"tpm": args.tpm, "concurrency": 64}, "tpm"),
        ("concurrency only", {"concurrency": args.concurrency}, "conc"),
    ]
    n = len(samples)
    print(f"latency {args.latency} s/call, {n} responses ({args.prompts} prompts), fresh cache each\n")
    print("| setting | limit | responses | calls/resp | tokens/resp | wall s | achieved | of limit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with FakeJudgeServer(latency_s=args.latency) as srv:
        for name, lim, kind in settings:
            with tempfile.TemporaryDirectory() as d:
                r = asyncio.run(one_setting(srv.url, prompts, samples, d, **dict(lim)))
            per_min_calls, per_min_tok = r["calls"] / r["seconds"] * 60, r["tokens"] / r["seconds"] * 60
            if kind == "rpm":
                limit, achieved = f"{args.rpm:g} req/min", f"{per_min_calls:.0f} req/min"
                frac = per_min_calls / args.rpm
            elif kind == "tpm":
                limit, achieved = f"{args.tpm:g} tok/min", f"{per_min_tok:.0f} tok/min"
                frac = per_min_tok / args.tpm
            else:
                bound = args.concurrency / args.latency
                limit = f"{args.concurrency} in flight"
                achieved = f"{r['calls'] / r['seconds']:.2f} req/s"
                frac = r["calls"] / r["seconds"] / bound
            per = f"{r['calls'] / r['rows']:.1f} | {r['tokens'] / r['rows']:.0f}"
            print(
                f"| {name} | {limit} | {r['rows']} | {per} | {r['seconds']:.1f} | {achieved} | {frac:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

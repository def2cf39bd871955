"""Held-out result of the real-model loop (configs/smollm2_longreward.py) over one or more seeds.

    python bench/real_loop.py runs/smollm2_longreward/seed0 [runs/smollm2_longreward/seed1 ...]

For each run dir: the judged reward (eval/{before,after}/metrics.json, the loop's own numbers) and the task's
exact-answer accuracy (`lr_jax.data.prose_qa.is_correct` on eval/{before,after}/samples.jsonl against the
held-out prompts' references), before vs after DPO, per question type, with the number of prompts and pairs.
Then the per-seed deltas and a 95 % bootstrap interval of the mean delta: over seeds when there are >= 3,
else a paired bootstrap over the held-out prompts of the pooled seeds (said in the output).
Prints a Markdown table; `--json FILE` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from lr_jax.data import prose_qa
from lr_jax.io import jsonl


def _rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in jsonl.read_jsonl(str(path))]


def _per_prompt(run: Path, tag: str, prompts: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """prompt id -> (judged reward, correct 0/1) of the held-out answers of policy `tag`."""
    d = run / "eval" / tag
    path = d / "score" / "scored.jsonl"  # absent while the eval is unfinished: reward is then NaN
    scored = {r["id"]: r for r in _rows(path)} if path.exists() else {}  # last line per id wins
    out: dict[str, tuple[float, float]] = {}
    for s in _rows(d / "samples.jsonl"):
        p = prompts[s["prompt_id"]]
        reward = (scored.get(s["id"], {}).get("scores") or {}).get("reward")
        out[s["prompt_id"]] = (float("nan") if reward is None else float(reward),
                               float(prose_qa.is_correct(s["response"], p)))
    return out


def _bootstrap(xs: list[float], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(xs) for _ in xs) / len(xs) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def summarize(runs: list[Path]) -> dict[str, Any]:
    seeds = []
    pooled: dict[str, list[float]] = {"reward": [], "accuracy": []}
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        prompts = {r["id"]: r for r in _rows(Path(cfg["eval_prompts"]))}
        before, after = _per_prompt(run, "before", prompts), _per_prompt(run, "after", prompts)
        ids = sorted(set(before) & set(after))
        pairs = json.loads((run / "pairs" / "metadata.json").read_text())["counts"]["pairs"]
        row: dict[str, Any] = {"run": str(run), "prompts": len(ids), "pairs": pairs}
        for k, name in ((0, "reward"), (1, "accuracy")):
            keep = [i for i in ids if before[i][k] == before[i][k] and after[i][k] == after[i][k]]  # no NaN
            b = [before[i][k] for i in keep]
            a = [after[i][k] for i in keep]
            nan = float("nan")
            row[f"{name}_before"] = sum(b) / len(b) if b else nan
            row[f"{name}_after"] = sum(a) / len(a) if a else nan
            row[f"{name}_delta"] = row[f"{name}_after"] - row[f"{name}_before"]
            pooled[name] += [y - x for x, y in zip(b, a, strict=True)]
        for t in prose_qa.QUESTION_TYPES:
            tids = [i for i in ids if prompts[i]["type"] == t]
            row[f"accuracy_{t}"] = (sum(before[i][1] for i in tids) / len(tids),
                                    sum(after[i][1] for i in tids) / len(tids))
        seeds.append(row)
    out: dict[str, Any] = {"seeds": seeds}
    for name in ("reward", "accuracy"):
        deltas = [s[f"{name}_delta"] for s in seeds]
        if not pooled[name]:
            out[f"{name}_ci"], out["ci_over"] = (float("nan"), float("nan")), "nothing (not judged yet)"
        elif len(seeds) >= 3:
            out[f"{name}_ci"], out["ci_over"] = _bootstrap(deltas), "seeds"
        else:
            out[f"{name}_ci"], out["ci_over"] = _bootstrap(pooled[name]), "held-out prompts (paired)"
        out[f"{name}_mean_delta"] = sum(deltas) / len(deltas)
    return out


def markdown(s: dict[str, Any]) -> str:
    lines = ["| run | prompts | pairs | reward before | after | Δ | accuracy before | after | Δ | "
             "single | combined | not stated |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["seeds"]:
        types = " | ".join(f"{r[f'accuracy_{t}'][0]:.2f} → {r[f'accuracy_{t}'][1]:.2f}"
                           for t in prose_qa.QUESTION_TYPES)
        lines.append(f"| {r['run']} | {r['prompts']} | {r['pairs']} | {r['reward_before']:.2f} | "
                     f"{r['reward_after']:.2f} | {r['reward_delta']:+.2f} | {r['accuracy_before']:.3f} | "
                     f"{r['accuracy_after']:.3f} | {r['accuracy_delta']:+.3f} | {types} |")
    for name in ("reward", "accuracy"):
        lo, hi = s[f"{name}_ci"]
        lines.append(f"\nmean Δ {name}: {s[f'{name}_mean_delta']:+.3f}, bootstrap 95 % interval "
                     f"[{lo:+.3f}, {hi:+.3f}] over {s['ci_over']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    s = summarize(args.runs)
    print(markdown(s))
    if args.json:
        args.json.write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

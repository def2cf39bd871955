"""Held-out result of the real-model loop (configs/smollm2_longreward.py) over one or more seeds.

    python bench/real_loop.py runs/smollm2_longreward/seed0 [runs/smollm2_longreward/seed1 ...]

For each run dir: the judged reward and the task's exact-answer accuracy (`lr_jax.data.prose_qa.is_correct`)
of the held-out greedy answers before vs after DPO (eval/after and eval/before, or the run's
`eval.baseline_dir` when its runs share the starting policy's answers), per question type, with the number of
prompts and pairs. Then the per-seed deltas, the mean delta and two 95 % bootstrap intervals of it: over
the seeds (resampling seeds, when there are >= 3) and over (seed, held-out prompt) pairs (resampling
prompts within each seed: how much the 64-prompt eval itself can move the number).
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


def _per_prompt(samples: Path, scored_file: Path,
                prompts: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """prompt id -> (judged reward, correct 0/1) of the held-out answers in `samples` (judged in
    `scored_file`)."""
    path = scored_file  # absent while the eval is unfinished: reward is then NaN
    scored = {r["id"]: r for r in _rows(path)} if path.exists() else {}  # last line per id wins
    out: dict[str, tuple[float, float]] = {}
    for s in _rows(samples):
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
    per_seed: dict[str, list[list[float]]] = {"reward": [], "accuracy": []}  # paired deltas per prompt
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        prompts = {r["id"]: r for r in _rows(Path(cfg["eval_prompts"]))}
        ev = run / "eval"
        shared = cfg["eval"].get("baseline_dir")
        before_samples = Path(shared) / "samples.jsonl" if shared else ev / "before" / "samples.jsonl"
        before = _per_prompt(before_samples, ev / "before" / "score" / "scored.jsonl", prompts)
        after = _per_prompt(ev / "after" / "samples.jsonl", ev / "after" / "score" / "scored.jsonl", prompts)
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
            per_seed[name].append([y - x for x, y in zip(b, a, strict=True)])
        for t in prose_qa.QUESTION_TYPES:
            tids = [i for i in ids if prompts[i]["type"] == t]
            row[f"accuracy_{t}"] = (sum(before[i][1] for i in tids) / max(1, len(tids)),
                                    sum(after[i][1] for i in tids) / max(1, len(tids)))
        seeds.append(row)
    out: dict[str, Any] = {"seeds": seeds}
    nan = (float("nan"), float("nan"))
    for name in ("reward", "accuracy"):
        deltas = [s[f"{name}_delta"] for s in seeds]
        out[f"{name}_mean_delta"] = sum(deltas) / len(deltas)
        out[f"{name}_ci_seeds"] = _bootstrap(deltas) if len(seeds) >= 3 else nan
        out[f"{name}_ci_prompts"] = _bootstrap_nested(per_seed[name]) if all(per_seed[name]) else nan
    return out


def _bootstrap_nested(per_seed: list[list[float]], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean over seeds of each seed's mean paired delta, resampling the prompts of
    each seed (the seeds are fixed: this is the eval's own sampling error)."""
    rng = random.Random(seed)
    means = sorted(sum(sum(rng.choice(xs) for _ in xs) / len(xs) for xs in per_seed) / len(per_seed)
                   for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


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
        (lo, hi), (plo, phi) = s[f"{name}_ci_seeds"], s[f"{name}_ci_prompts"]
        lines.append(f"\nmean Δ {name} over {len(s['seeds'])} seed(s): {s[f'{name}_mean_delta']:+.3f}; "
                     f"bootstrap 95 % interval over seeds [{lo:+.3f}, {hi:+.3f}], over held-out prompts "
                     f"[{plo:+.3f}, {phi:+.3f}]")
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

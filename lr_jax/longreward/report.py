"""The loop's report: held-out metrics from the judged rows, `summary.json`, the table and the PNG."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from lr_jax.eval.reference import reference_score
from lr_jax.io.records import DIMENSIONS
from lr_jax.longreward.judging import LoopError


def last_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The last line per response id of a scored.jsonl (a resumed or --retry-failed run appends)."""
    from lr_jax.io import jsonl

    rows: dict[str, dict[str, Any]] = {}
    for _, row in jsonl.read_jsonl(str(path), error=LoopError):
        rows[row["id"]] = row
    return rows


def eval_metrics(scored: Path, prompts: dict[str, dict[str, Any]], metric: str = "exact") -> dict[str, Any]:
    """Mean judged reward (and per dimension) over the held-out responses, and answer accuracy: the share of
    responses right under `metric` (`lr_jax.eval.reference`: ``exact``, ``match`` or ``f1``, 0-10 / 10)
    against their prompt's ``answer``.

    A dimension that failed is left out of its mean (never a number); accuracy is over the prompts that
    have a reference answer, null when none has one.
    """
    rows = sorted(last_rows(scored).values(), key=lambda r: r["id"])

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    dims = {d: mean([r["scores"][d] for r in rows if r["scores"].get(d) is not None]) for d in DIMENSIONS}
    rewards = [r["scores"]["reward"] for r in rows if r["scores"].get("reward") is not None]
    scores = [reference_score(r["response"], prompts.get(r["prompt_id"], {}), metric) for r in rows]
    hits = [x / 10 for x in scores if x is not None]
    return {"reward": mean(rewards), "dimensions": dims, "accuracy": mean(hits), "answer_metric": metric,
            "prompts": len({r["prompt_id"] for r in rows}), "scored": len(rewards),
            "with_reference": len(hits)}


def render_table(summary: dict[str, Any]) -> str:
    """The held-out comparison as a Markdown table (judged reward 0–10, each dimension, accuracy)."""
    b, a = summary["eval"]["before"], summary["eval"]["after"]
    judge = summary["judge"]
    head = f"judge: {judge.get('label', judge['model'])}"
    counts = f"held-out prompts: {b['prompts']}; preference pairs trained on: {summary['pairs']}"
    dec = summary["eval"].get("decoding")
    if dec:
        how = "greedy" if not dec["temperature"] else \
            f"temperature {dec['temperature']:g} (the same sampler seeds for both policies)"
        counts += f"; held-out answers: {dec['num_samples']} per prompt, {how}"
    lines = [head, "", counts, "",
             "| policy | reward | " + " | ".join(DIMENSIONS) + " | exact-answer accuracy |",
             "|---|---:|" + "---:|" * len(DIMENSIONS) + "---:|"]

    def f(x: float | None, pct: bool = False) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %" if pct else f"{x:.2f}"

    for name, m in (("SFT (before DPO)", b), ("DPO (after)", a)):
        lines.append(f"| {name} | {f(m['reward'])} | " + " | ".join(f(m['dimensions'][d]) for d in DIMENSIONS)
                     + f" | {f(m['accuracy'], True)} |")
    delta = lambda x, y: None if x is None or y is None else y - x
    dr, da = delta(b["reward"], a["reward"]), delta(b["accuracy"], a["accuracy"])
    lines.append(f"| Δ | {'n/a' if dr is None else f'{dr:+.2f}'} | "
                 + " | ".join("n/a" if delta(b['dimensions'][d], a['dimensions'][d]) is None
                              else f"{a['dimensions'][d] - b['dimensions'][d]:+.2f}" for d in DIMENSIONS)
                 + f" | {'n/a' if da is None else f'{100 * da:+.1f} pt'} |")
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Bar chart: reward and each dimension (0–10) and accuracy (×10), SFT vs DPO; the judge in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, a = summary["eval"]["before"], summary["eval"]["after"]
    labels = ["reward", *DIMENSIONS, "accuracy ×10"]

    def vals(m: dict[str, Any]) -> list[float]:
        acc = m["accuracy"]
        return [m["reward"] or 0.0, *[m["dimensions"][d] or 0.0 for d in DIMENSIONS],
                10 * acc if acc is not None and not math.isnan(acc) else 0.0]

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], vals(b), 0.4, label="SFT (before DPO)")
    ax.bar([x + 0.2 for x in xs], vals(a), 0.4, label="DPO (after)")
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 10)
    judge = summary["judge"]
    ax.set_title(f"held-out: {b['prompts']} prompts, {summary['pairs']} pairs; judge: "
                 f"{judge.get('label', judge['model'])}", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(run_dir: Path, rounds: list[dict[str, Any]], first_eval: dict[str, Any]) -> dict[str, Any]:
    """`summary.json` / `summary.md` / `eval.png` from each round's eval marker and pair count: before = round
    1's policy, after = the last round's. Prints the table."""
    keep = ("reward", "accuracy", "prompts", "dimensions", "scored")
    summary = {"eval": {"before": {k: rounds[0]["before"][k] for k in keep},
                        "after": {k: rounds[-1]["after"][k] for k in keep}},
               "pairs": sum(x["pairs"] for x in rounds), "judge": first_eval["judge"], "rounds": rounds}
    if "decoding" in first_eval:
        summary["eval"]["decoding"] = first_eval["decoding"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    table = render_table(summary)
    (run_dir / "summary.md").write_text(table + "\n")
    print(table)
    with contextlib.suppress(ImportError):
        plot_summary(summary, run_dir / "eval.png")
    return summary

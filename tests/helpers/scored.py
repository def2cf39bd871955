"""Synthetic scored rows that follow the ``scored.jsonl`` contract of ``judge.score`` exactly (ids, scores,
status, full per-dimension traces), for the pairs / traces / notebook / storage tests."""

from __future__ import annotations

import json
import os
import random
from typing import Any

DIMS = ("helpfulness", "logicality", "faithfulness", "completeness")


def _dim_trace(rng: random.Random, dim: str, score: float | None, k: int) -> dict[str, Any]:
    ok = score is not None
    t: dict[str, Any] = {
        "status": "ok" if ok else "failed",
        "score": score,
        "reasoning": f"{dim} reasoning for response {k} <b>not bold</b>",
        "raw": f'{{"score": {score}}}' if ok else "garbled output",
        "error": None if ok else "could not parse a score",
        "usage": {"calls": 1 if ok else 3, "prompt_tokens": 100 + k, "completion_tokens": 20},
    }
    if dim == "faithfulness":
        t["statements"] = [
            {
                "text": f"Statement {k}.{j} says <x> & more",
                "support": rng.choice(["full", "partial", "none", None]),
                "reasoning": f"check {j}",
                "evidence": [{"chunk_index": j, "text": f"evidence chunk {j} for {k}"}],
            }
            for j in range(2)
        ]
    if dim == "completeness":
        t["chunks"] = [
            {"index": 0, "position": "0%-50%", "info": "first half mentions apples"},
            {"index": 1, "position": "50%-100%", "info": None},
        ]
    return t


def make_scored_rows(
    n_prompts: int = 3, n_responses: int = 5, *, seed: int = 0, fail_every: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompts rows, scored rows). Every ``fail_every``-th response has a failed faithfulness dimension;
    response ``k == 1`` of prompt 0 has all dimensions failed (status "failed", reward null)."""
    rng = random.Random(seed)
    prompts: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for p in range(n_prompts):
        pid = f"p{p}"
        prompts.append(
            {"id": pid, "context": f"Context of {pid}: apples are red.", "query": f"Question {p}?"}
        )
        for k in range(n_responses):
            scores: dict[str, float | None] = {d: float(rng.randint(0, 10)) for d in DIMS}
            if fail_every and (p * n_responses + k) % fail_every == 0:
                scores["faithfulness"] = None
            if p == 0 and k == 1:
                scores = {d: None for d in DIMS}
            ok = [v for v in scores.values() if v is not None]
            reward = sum(ok) / len(ok) if ok else None
            rows.append(
                {
                    "id": f"{pid}-{k}",
                    "prompt_id": pid,
                    "query": f"Question {p}?",
                    "response": f"Response {k} to {pid} <script>alert(1)</script>",
                    "sampler": {"model": "tiny", "temperature": 1.0, "top_p": 1.0, "seed": k},
                    "scores": {**scores, "reward": reward},
                    "status": "scored" if reward is not None else "failed",
                    "trace": {
                        "judge_model": "judge-mini",
                        "base_url_host": "127.0.0.1",
                        "prompt_version": "v1",
                        **{d: _dim_trace(rng, d, scores[d], k) for d in DIMS},
                    },
                }
            )
    return prompts, rows


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_scored_dir(d: str, **kw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``d/scored.jsonl`` and ``d/prompts.jsonl``; return (prompts, rows)."""
    os.makedirs(d, exist_ok=True)
    prompts, rows = make_scored_rows(**kw)
    write_jsonl(os.path.join(d, "scored.jsonl"), rows)
    write_jsonl(os.path.join(d, "prompts.jsonl"), prompts)
    return prompts, rows

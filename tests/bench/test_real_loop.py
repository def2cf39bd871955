"""bench/real_loop.py (the real-model loop's result table): per-seed deltas against a shared baseline,
accuracy by `prose_qa.is_correct`, and the two bootstrap intervals, on hand-made run dirs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT


def _load():
    spec = importlib.util.spec_from_file_location("real_loop", ROOT / "bench" / "real_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(d: Path, answers: list[str], reward: float | None, judged: Path | None = None) -> None:
    """samples.jsonl in `d`, judged (with `reward`) in `judged`/score (default `d`/score)."""
    samples = [{"id": f"h{i}-0", "prompt_id": f"h{i}", "response": a} for i, a in enumerate(answers)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    score = (judged or d) / "score"
    score.mkdir(parents=True)
    scored = [{**s, "scores": {"reward": reward}} for s in samples]
    (score / "scored.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scored))


def test_seeds_share_a_baseline_and_deltas_are_paired(tmp_path):
    prompts = [{"id": "h0", "answer": "1874", "distractors": ["1838"], "type": "single"},
               {"id": "h1", "answer": "not stated", "distractors": ["1838"], "type": "unanswerable"}]
    eval_prompts = tmp_path / "prompts_eval.jsonl"
    eval_prompts.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    runs = []
    for seed, after in enumerate([["1874", "Not stated."], ["1874", "1838"], ["It was 1874.", "Unknown."]]):
        run = tmp_path / f"seed{seed}"
        # the shared answers (1 of 2 right), judged by each run's own judge into its eval/before/score
        _write(tmp_path / "baseline", ["It was 1838.", "Not stated."], 5.0, judged=run / "eval" / "before")
        _write(run / "eval" / "after", after, 6.0 + seed)
        (run / "pairs").mkdir(parents=True)
        (run / "pairs" / "metadata.json").write_text(json.dumps({"counts": {"pairs": 7}}))
        (run / "config.json").write_text(json.dumps({"eval_prompts": str(eval_prompts),
                                                     "eval": {"baseline_dir": str(tmp_path / "baseline")}}))
        runs.append(run)
    s = _load().summarize(runs)
    assert [r["accuracy_delta"] for r in s["seeds"]] == [0.5, 0.0, 0.5]
    assert [r["reward_delta"] for r in s["seeds"]] == [1.0, 2.0, 3.0]
    assert s["accuracy_mean_delta"] == pytest.approx(1 / 3) and s["seeds"][0]["pairs"] == 7
    lo, hi = s["reward_ci_seeds"]
    assert 1.0 <= lo <= 2.0 <= hi <= 3.0
    assert s["reward_ci_prompts"] == pytest.approx((2.0, 2.0))  # every prompt moved by the same amount
    assert s["seeds"][1]["accuracy_unanswerable"] == (1.0, 0.0)

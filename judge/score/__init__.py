"""Score sampled responses with the LongReward judge (``python -m judge.score``, `judge.score.cli`).

- `judge.score.scorer`: the library, `Scorer` and its scheduling, `ScoreOptions`, `score_rows`;
- `judge.score.inputs`: the prompts and samples files;
- `judge.score.scored_file`: ``scored.jsonl`` (reading, torn-line recovery, appending, canonical rewrite,
  failed rows, which finished rows may be reused);
- `judge.score.run`: one run over files (`ScoreJob`, `run_job`, `dry_run`);
- `judge.score.cli`: the flags and the report.

The names below are re-exported for callers that import them from ``judge.score``.
"""

from judge.score.cli import main
from judge.score.inputs import load_prompts, load_samples
from judge.score.scored_file import (
    NOT_REQUESTED,
    RowInfo,
    canonical_rewrite,
    failed_ids,
    recover_scored,
    row_failed,
    scan_scored,
)
from judge.score.scorer import RunSummary, ScoreOptions, Scorer, prefix_order, score_rows, usage_record

__all__ = [
    "NOT_REQUESTED",
    "RowInfo",
    "RunSummary",
    "ScoreOptions",
    "Scorer",
    "canonical_rewrite",
    "failed_ids",
    "load_prompts",
    "load_samples",
    "main",
    "prefix_order",
    "recover_scored",
    "row_failed",
    "scan_scored",
    "score_rows",
    "usage_record",
]

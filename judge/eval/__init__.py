"""LLM-judged and rule-based scores of benchmark predictions (``python -m judge.eval``, `judge.eval.cli`).

- `judge.eval.rating`: the rating prompts, scales and the rating parser;
- `judge.eval.judging`: judging a predictions directory, ``judged.jsonl``, results, the dry-run estimate;
- `judge.eval.cli`: the flags and the report.
"""

from judge.eval.cli import main
from judge.eval.judging import EvalOptions, estimate, judge_item, judge_predictions, load_judged
from judge.eval.rating import EVAL_PROMPT_VERSION, parse_rating
from lr_jax.eval.report import compare_frame, task_frame

__all__ = ["EVAL_PROMPT_VERSION", "EvalOptions", "compare_frame", "estimate", "judge_item",
           "judge_predictions", "load_judged", "main", "parse_rating", "task_frame"]

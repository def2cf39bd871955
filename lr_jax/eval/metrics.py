"""LongBench's rule-based scorer, once: the per-item entry point `longbench_score` and the task aggregates.

Definitions follow the benchmark's published ``LongBench/metrics.py`` and ``LongBench/eval.py``
(THUDM/LongBench) and use the same libraries, so the numbers are the published ones:

- QA token F1, English: lower-case, drop ASCII punctuation, drop the articles a/an/the, split on whitespace;
  Chinese: ``jieba`` (0.42.1) words, each normalised (lower-case, ASCII + Chinese punctuation and whitespace
  removed), empty ones dropped;
- ROUGE-L F, English: the ``rouge`` package (1.0.1; *not* Google's ``rouge-score``), sentence-split on ".",
  whitespace-tokenized; Chinese: the same on ``jieba`` words joined by spaces. Like the published scorer, a
  ROUGE computation that raises (no sentence left, or rouge 1.0.1's recursive LCS backtrack exceeding
  Python's recursion limit on a very long text without ".") scores 0;
- classification (trec, lsht): the classes named in the prediction, minus those that are a strict substring
  of the answer; 1 / (number left) if the answer is among them, else 0;
- passage retrieval (``"Paragraph N"`` / ``"段落N"``) and passage count: the share of the numbers in the
  prediction that equal the answer's number (0 with no number);
- code (lcc, repobench-p): ``fuzzywuzzy`` (0.18.0) ``fuzz.ratio`` / 100 between the answer and the first line
  of the prediction (after leading newlines) that contains none of ```` ` ````, ``#``, ``//``. fuzzywuzzy
  switches to python-Levenshtein's matcher when that package is installed, which gives other numbers; the
  benchmark's requirements install plain fuzzywuzzy (difflib's SequenceMatcher), so that is what we use
  whatever is installed;
- trec, triviaqa, samsum, lsht keep only the first line of the prediction (after leading newlines);
- an item scores the max over its reference answers; a task scores 100 x the mean, rounded to 2 decimals;
  LongBench-E splits items by ``length`` into 0-4k / 4-8k / 8k+.

Pure Python (no JAX, no NumPy): `judge` and notebooks import it freely.
"""

from __future__ import annotations

import difflib
import logging
import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht"})
E_BUCKETS = ("0-4k", "4-8k", "8k+")

# Chinese punctuation removed by the benchmark's Chinese normaliser (its exact list, plus ASCII punctuation).
_CN_PUNCT = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
    "–—‘’‛“”„‟…‧﹏."
)
_EN_PUNCT = frozenset(string.punctuation)
_ZH_PUNCT = frozenset(string.punctuation + _CN_PUNCT)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class MetricInputError(ValueError):
    """An item the scorer cannot score (unknown dataset, a classification item without classes, ...)."""


# --------------------------------------------------------------------------------------------- tokenizers


def _jieba_cut(text: str) -> list[str]:
    import jieba

    # jieba logs "Building prefix dict ..." at DEBUG on its own stderr handler at first use; keep it quiet.
    jieba.setLogLevel(logging.WARNING)
    return list(jieba.cut(text, cut_all=False))


def normalize_answer(s: str) -> str:
    """English normalisation: lower-case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _EN_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def normalize_zh_answer(s: str) -> str:
    """Chinese normalisation: lower-case, no ASCII/Chinese punctuation, no whitespace at all."""
    s = "".join(ch for ch in s.lower() if ch not in _ZH_PUNCT)
    return "".join(s.split())


# --------------------------------------------------------------------------------------------- metrics


def _f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    num_same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return _f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **_: Any) -> float:
    def toks(text: str) -> list[str]:
        return [t for t in (normalize_zh_answer(w) for w in _jieba_cut(text)) if t]

    return _f1(toks(prediction), toks(ground_truth))


def rouge_score(prediction: str, ground_truth: str, **_: Any) -> float:
    from rouge import Rouge

    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except (ValueError, RecursionError, AssertionError, ZeroDivisionError):
        # The published scorer's bare `except: return 0.0`: empty texts and the recursion limit land here.
        return 0.0
    return float(scores["rouge-l"]["f"])


def rouge_zh_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return rouge_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)))


def classification_score(prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None,
                         **_: Any) -> float:
    if not all_classes:
        raise MetricInputError("classification needs all_classes (the task's class names)")
    matches = [c for c in all_classes if c in prediction]
    # The published code removes from the list while iterating over it, which skips the element after each
    # removal; reproduced on purpose so that the numbers stay the benchmark's.
    for term in matches:
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _number_share(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == target for n in numbers) / len(numbers)


def count_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return _number_share(prediction, str(ground_truth))


def _paragraph_id(ground_truth: str, pattern: str) -> str:
    m = re.findall(pattern, ground_truth)
    if not m:
        raise MetricInputError(f"answer {ground_truth!r} does not name a paragraph ({pattern!r})")
    return m[0]


def retrieval_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return _number_share(prediction, _paragraph_id(ground_truth, r"Paragraph (\d+)"))


def retrieval_zh_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return _number_share(prediction, _paragraph_id(ground_truth, r"段落(\d+)"))


def _difflib_ratio(s1: str, s2: str) -> int:
    """fuzzywuzzy 0.18.0 ``fuzz.ratio`` with difflib's matcher: 100 if equal, 0 if one is empty, else the
    rounded percentage of `difflib.SequenceMatcher(None, s1, s2).ratio()`."""
    if s1 == s2:
        return 100
    if not s1 or not s2:
        return 0
    return round(100 * difflib.SequenceMatcher(None, s1, s2).ratio())


def _fuzz_ratio() -> Callable[[str, str], int]:
    with warnings.catch_warnings():  # "Using slow pure-python SequenceMatcher": that is the point
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz
    # The library itself when it runs on difflib (the benchmark's setup); its exact body otherwise.
    return fuzz.ratio if getattr(fuzz, "SequenceMatcher", None) is difflib.SequenceMatcher else _difflib_ratio


def code_sim_score(prediction: str, ground_truth: str, **_: Any) -> float:
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return _fuzz_ratio()(line, ground_truth) / 100


DATASET_METRIC: dict[str, Callable[..., float]] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}


def base_dataset(dataset: str) -> str:
    """``"qasper_e"`` (LongBench-E) -> ``"qasper"``; other names unchanged."""
    return dataset[:-2] if dataset.endswith("_e") and dataset[:-2] in DATASET_METRIC else dataset


def first_line(prediction: str) -> str:
    """The first line after leading newlines (the rule for trec, triviaqa, samsum, lsht)."""
    return prediction.lstrip("\n").split("\n")[0]


def longbench_score(dataset: str, prediction: str, answers: Sequence[str],
                    all_classes: Sequence[str] | None = None) -> float:
    """One item's score in [0, 1]: the first-line rule where the task has it, then the max over `answers`.

    `dataset` is a LongBench task name (a LongBench-E ``*_e`` name is accepted). An empty `answers` scores 0,
    as in the published scorer.
    """
    name = base_dataset(dataset)
    metric = DATASET_METRIC.get(name)
    if metric is None:
        raise MetricInputError(f"unknown LongBench dataset {dataset!r} (known: {', '.join(DATASET_METRIC)})")
    if name in FIRST_LINE_TASKS:
        prediction = first_line(prediction)
    score = 0.0
    for answer in answers:
        score = max(score, metric(prediction, answer, all_classes=all_classes))
    return float(score)


def length_bucket(length: int | float) -> str:
    """LongBench-E bucket of an item's ``length``: ``"0-4k"`` (< 4000), ``"4-8k"`` (< 8000) or ``"8k+"``."""
    return "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"


def task_score(scores: Iterable[float]) -> float | None:
    """100 x mean, rounded to 2 decimals like ``LongBench/eval.py``; None for no items (not 0, not NaN)."""
    xs = list(scores)
    return round(100 * sum(xs) / len(xs), 2) if xs else None


def task_score_e(scores: Iterable[float], lengths: Iterable[int | float]) -> dict[str, float | None]:
    """LongBench-E: `task_score` per length bucket (a bucket with no item is None)."""
    by: dict[str, list[float]] = {b: [] for b in E_BUCKETS}
    for s, n in zip(scores, lengths, strict=True):
        by[length_bucket(n)].append(s)
    return {b: task_score(v) for b, v in by.items()}

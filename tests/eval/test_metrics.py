"""LongBench's rule-based metrics (`lr_jax.eval.metrics`).

Two independent references: values computed by hand from the published formulas (each case says how), and
the benchmark's own ``metrics.py`` (verbatim copy in tests/eval/data, blob id checked) executed on the same
inputs, with the first-line rule and max over answers of its ``eval.py`` written out here.
"""

from __future__ import annotations

import hashlib
import random
import types
import warnings
from pathlib import Path

import pytest

from lr_jax.eval import metrics as m

UPSTREAM = Path(__file__).parent / "data" / "longbench_metrics_upstream.py.txt"
UPSTREAM_BLOB = "657cf773dcca6ef2aaeae96353055f208e95b35f"  # THUDM/LongBench@2e00731 LongBench/metrics.py


def rouge_f(p: float, r: float) -> float:
    """rouge 1.0.1's F: 2PR / (P + R + 1e-8)."""
    return 2 * p * r / (p + r + 1e-8)


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


# (dataset, prediction, answers, all_classes, expected, why)
CASES = [
    # --- QA F1, English: lower-case, punctuation and articles dropped, whitespace split
    ("hotpotqa", "The Eiffel Tower!", ["eiffel tower"], None, 1.0, "normalised both to 'eiffel tower'"),
    ("hotpotqa", "in Paris, France", ["Paris"], None, f1(1 / 3, 1), "1 common of 3 predicted, 1 gold"),
    ("hotpotqa", "an apple a day", ["apple day"], None, 1.0, "articles a/an removed"),
    ("hotpotqa", "another theme", ["other theme"], None, f1(1 / 2, 1 / 2), "'another' keeps its 'an'"),
    ("qasper", "U.S.A.", ["USA"], None, 1.0, "punctuation removed without a space: 'usa'"),
    ("qasper", "", ["Paris"], None, 0.0, "empty prediction"),
    ("qasper", "Paris", [], None, 0.0, "no reference: score stays 0"),
    ("qasper", "the the", ["the"], None, 0.0, "everything is an article: no tokens, no overlap"),
    ("narrativeqa", "blue sky", ["red sky", "blue sky today"], None, f1(1, 2 / 3),
     "max over answers: 0.5 vs 2 common of 2/3 -> 0.8"),
    ("2wikimqa", "yes yes no", ["yes"], None, f1(1 / 3, 1), "Counter intersection counts 'yes' once"),
    # --- QA F1, Chinese: jieba words, normalised, empty ones dropped
    ("multifieldqa_zh", "北京是中国的首都。", ["中国的首都是北京"], None, 1.0,
     "[北京 是 中国 的 首都 。] minus '。' vs [中国 的 首都 是 北京]: 5 of 5"),
    ("multifieldqa_zh", "我爱北京天安门", ["北京"], None, f1(1 / 4, 1), "[我 爱 北京 天安门] vs [北京]"),
    ("multifieldqa_zh", "", ["北京"], None, 0.0, "empty prediction"),
    # --- ROUGE-L (rouge 1.0.1: sentences split at '.', union LCS over *unique* tokens per sentence)
    ("gov_report", "the cat sat on the mat", ["the cat lay on the mat"], None, rouge_f(0.8, 0.8),
     "unique tokens {the cat sat on mat} = 5, LCS {the cat on mat} = 4: P = R = 4/5"),
    ("qmsum", "a b c. d e", ["a c e. b d"], None, rouge_f(1.0, 1.0),
     "summary-level union LCS: ref 'a c e' gets a c (sent 1) + e (sent 2), 'b d' gets b + d: 5/5"),
    ("multi_news", "", ["some reference"], None, 0.0, "empty hypothesis raises in rouge -> 0"),
    ("multi_news", "...", ["some reference"], None, 0.0, "only '.': no sentence left -> 0"),
    ("samsum", "\nAnna calls Tom.\nTom agrees.", ["Anna calls Tom."], None, rouge_f(1.0, 1.0),
     "first-line rule: leading newline stripped, 'Tom agrees.' dropped"),
    # --- ROUGE-L Chinese: jieba words joined by spaces; '。' is a token (no ASCII '.')
    ("vcsum", "会议讨论了预算问题。", ["会议讨论了人员问题和预算"], None, rouge_f(4 / 6, 4 / 7),
     "[会议 讨论 了 预算 问题 。] vs [会议 讨论 了 人员 问题 和 预算]: LCS 4"),
    ("dureader", "", ["北京"], None, 0.0, "empty prediction"),
    # --- classification (+ first-line rule for trec / lsht)
    ("trec", "Location\nAnimal", ["Location"], ["Location", "Animal", "Number"], 1.0,
     "first line only: 'Animal' on line 2 is not counted"),
    ("trec", "Location or Animal", ["Location"], ["Location", "Animal", "Number"], 0.5,
     "two classes named, the gold among them: 1/2"),
    ("trec", "Number", ["Location"], ["Location", "Animal", "Number"], 0.0, "gold not named"),
    ("trec", "abc", ["abc"], ["a", "ab", "abc"], 0.5,
     "published quirk: removing 'a' while iterating skips 'ab', so [ab, abc] remain: 1/2"),
    ("lsht", "体育\n财经", ["体育"], ["体育", "财经", "体育新闻"], 1.0, "first line '体育'"),
    ("lsht", "体育新闻", ["体育新闻"], ["体育", "财经", "体育新闻"], 1.0,
     "'体育' is a strict substring of the gold: removed, 1 class left"),
    # --- passage retrieval / count: share of the numbers that are right
    ("passage_retrieval_en", "Paragraph 3, not Paragraph 5", ["Paragraph 3"], None, 0.5, "numbers [3, 5]"),
    ("passage_retrieval_en", "I am not sure", ["Paragraph 3"], None, 0.0, "no number"),
    ("passage_retrieval_zh", "答案是段落7", ["段落7"], None, 1.0, "numbers [7]"),
    ("passage_retrieval_zh", "段落17", ["段落7"], None, 0.0, "17 is not 7 (whole numbers)"),
    ("passage_count", "There are 12 unique paragraphs, 12.", ["12"], None, 1.0, "numbers [12, 12]"),
    ("passage_count", "1 or 12", ["12"], None, 0.5, "numbers [1, 12]"),
    # --- code: first line without ` # //, fuzzywuzzy ratio (difflib), rounded to an integer percent
    ("lcc", "\n# comment\n`x`\nreturn x + 1\nfoo", ["return x + 1"], None, 1.0,
     "skips the comment and the backtick line"),
    ("lcc", "// c\nreturn x", ["return x + 1"], None, 0.8, "difflib ratio 2*8/(8+12) = 0.8"),
    ("repobench-p", "abc", ["abd"], None, 0.67, "2*2/6 = 0.667 -> round(66.7) = 67"),
    ("repobench-p", "print(1)  # hi", ["print(1)"], None, 0.0, "the only line has '#': empty line -> 0"),
    ("repobench-p", "", [""], None, 1.0, "fuzz.ratio('', '') is 100 (equality is checked before emptiness)"),
    # --- triviaqa: first line + F1; LongBench-E names use the base task
    ("triviaqa", "\n\nParis\nLondon is big", ["Paris"], None, 1.0, "first non-empty-start line 'Paris'"),
    ("qasper_e", "in Paris, France", ["Paris"], None, f1(1 / 3, 1), "LongBench-E file name"),
]


@pytest.mark.parametrize(("dataset", "pred", "answers", "classes", "expected", "why"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_worked_examples(dataset, pred, answers, classes, expected, why) -> None:
    assert m.longbench_score(dataset, pred, answers, classes) == pytest.approx(expected, abs=1e-12), why


def _upstream() -> types.ModuleType:
    data = UPSTREAM.read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == UPSTREAM_BLOB
    mod = types.ModuleType("longbench_metrics_upstream")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(data, str(UPSTREAM), "exec"), mod.__dict__)
    return mod


UPSTREAM_METRIC = {
    "qa_f1_score": ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
                    "triviaqa"],
    "qa_f1_zh_score": ["multifieldqa_zh"],
    "rouge_score": ["gov_report", "qmsum", "multi_news", "samsum"],
    "rouge_zh_score": ["dureader", "vcsum"],
    "classification_score": ["trec", "lsht"],
    "retrieval_score": ["passage_retrieval_en"],
    "retrieval_zh_score": ["passage_retrieval_zh"],
    "count_score": ["passage_count"],
    "code_sim_score": ["lcc", "repobench-p"],
}


def _upstream_item(up: types.ModuleType, dataset: str, pred: str, answers, classes) -> float:
    """LongBench/eval.py's `scorer` for one item, over the upstream metric functions."""
    fn = next(getattr(up, name) for name, ds in UPSTREAM_METRIC.items() if dataset in ds)
    if dataset in ["trec", "triviaqa", "samsum", "lsht"]:
        pred = pred.lstrip("\n").split("\n")[0]
    score = 0.0
    for gt in answers:
        score = max(score, fn(pred, gt, all_classes=classes))
    return score


def _random_text(rng: random.Random, zh: bool) -> str:
    words = (["北京", "中国", "首都", "会议", "预算", "问题", "的", "了", "。", "，", "是", "段落3", "12"]
             if zh else
             ["the", "a", "An", "cat", "sat", "mat.", "Paris,", "Paragraph", "3", "12", "x = 1", "#", "\n",
              "return", "Location", "Animal", "U.S.", "(", ")", "  "])
    return ("" if zh else " ").join(rng.choice(words) for _ in range(rng.randint(0, 12)))


def test_equals_the_published_scorer_on_the_worked_examples_and_random_inputs() -> None:
    up = _upstream()
    rng = random.Random(0)
    cases = [(d, p, a, c) for d, p, a, c, *_ in CASES if not d.endswith("_e")]
    classes = {"trec": ["Location", "Animal", "Number"], "lsht": ["北京", "中国", "会议新闻"]}
    for dataset in [d for ds in UPSTREAM_METRIC.values() for d in ds]:
        zh = dataset in ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh")
        for _ in range(12):
            answers = [_random_text(rng, zh) or "x" for _ in range(rng.randint(1, 3))]
            if dataset == "passage_retrieval_en":
                answers = [f"Paragraph {rng.randint(1, 30)}"]
            elif dataset == "passage_retrieval_zh":
                answers = [f"段落{rng.randint(1, 30)}"]
            elif dataset == "passage_count":
                answers = [str(rng.randint(1, 30))]
            elif dataset in classes:
                answers = [rng.choice(classes[dataset])]
            cases.append((dataset, _random_text(rng, zh), answers, classes.get(dataset)))
    nonzero = 0
    for dataset, pred, answers, cls in cases:
        ours = m.longbench_score(dataset, pred, answers, cls)
        theirs = _upstream_item(up, dataset, pred, answers, cls)
        assert ours == theirs, (dataset, pred, answers)
        nonzero += ours > 0
    assert nonzero > len(cases) // 3  # not a comparison of zeros


def test_code_ratio_is_fuzzywuzzy_on_difflib() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz
    pairs = [("", ""), ("", "a"), ("abc", "abd"), ("return x", "return x + 1"), ("a" * 300, "a" * 299 + "b")]
    for a, b in pairs:
        assert m._difflib_ratio(a, b) == fuzz.ratio(a, b)


def test_aggregates_round_like_eval_py_and_bucket_like_longbench_e() -> None:
    assert m.task_score([1.0, 0.5, 0.0]) == 50.0
    assert m.task_score([1 / 3]) == 33.33
    assert m.task_score([]) is None  # no items: no number (the published scorer would divide by zero)
    buckets = [m.length_bucket(n) for n in (0, 3999, 4000, 7999, 8000)]
    assert buckets == ["0-4k", "0-4k", "4-8k", "4-8k", "8k+"]
    assert m.task_score_e([1.0, 0.0, 0.5, 1.0], [100, 5000, 9000, 12000]) == {
        "0-4k": 100.0, "4-8k": 0.0, "8k+": 75.0}
    assert m.task_score_e([1.0], [100])["8k+"] is None


def test_bad_items_are_errors_not_numbers() -> None:
    with pytest.raises(m.MetricInputError, match="unknown LongBench dataset 'nq'"):
        m.longbench_score("nq", "x", ["x"])
    with pytest.raises(m.MetricInputError, match="all_classes"):
        m.longbench_score("trec", "Location", ["Location"], None)
    with pytest.raises(m.MetricInputError, match="does not name a paragraph"):
        m.longbench_score("passage_retrieval_en", "3", ["three"])


def test_no_jax_import() -> None:
    import subprocess
    import sys

    code = ("import sys, lr_jax.eval.metrics, lr_jax.eval.benchmarks, lr_jax.eval.report; "
            "assert 'jax' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])

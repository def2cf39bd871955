"""The benchmarks' published formats, prompts and task tables, and the Predictions record (pure Python).

Inputs (no downloads; local paths or ``gs://``):

- **LongBench**: a directory with one JSONL per task, ``<task>.jsonl`` (the layout of the benchmark's
  ``data.zip``), each line ``{input, context, answers, length, dataset, language, all_classes, _id}``;
  LongBench-E files are ``<task>_e.jsonl``.
- **LongBench-Chat**: a JSON list of ``{idx, query, answer}`` (the published ``test_cases.json`` also has
  ``prompt``, the document + question the model reads; without it the model reads ``query``), and an
  optional few-shots file: the published ``few_shots.json`` is a list whose entry ``idx - 1`` holds three
  ``{answer, score}`` examples for question ``idx`` (a dict keyed by ``idx`` is accepted too).

Prompt styles (`build_prompt`):

- ``longbench`` (default): the benchmark's own per-task templates and max new tokens
  (``config/dataset2prompt.json``, ``config/dataset2maxlen.json``, kept verbatim in ``assets/``); the
  filled template is one user turn of the tokenizer's chat template, except for trec, triviaqa, samsum,
  lsht, lcc and repobench-p, which the benchmark feeds as raw text ("chat models are better off without
  build prompts on these tasks", ``pred.py``);
- ``longreward``: the LongReward paper's evaluation (``evaluation/LongBench`` in THUDM/LongReward): its own
  shorter templates for the 12 judged tasks, ``context + "\\n\\n" + query`` as one user turn, 1024 new
  tokens for every task. This is what the paper's table was made with.

LongBench-Chat: the question (``prompt`` if present, else ``query``) as one user turn, 1024 new tokens.

Predictions (written by ``python -m lr_jax.eval predict``, read by ``python -m judge.eval``): one JSONL per
task, ``<task>.jsonl`` (``longbench_chat.jsonl`` for LongBench-Chat), one row per item — see
`PREDICTION_FIELDS`.

This module imports no JAX (and nothing heavy): `judge.eval` uses it. The import rule for `judge` is:
``lr_jax.io``, ``lr_jax.errors`` and the pure-Python modules ``lr_jax.eval.benchmarks`` /
``lr_jax.eval.metrics`` / ``lr_jax.eval.report`` only (a test checks that importing ``judge.eval`` leaves
``jax`` out of ``sys.modules``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from lr_jax.errors import LrJaxError
from lr_jax.io import jsonl, storage

_ASSETS = Path(__file__).parent / "assets"

LONGBENCH = "longbench"
LONGBENCH_CHAT = "longbench_chat"
BENCHMARKS = (LONGBENCH, LONGBENCH_CHAT)
PROMPT_STYLES = ("longbench", "longreward")

# Task lists and sizes as published (LongBench/task.md, LongBench-Chat: 50 questions).
LONGBENCH_TASKS: tuple[str, ...] = (
    "narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa", "musique",
    "dureader", "gov_report", "qmsum", "multi_news", "vcsum", "trec", "triviaqa", "samsum", "lsht",
    "passage_count", "passage_retrieval_en", "passage_retrieval_zh", "lcc", "repobench-p",
)
LONGBENCH_E_TASKS: tuple[str, ...] = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
    "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)
TASK_SIZES: dict[str, int] = {
    "narrativeqa": 200, "qasper": 200, "multifieldqa_en": 150, "multifieldqa_zh": 200, "hotpotqa": 200,
    "2wikimqa": 200, "musique": 200, "dureader": 200, "gov_report": 200, "qmsum": 200, "multi_news": 200,
    "vcsum": 200, "trec": 200, "triviaqa": 200, "samsum": 200, "lsht": 200, "passage_count": 200,
    "passage_retrieval_en": 200, "passage_retrieval_zh": 200, "lcc": 500, "repobench-p": 500,
    LONGBENCH_CHAT: 50,
}
# The paper's categories (LongReward Table 1) and the judge's rating scale per task.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "S-Doc": ("narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh"),
    "M-Doc": ("hotpotqa", "2wikimqa", "musique", "dureader"),
    "Summ": ("gov_report", "qmsum", "multi_news", "vcsum"),
}
JUDGED_LONGBENCH_TASKS: tuple[str, ...] = tuple(t for ts in CATEGORIES.values() for t in ts)
# "Avg" of the paper = mean of these four columns.
AVERAGE_OF: tuple[str, ...] = ("LongBench-Chat", "S-Doc", "M-Doc", "Summ")
NO_CHAT_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
LONGREWARD_MAX_NEW_TOKENS = 1024
CHAT_MAX_NEW_TOKENS = 1024

PREDICTION_FIELDS: dict[str, str] = {
    "id": "item id: LongBench `_id`, LongBench-Chat `idx` (as a string)",
    "task": "LongBench task name (`*_e` for LongBench-E) or `longbench_chat`",
    "benchmark": "`longbench` or `longbench_chat`",
    "query": "the question (LongBench `input`; LongBench-Chat `query`); the judge sees it",
    "answers": "reference answers (list of str)",
    "all_classes": "classification labels (trec, lsht) or null",
    "length": "LongBench `length` (words / characters), null for LongBench-Chat",
    "language": "`en` / `zh` (LongBench), null if unknown",
    "prediction": "the model's answer text",
    "finish_reason": "`stop` (EOS) or `length` (max new tokens)",
    "num_tokens": "generated tokens (EOS excluded)",
    "prompt_tokens": "prompt tokens fed to the model (after truncation)",
    "truncated_tokens": "tokens cut from the middle of the input (0 if it fit)",
    "prompt_style": "`longbench` or `longreward` (LongBench-Chat: `longbench_chat`)",
    "sampler": "{model, temperature, top_p, seed}: a re-run with other settings must use another --out",
}


class EvalInputError(LrJaxError, ValueError):
    """A benchmark, few-shots or predictions file that cannot be used; names file, record and field."""


@cache
def _asset(name: str) -> dict[str, Any]:
    return json.loads((_ASSETS / name).read_text(encoding="utf-8"))


def longbench_prompts() -> dict[str, str]:
    """LongBench's ``config/dataset2prompt.json`` (verbatim)."""
    return dict(_asset("longbench_dataset2prompt.json"))


def longbench_max_new_tokens() -> dict[str, int]:
    """LongBench's ``config/dataset2maxlen.json`` (verbatim)."""
    return dict(_asset("longbench_dataset2maxlen.json"))


def longreward_prompts() -> dict[str, str]:
    """LongReward's ``evaluation/LongBench/dataset2prompt.json`` (verbatim; the 12 judged tasks)."""
    return dict(_asset("longreward_dataset2prompt.json"))


def base_task(task: str) -> str:
    """``qasper_e`` -> ``qasper`` (LongBench-E files use the base task's prompt and metric)."""
    return task[:-2] if task.endswith("_e") and task[:-2] in LONGBENCH_TASKS else task


def category_of(task: str) -> str | None:
    """The paper's column of a task: ``S-Doc`` / ``M-Doc`` / ``Summ`` / ``LongBench-Chat``, else None."""
    if task == LONGBENCH_CHAT:
        return "LongBench-Chat"
    for cat, tasks in CATEGORIES.items():
        if task in tasks:
            return cat
    return None


# --------------------------------------------------------------------------------------------- items


@dataclass
class Item:
    """One benchmark question, in the fields both benchmarks share."""

    id: str
    task: str
    benchmark: str
    query: str
    context: str
    answers: list[str]
    all_classes: list[str] | None = None
    length: int | None = None
    language: str | None = None
    prompt: str | None = None  # LongBench-Chat: the full model input when the file has it
    extra: dict[str, Any] = field(default_factory=dict)


def _need(path: str, n: int, obj: dict[str, Any], name: str, types: tuple[type, ...],
          required: bool = True) -> Any:
    return _need_rec(f"{path}:{n}", obj, name, types, required)


def _length(path: str, n: int, obj: dict[str, Any]) -> int | float | None:
    """The optional ``length`` field; finite (json reads ``NaN`` / ``Infinity``, which ``int()`` refuses)."""
    v = _need(path, n, obj, "length", (int, float), required=False)
    if v is not None and not math.isfinite(v):
        raise EvalInputError(f"{path}:{n}: field 'length' must be a finite number, got {v!r}")
    return v


def _str_list(path: str, n: int, obj: dict[str, Any], name: str, required: bool = True) -> list[str] | None:
    v = _need(path, n, obj, name, (list,), required)
    if v is None:
        return None
    if not all(isinstance(x, str) for x in v):
        raise EvalInputError(f"{path}:{n}: field {name!r} must be a list of str")
    return list(v)


def longbench_file(data: str, task: str) -> str:
    """``DATA/<task>.jsonl`` (DATA may itself be a ``.jsonl`` file of one task)."""
    return data if data.endswith(".jsonl") else storage.join(data, f"{task}.jsonl")


def read_longbench(path: str, task: str, limit: int | None = None) -> list[Item]:
    """One LongBench task file -> items (ids unique; the dataset field, if present, must match the task)."""
    if base_task(task) not in LONGBENCH_TASKS:
        raise EvalInputError(f"unknown LongBench task {task!r} (known: {', '.join(LONGBENCH_TASKS)})")
    items: list[Item] = []
    seen: set[str] = set()
    for n, obj in jsonl.read_jsonl(path, error=EvalInputError, where=lambda n: f"{path}:{n}"):
        _id = str(_need(path, n, obj, "_id", (str, int)))
        query = _need(path, n, obj, "input", (str,))
        context = _need(path, n, obj, "context", (str,))
        answers = _str_list(path, n, obj, "answers")
        length = _length(path, n, obj)
        dataset = _need(path, n, obj, "dataset", (str,), required=False)
        language = _need(path, n, obj, "language", (str,), required=False)
        classes = _str_list(path, n, obj, "all_classes", required=False)
        if dataset is not None and base_task(dataset) != base_task(task):
            raise EvalInputError(f"{path}:{n}: field 'dataset' is {dataset!r}, the file is task {task!r}")
        if base_task(task) in ("trec", "lsht") and not classes:
            raise EvalInputError(f"{path}:{n}: field 'all_classes' is required for {task}")
        if _id in seen:
            raise EvalInputError(f"{path}:{n}: field '_id': duplicate id {_id!r}")
        seen.add(_id)
        items.append(Item(_id, task, LONGBENCH, query, context, answers or [], classes,
                          None if length is None else int(length), language))
        if limit is not None and len(items) >= limit:
            break
    return items


def _read_json(path: str) -> Any:
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise EvalInputError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def read_longbench_chat(path: str, limit: int | None = None) -> list[Item]:
    """LongBench-Chat's JSON list -> items; records are named ``<file>: record <i>`` (0-based)."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise EvalInputError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    items: list[Item] = []
    seen: set[str] = set()
    for i, obj in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(obj, dict):
            raise EvalInputError(f"{where}: expected an object, got {type(obj).__name__}")
        idx = _need_rec(where, obj, "idx", (int, str))
        query = _need_rec(where, obj, "query", (str,))
        answer = _need_rec(where, obj, "answer", (str,))
        prompt = _need_rec(where, obj, "prompt", (str,), required=False)
        if str(idx) in seen:
            raise EvalInputError(f"{where}: field 'idx': duplicate idx {idx!r}")
        seen.add(str(idx))
        items.append(Item(str(idx), LONGBENCH_CHAT, LONGBENCH_CHAT, query, "", [answer], prompt=prompt))
        if limit is not None and len(items) >= limit:
            break
    return items


def _need_rec(where: str, obj: dict[str, Any], name: str, types: tuple[type, ...],
              required: bool = True) -> Any:
    return jsonl.field(obj, name, types, where, error=EvalInputError, required=required,
                       none_is_missing=True)


def read_few_shots(path: str) -> dict[str, list[tuple[str, int]]]:
    """LongBench-Chat few-shots -> {idx: [(answer, score 1..10), ...]} (entry ``i`` of a list is idx i+1)."""
    data = _read_json(path)
    if isinstance(data, list):
        pairs = [(str(i + 1), v) for i, v in enumerate(data)]
    elif isinstance(data, dict):
        pairs = [(str(k), v) for k, v in data.items()]
    else:
        raise EvalInputError(f"{path}: expected a JSON list (or object) of example lists")
    out: dict[str, list[tuple[str, int]]] = {}
    for idx, examples in pairs:
        where = f"{path}: question {idx}"
        if not isinstance(examples, list):
            raise EvalInputError(f"{where}: expected a list of {{answer, score}} examples")
        shots = []
        for j, ex in enumerate(examples):
            w = f"{where}, example {j}"
            if not isinstance(ex, dict):
                raise EvalInputError(f"{w}: expected an object")
            ans = _need_rec(w, ex, "answer", (str,))
            score = _need_rec(w, ex, "score", (int, float, str))
            try:
                s = int(str(score).strip())
            except ValueError:
                raise EvalInputError(f"{w}: field 'score' must be an integer 1-10, got {score!r}") from None
            if not 1 <= s <= 10:
                raise EvalInputError(f"{w}: field 'score' must be an integer 1-10, got {score!r}")
            shots.append((ans, s))
        out[idx] = shots
    return out


# --------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """What the model reads for one item: `content` as one user turn (``chat``) or raw text."""

    content: str
    chat: bool
    max_new_tokens: int


def build_prompt(item: Item, style: str = "longbench") -> Prompt:
    """The model input of `item` under prompt `style` (see the module docstring)."""
    if item.benchmark == LONGBENCH_CHAT:
        return Prompt(item.prompt if item.prompt is not None else item.query, True, CHAT_MAX_NEW_TOKENS)
    task = base_task(item.task)
    values = {"context": item.context, "input": item.query}
    if style == "longbench":
        template = longbench_prompts()[task]
        return Prompt(template.format(**values), task not in NO_CHAT_TASKS, longbench_max_new_tokens()[task])
    if style == "longreward":
        templates = longreward_prompts()
        if task not in templates:
            raise EvalInputError(f"prompt style 'longreward' covers only the judged tasks "
                                 f"({', '.join(templates)}), not {task!r}")
        # As LongReward's 1_aggregate_data.py: split the filled template at its last blank line into
        # context and query, strip the query, and rejoin with "\n\n" (2_pred.py).
        context, query = templates[task].format(**values).rsplit("\n\n", 1)
        return Prompt(context + "\n\n" + query.strip(), True, LONGREWARD_MAX_NEW_TOKENS)
    raise EvalInputError(f"unknown prompt style {style!r} (choose from {', '.join(PROMPT_STYLES)})")


# --------------------------------------------------------------------------------------------- predictions


def predictions_file(out_dir: str, task: str) -> str:
    return storage.join(out_dir, f"{task}.jsonl")


def read_predictions(path: str) -> list[dict[str, Any]]:
    """One Predictions JSONL -> rows (last line per id wins; a torn last line from a kill is skipped)."""
    rows: dict[str, dict[str, Any]] = {}
    for n, obj in jsonl.read_jsonl(path, error=EvalInputError, where=lambda n: f"{path}:{n}",
                                   torn_tail="skip"):
        rid = str(_need(path, n, obj, "id", (str, int)))
        task = _need(path, n, obj, "task", (str,))
        if base_task(task) not in LONGBENCH_TASKS and task != LONGBENCH_CHAT:
            raise EvalInputError(f"{path}:{n}: field 'task': unknown task {task!r}")
        _need(path, n, obj, "prediction", (str,))
        _need(path, n, obj, "query", (str,))
        _str_list(path, n, obj, "answers")
        _str_list(path, n, obj, "all_classes", required=False)
        _length(path, n, obj)
        rows[rid] = {**obj, "id": rid}
    return list(rows.values())


def find_prediction_files(pred_dir: str) -> dict[str, str]:
    """{task: path} for every known task's ``<task>.jsonl`` in `pred_dir`, in the benchmark's order."""
    known = [*LONGBENCH_TASKS, *(f"{t}_e" for t in LONGBENCH_E_TASKS), LONGBENCH_CHAT]
    # list_files is recursive: keep only the files directly in pred_dir
    present = set(storage.list_files(pred_dir, "*.jsonl")) if _exists(pred_dir) else set()
    return {t: predictions_file(pred_dir, t) for t in known if predictions_file(pred_dir, t) in present}


def _exists(path: str) -> bool:
    return storage.exists(path) if storage.is_gcs(path) else Path(path).is_dir()

"""The scored-row contract: what `judge.score` writes to ``DIR/scored.jsonl`` and
`judge.pairs`/`judge.traces` read.

One JSON object per line = every field of the Samples row plus ``scores``, ``status`` and ``trace``. This
module is the single definition (TypedDicts for readers, `validate_scored_row` for tests and defensive
readers).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NotRequired, TypedDict

from lr_jax.errors import LrJaxError
from lr_jax.io.records import DIMENSIONS  # one owner: the record schema the trainer reads

__all__ = [
    "DIMENSIONS",
    "SCORED_FILE",
    "SCORED_SCHEMA_VERSION",
    "SUPPORT_LEVELS",
    "USAGE_FILE",
    "JudgeInputError",
    "reward_of",
    "scored_file",
    "validate_scored_row",
]

SCORED_SCHEMA_VERSION = "1"  # of the scored-row contract below (the preference records have their own)
SCORED_FILE = "scored.jsonl"  # the file `judge.score` writes inside --out; pairs and traces read it
# beside it: per row the judge's calls and tokens with the prompt-cached ones, which depend on timing and
# executor and so are kept out of the rows (`judge.score.usage_record`; `judge.traces.load_usage` reads it)
USAGE_FILE = "usage.jsonl"
SUPPORT_LEVELS: tuple[str, ...] = ("full", "partial", "none")  # faithfulness verdicts, best first


class JudgeInputError(LrJaxError, ValueError):
    """Bad input (file, line and field named in the message) or bad configuration; instead of a traceback."""


def scored_file(path: str) -> str:
    """``path`` itself if it names a ``.jsonl`` file, else ``path/scored.jsonl`` (local or gs://)."""
    from lr_jax.io import storage

    return path if path.endswith(".jsonl") else storage.join(path, SCORED_FILE)


class Usage(TypedDict):
    calls: int
    prompt_tokens: int
    completion_tokens: int


class Evidence(TypedDict):
    chunk_index: int
    text: str


class Statement(TypedDict):
    text: str
    support: Literal["full", "partial", "none"] | None  # None: the judge's verdict could not be parsed
    reasoning: str
    evidence: list[Evidence]


class ChunkInfo(TypedDict):
    index: int
    position: str  # "0%-25%": where the chunk sits in the context
    info: str | None  # None: nothing relevant in this chunk, or its extraction failed (then ``error`` is set)
    error: NotRequired[str]  # why the extraction failed (the dimension then failed too)


class DimensionTrace(TypedDict):
    status: Literal["ok", "failed"]
    score: float | None
    reasoning: str
    raw: str
    error: str | None
    usage: Usage
    statements: NotRequired[list[Statement]]  # faithfulness only
    chunks: NotRequired[list[ChunkInfo]]  # completeness only
    shared_usage: NotRequired[Usage]  # completeness only: the per-prompt extraction, paid once per prompt


class Trace(TypedDict):
    judge_model: str
    base_url_host: str
    prompt_version: str
    fingerprint: NotRequired[dict[str, Any]]  # what produced the row (judge.provenance); absent in old rows
    helpfulness: DimensionTrace
    logicality: DimensionTrace
    faithfulness: DimensionTrace
    completeness: DimensionTrace


class Scores(TypedDict):
    helpfulness: float | None
    logicality: float | None
    faithfulness: float | None
    completeness: float | None
    reward: float | None


class ScoredRow(TypedDict):
    id: str
    prompt_id: str
    query: str
    response: str
    sampler: dict[str, Any]
    scores: Scores
    status: Literal["scored", "failed"]
    trace: Trace


def reward_of(scores: dict[str, float | None]) -> float | None:
    """Mean of the dimensions that succeeded; None when every dimension failed (never 0, never NaN)."""
    ok = [float(scores[d]) for d in DIMENSIONS if scores.get(d) is not None]
    return sum(ok) / len(ok) if ok else None


def _fail(where: str, msg: str) -> None:
    raise JudgeInputError(f"{where}: {msg}")


def _check_score(where: str, v: Any) -> None:
    if v is None:
        return
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 10:
        _fail(where, f"must be a number in [0, 10] or null, got {v!r}")


def _check_usage(where: str, u: Any) -> None:
    if not isinstance(u, dict):
        _fail(where, "must be an object")
    for k in ("calls", "prompt_tokens", "completion_tokens"):
        if not isinstance(u.get(k), int) or u[k] < 0:
            _fail(f"{where}.{k}", f"must be a non-negative int, got {u.get(k)!r}")


def validate_scored_row(row: Any, where: str = "scored row") -> ScoredRow:
    """Check one scored row against the contract; raise `JudgeInputError` naming the first bad field."""
    if not isinstance(row, dict):
        _fail(where, "must be a JSON object")
    for k in ("id", "prompt_id", "query", "response"):
        if not isinstance(row.get(k), str):
            _fail(f"{where}: field {k!r}", f"must be a string, got {type(row.get(k)).__name__}")
    if not isinstance(row.get("sampler", {}), dict):
        _fail(f"{where}: field 'sampler'", "must be an object")
    scores = row.get("scores")
    if not isinstance(scores, dict):
        _fail(f"{where}: field 'scores'", "must be an object")
    for d in (*DIMENSIONS, "reward"):
        if d not in scores:
            _fail(f"{where}: field 'scores.{d}'", "missing")
        _check_score(f"{where}: field 'scores.{d}'", scores[d])
    expect = reward_of(scores)
    if (expect is None) != (scores["reward"] is None) or (
        expect is not None and abs(expect - scores["reward"]) > 1e-6
    ):
        _fail(f"{where}: field 'scores.reward'", f"must be the mean of non-null dimensions ({expect})")
    if row.get("status") not in ("scored", "failed"):
        _fail(f"{where}: field 'status'", f"must be 'scored' or 'failed', got {row.get('status')!r}")
    if (row["status"] == "failed") != (scores["reward"] is None):
        _fail(f"{where}: field 'status'", "'failed' exactly when every dimension failed")
    trace = row.get("trace")
    if not isinstance(trace, dict):
        _fail(f"{where}: field 'trace'", "must be an object")
    for k in ("judge_model", "base_url_host", "prompt_version"):
        if not isinstance(trace.get(k), str):
            _fail(f"{where}: field 'trace.{k}'", "must be a string")
    fp = trace.get("fingerprint")  # absent in rows written before fingerprints (judge.provenance)
    if fp is not None and not (isinstance(fp, dict) and isinstance(fp.get("sha256"), str)):
        _fail(f"{where}: field 'trace.fingerprint'", "must be an object with a 'sha256' string")
    for d in DIMENSIONS:
        t = trace.get(d)
        w = f"{where}: field 'trace.{d}'"
        if not isinstance(t, dict):
            _fail(w, "must be an object")
        if t.get("status") not in ("ok", "failed"):
            _fail(f"{w}.status", f"must be 'ok' or 'failed', got {t.get('status')!r}")
        _check_score(f"{w}.score", t.get("score"))
        if (t["status"] == "ok") != (t.get("score") is not None):
            _fail(f"{w}.score", "must be a number exactly when status is 'ok'")
        if t.get("score") != scores[d]:
            _fail(f"{w}.score", f"must equal scores.{d}")
        for k in ("reasoning", "raw"):
            if not isinstance(t.get(k), str):
                _fail(f"{w}.{k}", "must be a string")
        if t.get("error") is not None and not isinstance(t["error"], str):
            _fail(f"{w}.error", "must be a string or null")
        _check_usage(f"{w}.usage", t.get("usage"))
    for s in trace["faithfulness"].get("statements", None) or []:
        if s.get("support") not in (*SUPPORT_LEVELS, None):
            _fail(
                f"{where}: field 'trace.faithfulness.statements[].support'", f"bad value {s.get('support')!r}"
            )
        if not isinstance(s.get("evidence"), list):
            _fail(f"{where}: field 'trace.faithfulness.statements[].evidence'", "must be a list")
    if not isinstance(trace["faithfulness"].get("statements"), list):
        _fail(f"{where}: field 'trace.faithfulness.statements'", "must be a list")
    if not isinstance(trace["completeness"].get("chunks"), list):
        _fail(f"{where}: field 'trace.completeness.chunks'", "must be a list")
    return row  # type: ignore[return-value]

"""The library of ``judge.pairs`` (the CLI is `judge.pairs.cli`): best-vs-worst preference pairs from
scored responses → preference records (``lr_jax.io.records``).

    python -m judge.pairs --scored DIR --prompts P.jsonl --out gs://bucket/path|local_dir \
        [--min-responses 5] [--min-gap 0.0] [--reference-weight 0.5 --reference-metric match] \
        [--num-shards N] [--compression GZIP] [--overwrite]

Per prompt, among its responses with ``status == "scored"`` and a non-null reward:

- the ranking reward is the judge's (the mean of the four dimensions), or with ``--reference-weight W`` > 0
  the hybrid ``(1 - W) * judge + W * reference`` (`lr_jax.eval.reference`: a rule-based 0-10 score of the
  response against the prompt's ``answer`` under ``--reference-metric``; every prompt then needs an
  ``answer``). The records' ``chosen_reward`` / ``rejected_reward`` hold the ranking reward;
- chosen = highest reward, rejected = lowest reward;
- ties are broken deterministically by response ``id`` (string order): among equal best rewards the smallest
  id is chosen, among equal worst rewards the largest id is rejected;
- the prompt is skipped (and counted) when it has fewer than ``--min-responses`` such responses, when best and
  worst rewards are equal (no preference to learn), or when the gap is below ``--min-gap``.

If ``scored.jsonl`` holds the same response ``id`` twice (a resumed scoring run), the later line wins.

Commit semantics (see ``lr_jax.io.records``): ``metadata.json`` is written last, create-only; it carries a
fingerprint of the inputs and options. A rerun with the same fingerprint is a no-op; a rerun after a crash (no
``metadata.json``) cleans up and rewrites; a different input into a committed directory needs ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from judge.outdir import check_output_dir
from judge.schema import DIMENSIONS, JudgeInputError, scored_file
from lr_jax.eval import reference
from lr_jax.io import jsonl, records, storage
from lr_jax.options import option, validate

PRODUCER = "judge.pairs"


class PairsInputError(JudgeInputError):
    """Bad input (the message names file, line and field) or bad options."""


@dataclass(frozen=True)
class PairsOptions:
    """How pairs are selected and written. Each default, bound and help lives here only: the ``judge.pairs``
    flags are generated from these fields, and `run` takes them as keywords."""

    min_responses: int = option(5, ge=2, help="skip prompts with fewer scored responses")
    min_gap: float = option(0.0, ge=0, le=10, help="skip pairs whose reward gap is below this")
    reference_weight: float = option(
        0.0, ge=0, le=1, help="weight of the rule-based reference reward in the ranking (0: the judge's only)"
    )
    reference_metric: str = option(
        "match", choices=tuple(reference.METRICS), help="how a response is checked against its reference"
    )
    num_shards: int = option(
        1,
        ge=1,
        help="TFRecord files, records dealt round-robin; for training use a multiple (or divisor) of "
        "data.batch_size, so each host reads only the files of its batch rows",
    )
    compression: str | None = option(None, choices=("GZIP",), help="compress each shard")
    overwrite: bool = option(False, help="replace a committed dataset made from other input")

    def __post_init__(self) -> None:
        validate(self, PairsInputError)


@dataclass
class Candidate:
    """One scored response of a prompt, reduced to what pair selection needs."""

    id: str
    response: str
    reward: float
    scores: dict[str, float | None]
    judge_model: str | None = None
    prompt_version: str | None = None


@dataclass
class PairStats:
    rows: int = 0
    duplicate_ids: int = 0
    rows_scored: int = 0
    rows_failed: int = 0
    prompts: int = 0
    pairs: int = 0
    skipped_too_few: int = 0
    skipped_no_gap: int = 0
    skipped_small_gap: int = 0
    judge_models: set[str] = field(default_factory=set)
    prompt_versions: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["judge_models"] = sorted(self.judge_models)
        d["prompt_versions"] = sorted(self.prompt_versions)
        return d


def select_pair(cands: Sequence[Candidate]) -> tuple[Candidate, Candidate] | None:
    """(chosen, rejected): highest reward with the smallest id vs. lowest reward with the largest id.

    None when there are fewer than two candidates.
    """
    if len(cands) < 2:
        return None
    chosen = min(cands, key=lambda c: (-c.reward, c.id))
    rejected = max(cands, key=lambda c: (-c.reward, c.id))
    return chosen, rejected


# ---------------------------------------------------------------------------------------------------- input


def _jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-empty line; a bad line raises naming file and line."""
    return list(jsonl.read_jsonl(path, error=PairsInputError))


def _id(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return str(v)
    return v if isinstance(v, str) else None


def load_prompts(path: str, with_reference: bool = False) -> dict[str, dict[str, Any]]:
    """``id -> {"context", "query"}`` from prompts.jsonl (ids may be ints; they are compared as strings);
    ``with_reference``: also ``answer`` / ``distractors``, required and checked (`lr_jax.eval.reference`)."""
    out: dict[str, dict[str, Any]] = {}
    for n, obj in _jsonl(path):
        pid = _id(obj.get("id"))
        if pid is None:
            raise PairsInputError(
                f"{path}: line {n}: field 'id' must be a string or int, got {obj.get('id')!r}"
            )
        for k in ("context", "query"):
            if not isinstance(obj.get(k), str):
                raise PairsInputError(f"{path}: line {n}: field {k!r} must be a string")
        if pid in out:
            raise PairsInputError(f"{path}: line {n}: field 'id': duplicate prompt id {pid!r}")
        out[pid] = {"context": obj["context"], "query": obj["query"]}
        if with_reference:
            try:
                refs = reference.references(obj, f"{path}: line {n}")
            except reference.ReferenceAnswerError as e:
                raise PairsInputError(str(e)) from None
            if refs is None:
                raise PairsInputError(
                    f"{path}: line {n}: field 'answer' missing: --reference-weight > 0 ranks responses "
                    "against each prompt's reference answer"
                )
            out[pid]["answer"], out[pid]["distractors"] = refs
    return out


def _score(path: str, n: int, scores: dict[str, Any], k: str) -> float | None:
    v = scores.get(k)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 10:
        # the scored-row contract (judge.schema): every dimension and the reward are 0-10 or null
        raise PairsInputError(
            f"{path}: line {n}: field 'scores.{k}' must be a number in [0, 10] or null, got {v!r}"
        )
    return float(v)


def load_candidates(path: str, stats: PairStats) -> dict[str, list[Candidate]]:
    """``prompt_id -> candidates`` (status "scored", non-null reward) from scored.jsonl; counts rows."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    lines = _jsonl(path)
    if not lines:
        raise PairsInputError(f"{path}: no scored rows (the file is empty); run judge.score first")
    for n, row in lines:
        if "scores" not in row and "status" not in row and "response" in row:
            raise PairsInputError(
                f"{path}: line {n}: no 'scores' or 'status': this looks like a samples file, not judge.score "
                "output; score it first (python -m judge.score --samples ... --out DIR) and pass --scored DIR"
            )
        for k in ("id", "prompt_id"):
            if _id(row.get(k)) is None:
                raise PairsInputError(f"{path}: line {n}: field {k!r} must be a string or int")
        if not isinstance(row.get("response"), str):
            raise PairsInputError(f"{path}: line {n}: field 'response' must be a string")
        if row.get("status") not in ("scored", "failed"):
            raise PairsInputError(
                f"{path}: line {n}: field 'status' must be 'scored' or 'failed', got {row.get('status')!r}"
            )
        if not isinstance(row.get("scores"), dict):
            raise PairsInputError(f"{path}: line {n}: field 'scores' must be an object")
        if "reward" not in row["scores"]:
            raise PairsInputError(f"{path}: line {n}: field 'scores.reward' missing")
        for k in (*DIMENSIONS, "reward"):
            _score(path, n, row["scores"], k)
        stats.rows += 1
        rid = _id(row["id"])
        assert rid is not None
        if rid in latest:
            stats.duplicate_ids += 1
        latest[rid] = (n, row)

    by_prompt: dict[str, list[Candidate]] = {}
    for rid, (n, row) in latest.items():
        reward = _score(path, n, row["scores"], "reward")
        if row["status"] != "scored" or reward is None:
            stats.rows_failed += 1
            continue
        stats.rows_scored += 1
        trace = row.get("trace") if isinstance(row.get("trace"), dict) else {}
        cand = Candidate(
            id=rid,
            response=row["response"],
            reward=reward,
            scores={d: _score(path, n, row["scores"], d) for d in DIMENSIONS},
            judge_model=trace.get("judge_model"),
            prompt_version=trace.get("prompt_version"),
        )
        by_prompt.setdefault(str(_id(row["prompt_id"])), []).append(cand)
    return by_prompt


def resolve_inputs(scored: str, prompts: str | None) -> tuple[str, str]:
    """``--scored`` may be a directory (containing scored.jsonl) or the file; ``--prompts`` defaults to
    ``prompts.jsonl`` beside ``scored.jsonl``."""
    if not scored:
        raise PairsInputError("--scored: empty path")
    scored_path = scored_file(scored)
    if not storage.exists(scored_path):
        what = "directory holds no scored.jsonl" if storage.exists(scored) else "not found"
        raise PairsInputError(
            f"{scored_path}: {what}; pass --scored the directory judge.score wrote (or its scored.jsonl)"
        )
    if not storage.is_gcs(scored_path) and os.path.isdir(scored_path):
        raise PairsInputError(f"{scored_path}: is a directory, not a scored.jsonl file")
    if prompts is not None and not storage.exists(prompts):
        raise PairsInputError(f"{prompts}: not found (--prompts)")
    if prompts is None:
        parent = (
            scored_path.rsplit("/", 1)[0] if storage.is_gcs(scored_path) else os.path.dirname(scored_path)
        )
        prompts = storage.join(parent or ".", "prompts.jsonl")
        if not storage.exists(prompts):
            raise PairsInputError(
                f"{prompts}: not found; pass --prompts PATH (the prompts.jsonl the samples were drawn from)"
            )
    return scored_path, prompts


# ---------------------------------------------------------------------------------------------------- build


def build_pairs(
    prompts: dict[str, dict[str, str]],
    by_prompt: dict[str, list[Candidate]],
    stats: PairStats,
    *,
    min_responses: int,
    min_gap: float,
    scored_path: str = "scored.jsonl",
    reference_weight: float = 0.0,
    reference_metric: str = "match",
) -> list[dict[str, Any]]:
    """Pair records (``records.FIELDS``) in prompts-file order; counts skips into ``stats``.

    With ``reference_weight`` > 0 each candidate's reward becomes the hybrid reward (the prompts then carry
    ``answer`` / ``distractors``: `load_prompts(..., with_reference=True)`)."""
    unknown = sorted(set(by_prompt) - set(prompts))
    if unknown:
        raise PairsInputError(
            f"{scored_path}: field 'prompt_id': {len(unknown)} prompt id(s) not in the prompts file, "
            f"e.g. {unknown[:3]}"
        )
    out: list[dict[str, Any]] = []
    for pid, prompt in prompts.items():
        cands = by_prompt.get(pid)
        if not cands:
            continue
        stats.prompts += 1
        if reference_weight > 0:
            cands = [dataclasses.replace(c, reward=reference.hybrid_reward(
                c.reward, reference.reference_score(c.response, prompt, reference_metric), reference_weight))
                for c in cands]
        if len(cands) < min_responses:
            stats.skipped_too_few += 1
            continue
        sel = select_pair(cands)
        if sel is None:
            stats.skipped_too_few += 1
            continue
        chosen, rejected = sel
        gap = chosen.reward - rejected.reward
        if gap <= 0.0:
            stats.skipped_no_gap += 1
            continue
        if gap < min_gap:
            stats.skipped_small_gap += 1
            continue
        for c in (chosen, rejected):
            if c.judge_model:
                stats.judge_models.add(c.judge_model)
            if c.prompt_version:
                stats.prompt_versions.add(c.prompt_version)
        rec: dict[str, Any] = {
            "prompt_id": pid,
            "context": prompt["context"],
            "query": prompt["query"],
            "chosen": chosen.response,
            "rejected": rejected.response,
            "chosen_reward": chosen.reward,
            "rejected_reward": rejected.reward,
        }
        for d in DIMENSIONS:
            rec[f"chosen_{d}"] = chosen.scores[d]  # None (failed dimension) -> NaN in the record
            rec[f"rejected_{d}"] = rejected.scores[d]
        out.append(rec)
    stats.pairs = len(out)
    return out


def fingerprint(scored_file: str, prompts_file: str, options: dict[str, Any]) -> str:
    """sha256 of both inputs' bytes, the options and the schema version: same fingerprint = same dataset."""
    h = hashlib.sha256()
    for p in (scored_file, prompts_file):
        h.update(hashlib.sha256(storage.read_bytes(p)).digest())
    h.update(json.dumps({**options, "schema_version": records.SCHEMA_VERSION}, sort_keys=True).encode())
    return h.hexdigest()


def run(
    scored: str,
    out: str,
    *,
    prompts: str | None = None,
    options: PairsOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Build and commit the preference dataset; return its metadata (``"skipped": True`` if committed).

    ``options`` (default `PairsOptions()`) with any of its fields overridden by keyword, e.g.
    ``run(d, out, min_responses=3, num_shards=2)``.
    """
    try:
        opt = dataclasses.replace(options or PairsOptions(), **overrides)
    except TypeError as e:  # an unknown keyword
        raise PairsInputError(f"unknown option: {e}") from None
    check_output_dir(out, "--out")
    min_responses, min_gap, num_shards = opt.min_responses, opt.min_gap, opt.num_shards
    compression, overwrite = opt.compression, opt.overwrite
    scored_path, prompts_file = resolve_inputs(scored, prompts)
    fp_options: dict[str, Any] = {  # what the dataset depends on (overwrite does not change it)
        "min_responses": min_responses,
        "min_gap": min_gap,
        "num_shards": num_shards,
        "compression": compression,
    }
    if opt.reference_weight > 0:  # only then: datasets made before the option keep their fingerprint
        fp_options |= {"reference_weight": opt.reference_weight, "reference_metric": opt.reference_metric}
    fp = fingerprint(scored_path, prompts_file, fp_options)
    existing = records.read_metadata(out)
    if existing is not None and existing.get("fingerprint") == fp:
        return {**existing, "skipped": True}

    stats = PairStats()
    prompt_rows = load_prompts(prompts_file, with_reference=opt.reference_weight > 0)
    by_prompt = load_candidates(scored_path, stats)
    pairs = build_pairs(
        prompt_rows, by_prompt, stats, min_responses=min_responses, min_gap=min_gap, scored_path=scored_path,
        reference_weight=opt.reference_weight, reference_metric=opt.reference_metric,
    )
    counts = stats.as_dict()
    metadata = {
        "producer": PRODUCER,
        "fingerprint": fp,
        "inputs": {"scored": scored_path, "prompts": prompts_file},
        "options": fp_options,
        "judge_model": counts["judge_models"][0]
        if len(counts["judge_models"]) == 1
        else counts["judge_models"],
        "counts": counts,
        "description": "LongReward best-vs-worst preference pairs (text, not token ids)",
    }
    return records.write_pairs(
        pairs, out, num_shards=num_shards, compression=compression, metadata=metadata, overwrite=overwrite
    )


def _ranking_line(opts: dict[str, Any]) -> list[str]:
    w = opts.get("reference_weight")
    if not w:
        return []
    return [f"  ranking reward       {1 - w:g} x judge + {w:g} x reference ({opts['reference_metric']})"]


def summary(meta: dict[str, Any], out: str) -> str:
    c = meta.get("counts", {})
    opts = meta.get("options", {})
    lines = [
        f"{'already committed (same input), nothing written' if meta.get('skipped') else 'committed'}: {out}",
        f"  pairs written        {meta.get('num_records')} in {len(meta.get('shards', []))} shard(s)"
        f"{' (GZIP)' if meta.get('compression') else ''}",
        f"  prompts with scores  {c.get('prompts')}",
        f"  skipped: too few     {c.get('skipped_too_few')} (< {opts.get('min_responses')} scored)",
        f"  skipped: equal       {c.get('skipped_no_gap')}",
        f"  skipped: small gap   {c.get('skipped_small_gap')} (< {opts.get('min_gap')})",
        *_ranking_line(opts),
        f"  responses            {c.get('rows')} rows, {c.get('rows_scored')} scored, "
        f"{c.get('rows_failed')} failed"
        f", {c.get('duplicate_ids')} duplicate ids (last wins)",
        f"  judge model          {meta.get('judge_model')}",
    ]
    return "\n".join(lines)

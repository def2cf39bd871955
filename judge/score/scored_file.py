"""The scored file ``OUT/scored.jsonl`` (the row contract is `judge.schema`): reading the last line per id,
cutting a torn last line, appending rows (flush + fsync each), the canonical rewrite at the end of a run,
which rows count as failed, which finished rows this run may reuse (`judge.provenance`), and what the file
holds (for ``summary.json``). ``usage.jsonl`` (per-row accounting) is appended and rewritten alongside."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from judge.cache import RefreshingCache
from judge.parsing import OUTPUT_OF_KIND, parse
from judge.provenance import describe_mismatches, differences, row_fingerprint
from judge.schema import DIMENSIONS, SCORED_FILE, USAGE_FILE, JudgeInputError, ScoredRow
from lr_jax.io import jsonl

NOT_REQUESTED = "dimension not requested"  # the error of a dimension the scorer was told to leave out


@dataclass
class RowInfo:
    """What a re-run needs to know about the last line of one id in ``scored.jsonl``."""

    status: Any
    failed: bool  # `row_failed`
    fingerprint: Any  # trace.fingerprint, or None for a row written before fingerprints
    judge_model: Any
    prompt_version: Any
    base_url_host: Any

    @classmethod
    def of(cls, row: dict[str, Any]) -> RowInfo:
        trace = row.get("trace") if isinstance(row.get("trace"), dict) else {}
        return cls(
            row.get("status"),
            row_failed(row),
            trace.get("fingerprint"),
            trace.get("judge_model"),
            trace.get("prompt_version"),
            trace.get("base_url_host"),
        )


def scan_scored(path: Path) -> tuple[dict[str, RowInfo], int]:
    """The last line per id of ``scored.jsonl`` (as `RowInfo`); a torn last line (kill mid-write) is cut off
    first. Returns (id -> info, bytes dropped). A bad line that is not the last one is an error."""
    text, dropped = jsonl.repair_torn_tail(str(path))

    def corrupt(msg: str) -> JudgeInputError:
        return JudgeInputError(
            f"{msg}: corrupt scored row (not the last line, so not a torn write); "
            "move the file aside or fix the line"
        )

    rows: dict[str, RowInfo] = {}
    lines = jsonl.split_lines(text)
    for n, row in jsonl.parse_lines(lines, source=str(path), error=corrupt, where=lambda n: f"{path}:{n}"):
        if not isinstance(row.get("id"), str | int) or isinstance(row.get("id"), bool):
            raise corrupt(f"{path}:{n}: field 'id' missing or not a string/int")
        rows[str(row["id"])] = RowInfo.of(row)
    return rows, dropped


def canonical_rewrite(path: Path, order: dict[str, int]) -> bool:
    """Rewrite the append-only JSONL ``path`` (``scored.jsonl`` or ``usage.jsonl``) in canonical order:
    every id's first line in input order (``order``: id -> position in the samples file; ids not there come
    after, in file order), then the lines that superseded them (``--retry-failed``, ``--rescore-changed``)
    the same way, so the last line per id stays last. The lines themselves are copied byte for byte.

    Why a rewrite at the end rather than writing in order: rows finish in completion order, which depends
    on the executor and on timing, and each is appended + fsynced the moment it is done, so a kill loses
    nothing (a reorder buffer would hold finished rows back behind a slow or pending one, and lose them
    at a kill). The rewrite goes to a temporary file (fsynced) renamed over the old one, so a kill leaves
    the complete old file or the complete new one; the next run ends with the same rewrite. Hence every
    executor, and a killed-and-resumed run, ends with the same bytes. Streams the file (only offsets are
    held). Returns whether the file changed (False: already canonical, nothing written)."""
    if not path.exists():
        return False
    entries: list[tuple[tuple[int, int, int], int, int]] = []
    seen: Counter[str] = Counter()
    clean = True
    with open(path, "rb") as f:
        offset = 0
        for i, line in enumerate(f):
            n = len(line)
            if line.strip() and line.endswith(b"\n"):
                rid = str(json.loads(line)["id"])
                entries.append(((seen[rid], order.get(rid, len(order)), i), offset, n))
                seen[rid] += 1
            else:
                clean = False  # a blank line, or no newline at the end: normalised away
            offset += n
    ranked = sorted(entries)
    if clean and [e[1] for e in ranked] == [e[1] for e in entries]:
        return False
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for _, off, n in ranked:
            src.seek(off)
            dst.write(src.read(n))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)  # the rename itself survives a crash
    finally:
        os.close(dirfd)
    return True


def recover_scored(path: Path) -> tuple[set[str], int]:
    """Ids already written to ``scored.jsonl``; a torn last line (kill mid-write) is cut off. Returns (ids,
    bytes dropped)."""
    rows, dropped = scan_scored(path)
    return set(rows), dropped


def row_failed(row: dict[str, Any]) -> bool:
    """A failure worth judging again: row status ``failed``, or a requested dimension whose status is
    ``failed`` (its reward is then the mean of fewer dimensions)."""
    if row.get("status") != "scored":
        return True
    trace = row.get("trace") if isinstance(row.get("trace"), dict) else {}
    return any(
        isinstance(t := trace.get(d), dict)
        and t.get("status") == "failed"
        and t.get("error") != NOT_REQUESTED
        for d in DIMENSIONS
    )


def failed_ids(path: Path) -> set[str]:
    """Ids whose last line in ``scored.jsonl`` is a failure (`row_failed`); call after `recover_scored`."""
    if not path.exists():
        return set()
    rows, _ = scan_scored(path)
    return {rid for rid, info in rows.items() if info.failed}


def refresh_unparseable_cache(path: str | Path) -> RefreshingCache:
    """The response cache as ``--retry-failed`` sees it: a cached judge answer that does not parse counts as
    a miss, so that one call is made again (and its new answer replaces the old); every answer that parses is
    still served from the cache, so the successful sub-calls of a failed row are not paid twice."""
    return RefreshingCache(path, lambda kind, text: kind in OUTPUT_OF_KIND and not parse(kind, text).ok)


def changed_rows(
    index: dict[str, RowInfo],
    samples: list[dict[str, Any]],
    prompts: dict[str, dict[str, Any]],
    judge_fp: dict[str, Any],
) -> dict[str, list[str]]:
    """Finished rows this run would not have produced (another judge, prompts, options or text): id -> what
    differs. A finished row is reused only when its fingerprint matches."""
    changed: dict[str, list[str]] = {}
    for smp in samples:
        if (info := index.get(smp["id"])) is not None:
            want = row_fingerprint(judge_fp, prompts[smp["prompt_id"]], smp)
            if why := differences(info.fingerprint, want):
                changed[smp["id"]] = why
    return changed


def refuse_changed(scored_path: Path, changed: dict[str, list[str]], n_rows: int) -> None:
    """One line naming what changed, unless nothing did (``--rescore-changed`` judges them again instead)."""
    if changed:
        raise JudgeInputError(
            f"{scored_path}: {len(changed)} of {n_rows} finished row(s) were not produced by this "
            f"judge/prompts/options: {describe_mismatches(changed)}; pass --rescore-changed to judge them "
            "again (new lines are appended; readers keep the last line per id), or use another --out"
        )


class ScoredWriter:
    """Appends finished rows to ``scored.jsonl`` (flush + fsync each: a kill never loses or corrupts a
    finished row) and their accounting to ``usage.jsonl`` (flushed, not fsynced: not the resume log), and
    keeps ``index`` (last line per id) up to date. One writer: the event loop."""

    def __init__(self, out: Path, index: dict[str, RowInfo], executor: str) -> None:
        self.scored_path, self.usage_path = out / SCORED_FILE, out / USAGE_FILE
        self.index, self.executor = index, executor
        jsonl.repair_torn_tail(str(self.usage_path))  # a torn last line from a kill (accounting only)
        self._rows: IO[str] = open(self.scored_path, "a", encoding="utf-8")  # noqa: SIM115 - see close
        self._usage: IO[str] = open(self.usage_path, "a", encoding="utf-8")  # noqa: SIM115 - see close

    def usage(self, rec: dict[str, Any]) -> None:
        # before the row: a kill between the two leaves an extra usage line (harmless), never a row
        # without its usage
        self._usage.write(json.dumps({**rec, "executor": self.executor}, ensure_ascii=False) + "\n")
        self._usage.flush()

    def row(self, row: ScoredRow) -> None:
        self._rows.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.index[row["id"]] = RowInfo.of(row)  # type: ignore[arg-type]
        self._rows.flush()
        os.fsync(self._rows.fileno())

    def close(self) -> None:
        self._rows.close()
        self._usage.close()

    def finish(self, samples: list[dict[str, Any]]) -> None:
        """Rows were appended in completion order (kill-safe); end in the samples file's order."""
        order = {smp["id"]: i for i, smp in enumerate(samples)}
        canonical_rewrite(self.scored_path, order)
        canonical_rewrite(self.usage_path, order)


def one_value(values: Counter[Any], fallback: Any) -> Any:
    """The single value of a count table, a sorted list when there are several, ``fallback`` when none."""
    keys = [k for k in values if k is not None]
    if not keys:
        return fallback
    return keys[0] if len(keys) == 1 else sorted(map(str, keys))


def file_summary(rows: dict[str, RowInfo], judge_sha: str) -> dict[str, Any]:
    """What the rows actually in ``scored.jsonl`` (last line per id) are: statuses, judge models, prompt
    versions, and how many this run's judge produced (the rest: another judge/options, or unknown)."""
    fps = [r.fingerprint if isinstance(r.fingerprint, dict) else None for r in rows.values()]
    return {
        "rows": len(rows),
        "status": dict(Counter(str(r.status) for r in rows.values())),
        "failed_rows_or_dimensions": sum(r.failed for r in rows.values()),
        "judge_models": dict(Counter(str(r.judge_model) for r in rows.values())),
        "prompt_versions": dict(Counter(str(r.prompt_version) for r in rows.values())),
        "producers": {
            "this_run": sum(1 for f in fps if f and f.get("judge_sha256") == judge_sha),
            "other": sum(1 for f in fps if f and f.get("judge_sha256") != judge_sha),
            "unknown": sum(1 for f in fps if not f),
        },
    }


def done_ids_readonly(out: str) -> set[str]:
    """Ids in ``OUT/scored.jsonl`` without touching the file (``--dry-run`` writes nothing, not even the
    repair of a torn last line)."""
    from lr_jax.io import storage

    path = storage.join(out, SCORED_FILE) if out.startswith("gs://") else str(Path(out) / SCORED_FILE)
    if not storage.exists(path):
        return set()
    ids = set()
    for line in storage.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str | int):
            ids.add(str(row["id"]))
    return ids



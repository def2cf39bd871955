"""Public preference sets converted into our preference records: `run`, the library behind
``python -m lr_jax.data.import_prefs --input FILE [--input FILE ...] --out DIR`` (the CLI is `__main__`).

Reads JSONL (``.jsonl``, ``.json`` lines) or Parquet (``.parquet``) files whose rows have ``prompt``,
``chosen`` and ``rejected``, each either a string or a chat-message list (``[{"role": ..., "content": ...}]``,
as in UltraFeedback-binarized or HH-RLHF-style exports), and writes preference records
(`lr_jax.io.records`, the same TFRecord directory `judge.pairs` writes and the trainer reads).

Mapping (short-context preference data has no document):

- ``context`` = ``""``; ``query`` = the prompt text: a string as is, a message list as its turns before the
  answer (one turn: its content; several: ``"role: content"`` lines), system turns included;
- ``chosen`` / ``rejected`` = the answer text: a string as is, a message list as its last assistant turn
  (a list that repeats the prompt's turns first, the common layout, is fine: the prompt comes from
  ``prompt``, or, when the row has no ``prompt``, from the turns of ``chosen`` before its last assistant
  turn);
- ``prompt_id`` = the row's ``prompt_id`` / ``id`` when it has one, else ``"<file stem>-<row>"``;
- rewards: ``score_chosen`` / ``score_rejected`` when present (UltraFeedback), else 1 / 0; the per-dimension
  fields are NaN (not judged).

Deterministic: rows in input order (files in the order given), so the same input gives the same records and
the same ``fingerprint`` (a re-run with the same input is a no-op, `records.write_pairs`). Bad input stops
with one line naming the file, the line (JSONL, from 1) or row (Parquet, from 0) and the field:
``error: prefs.jsonl: line 7: field 'chosen': must be a string or a list of chat messages, got int``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lr_jax.data.errors import DataError
from lr_jax.io.outputs import check_output_dir
from lr_jax.options import option, validate

FORMATS = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class ImportOptions:
    """How `run` writes the records: the flags of ``python -m lr_jax.data.import_prefs`` besides ``--input``
    (`lr_jax.options`: flags, ``--help`` and checks come from these fields)."""

    out: str = option(help="records directory to write (local or gs://)")
    num_shards: int = option(1, ge=1, le=2**31 - 1,
                             help="record files (a multiple or divisor of the trainer's data.batch_size)")
    compression: str | None = option(None, choices=("GZIP",), help="compress the record files")
    overwrite: bool = option(False, help="replace records made from other input")

    def __post_init__(self) -> None:
        validate(self, DataError)


def _rows(path: str) -> Iterator[tuple[str, Any]]:
    """("line N" / "row N", row) of one input file; JSONL (lines from 1) or Parquet (rows from 0) by
    extension."""
    ext = os.path.splitext(path)[1].lower()
    if "://" not in path and os.path.isdir(path):
        raise DataError(f"{path}: is a directory; --input takes a JSONL or Parquet file")
    if ext not in FORMATS:
        raise DataError(f"{path}: unknown format {ext or '(no extension)'!r}; expected one of "
                        f"{', '.join(FORMATS)}")
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        from lr_jax.io import storage

        try:
            if "://" in path:
                import io

                table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
            else:
                table = pq.read_table(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read Parquet: {e}") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"row {i}", row
        return
    from lr_jax.io import jsonl

    for lineno, row in jsonl.read_jsonl(path, error=DataError):
        yield f"line {lineno}", row


def _messages(value: list[Any], where: str) -> list[tuple[str, str]]:
    out = []
    for k, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)):
            raise DataError(f"{where}: message {k} must be an object with string 'role' and 'content', got "
                            f"{json.dumps(m, default=str)[:120]}")
        out.append((m["role"], m["content"]))
    return out


def _prompt_text(turns: list[tuple[str, str]]) -> str:
    if len(turns) == 1:
        return turns[0][1]
    return "\n".join(f"{role}: {content}" for role, content in turns)


def _answer(value: Any, where: str) -> tuple[str, list[tuple[str, str]]]:
    """(answer text, the turns before it) of a chosen / rejected field."""
    if isinstance(value, str):
        return value, []
    if isinstance(value, list):
        turns = _messages(value, where)
        last = max((k for k, (role, _) in enumerate(turns) if role == "assistant"), default=None)
        if last is None:
            raise DataError(f"{where}: a message list with no assistant message")
        return turns[last][1], turns[:last]
    raise DataError(f"{where}: must be a string or a list of chat messages, got {type(value).__name__}")


def _score(row: dict[str, Any], key: str, default: float, where: str) -> float:
    v = row.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise DataError(f"{where}: field {key!r} must be a finite number, got {v!r}")
    return float(v)


def convert_row(row: Any, *, source: str, index: int, stem: str, label: str = "") -> dict[str, Any]:
    """One public preference row (the `index`-th of its file, from 0) -> one of our preference records
    (every field of `records.FIELDS`)."""
    from lr_jax.io.records import DIMENSIONS

    where = f"{source}: {label or f'row {index}'}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise DataError(f"{where}: missing field {key!r}")
    chosen, chosen_turns = _answer(row["chosen"], f"{where}: field 'chosen'")
    rejected, _ = _answer(row["rejected"], f"{where}: field 'rejected'")
    prompt = row.get("prompt")
    if prompt is None:
        if not chosen_turns:
            raise DataError(f"{where}: missing field 'prompt' ('chosen' holds no turns before its answer)")
        query = _prompt_text(chosen_turns)
    elif isinstance(prompt, str):
        query = prompt
    elif isinstance(prompt, list):
        turns = _messages(prompt, f"{where}: field 'prompt'")
        if not turns:
            raise DataError(f"{where}: field 'prompt': an empty message list")
        query = _prompt_text(turns)
    else:
        raise DataError(f"{where}: field 'prompt': must be a string or a list of chat messages, got "
                        f"{type(prompt).__name__}")
    if not query.strip():
        raise DataError(f"{where}: field 'prompt': empty")
    if not chosen.strip():
        raise DataError(f"{where}: field 'chosen': empty answer")
    pid = row.get("prompt_id", row.get("id"))
    if pid is None:
        pid = f"{stem}-{index}"
    elif isinstance(pid, bool) or not isinstance(pid, str | int):
        raise DataError(f"{where}: field 'prompt_id' must be a string or integer, got {type(pid).__name__}")
    rec: dict[str, Any] = {"prompt_id": str(pid), "context": "", "query": query, "chosen": chosen,
                           "rejected": rejected,
                           "chosen_reward": _score(row, "score_chosen", 1.0, where),
                           "rejected_reward": _score(row, "score_rejected", 0.0, where)}
    for side in ("chosen", "rejected"):
        for d in DIMENSIONS:
            rec[f"{side}_{d}"] = None  # not judged: NaN in the records
    return rec


def convert(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Every input row as a record, files in the given order, rows in file order."""
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        for i, (label, row) in enumerate(_rows(path)):
            yield convert_row(row, source=path, index=i, stem=stem, label=label)


def fingerprint(paths: list[str]) -> str:
    """Of the inputs' bytes and names: a re-run with the same files is a no-op."""
    from lr_jax.io import storage

    h = hashlib.sha256(b"import_prefs-v1")
    for p in paths:
        h.update(p.encode() + b"\0")
        try:
            h.update(hashlib.sha256(storage.read_bytes(p)).digest())
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: cannot read: {e}") from None
    return h.hexdigest()[:32]


def run(paths: Sequence[str], out: str, *, num_shards: int = 1, compression: str | None = None,
        overwrite: bool = False) -> dict[str, Any]:
    """Convert `paths` and write the records to `out`; returns the written metadata. The options and `out`
    are checked before any input is read (one `DataError` line)."""
    from lr_jax.io import records

    paths = list(paths)
    ImportOptions(out=out, num_shards=num_shards, compression=compression, overwrite=overwrite)
    if not paths:
        raise DataError("--input: no input file given")
    check_output_dir(out, "--out", error=DataError)

    seen: set[str] = set()
    recs = []
    for rec in convert(paths):
        recs.append(rec)
        seen.add(rec["prompt_id"])
    if not recs:
        raise DataError(f"{', '.join(paths)}: no rows")
    meta = {"description": "short-context preference pairs imported by lr_jax.data.import_prefs (not judged)",
            "sources": paths, "fingerprint": fingerprint(paths),
            "counts": {"pairs": len(recs), "prompts": len(seen)}}
    try:
        return records.write_pairs(recs, out, num_shards=num_shards, compression=compression,
                                   metadata=meta, overwrite=overwrite)
    except records.RecordError as e:  # names `out` itself
        raise DataError(str(e)) from None

"""The inputs of ``judge.score``: the prompts file (LongReward release format) and the samples file
(``lr_jax.sample`` output), checked line by line; a bad line is one `JudgeInputError` naming file:line and
field."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from judge.schema import JudgeInputError
from lr_jax.io import jsonl


def _read_jsonl(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-empty line of a local or gs:// JSONL file."""
    return jsonl.read_jsonl(str(path), error=JudgeInputError, where=lambda n: f"{path}:{n}")


def _field(
    path: str | Path, n: int, obj: dict[str, Any], name: str, types: tuple[type, ...], required: bool = True
) -> Any:
    return jsonl.field(obj, name, types, f"{path}:{n}", error=JudgeInputError, required=required)


def load_prompts(path: str | Path) -> dict[str, dict[str, Any]]:
    """Prompts JSONL -> {id: row}; ``id`` str|int, ``context`` and ``query`` str (LongReward release)."""
    out: dict[str, dict[str, Any]] = {}
    for n, obj in _read_jsonl(path):
        pid = str(_field(path, n, obj, "id", (str, int)))
        _field(path, n, obj, "context", (str,))
        _field(path, n, obj, "query", (str,))
        _field(path, n, obj, "answer", (str,), required=False)
        if pid in out:
            raise JudgeInputError(f"{path}:{n}: field 'id': duplicate prompt id {pid!r}")
        out[pid] = {**obj, "id": pid}
    if not out:
        raise JudgeInputError(f"{path}: no prompts (the file is empty)")
    return out


def load_samples(path: str | Path, prompts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples JSONL -> rows; every ``prompt_id`` must name a prompt and every ``id`` must be unique."""
    out, seen = [], set()
    for n, obj in _read_jsonl(path):
        sid = str(_field(path, n, obj, "id", (str, int)))
        pid = str(_field(path, n, obj, "prompt_id", (str, int)))
        _field(path, n, obj, "query", (str,))
        _field(path, n, obj, "response", (str,))
        _field(path, n, obj, "sampler", (dict,), required=False)
        if pid not in prompts:
            raise JudgeInputError(f"{path}:{n}: field 'prompt_id': {pid!r} is not in the prompts file")
        if sid in seen:
            raise JudgeInputError(f"{path}:{n}: field 'id': duplicate sample id {sid!r}")
        seen.add(sid)
        out.append({**obj, "id": sid, "prompt_id": pid, "sampler": obj.get("sampler") or {}})
    if not out:
        raise JudgeInputError(f"{path}: no samples (the file is empty); nothing to score")
    return out

"""The sampler's files: the Prompts JSONL it reads and the Samples JSONL it appends to (and resumes from)."""

from __future__ import annotations

import codecs
import os
import sys
from pathlib import Path
from typing import Any

from lr_jax.io import jsonl, outputs
from lr_jax.sample.options import SampleError


def check_output_file(path: str, prompts: str) -> Path:
    """`--out` as a Path: a local file we can append to (or create), not the prompts file; checked first
    (`lr_jax.io.outputs`, the one check of output paths)."""
    outputs.check_output_file(path, "--out", local_only=True, inputs={"--prompts": prompts},
                              error=SampleError)
    return Path(path)


def load_prompts(path: str) -> list[dict[str, Any]]:
    """Prompts JSONL -> rows with ``id`` as str; ``id`` str|int, ``context`` and ``query`` str, ids unique."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, obj in jsonl.read_jsonl(path, error=SampleError, where=lambda n: f"{path}:{n}"):
        for name, types in (("id", (str, int)), ("context", (str,)), ("query", (str,))):
            if name not in obj:
                raise SampleError(f"{path}:{n}: field {name!r} is missing")
            v = obj[name]
            if not isinstance(v, types) or isinstance(v, bool):
                want = " or ".join(t.__name__ for t in types)
                raise SampleError(f"{path}:{n}: field {name!r} must be {want}, got {type(v).__name__}")
        pid = str(obj["id"])
        if pid in seen:
            raise SampleError(f"{path}:{n}: field 'id': duplicate prompt id {pid!r}")
        if not obj["context"].strip() and not obj["query"].strip():
            # The policy would see only the chat template: such rows are a broken export, not a question.
            raise SampleError(f"{path}:{n}: fields 'context' and 'query' are both empty")
        seen.add(pid)
        out.append({"id": pid, "context": obj["context"], "query": obj["query"]})
    if not out:
        raise SampleError(f"{path}: no prompts (the file has no records)")
    return out


def recover_output(path: Path, sampler: dict[str, Any]) -> tuple[set[str], int]:
    """Ids already in the Samples file; a torn last line (kill mid-write) is cut off.

    Returns (ids, bytes dropped). A row written with other sampler settings is an error: mixing them would
    silently change what the judge compares. The file is only cut after its complete lines have been read
    as Samples rows and its last line looks like a torn one: an `--out` that names some other file (binary,
    or JSONL of another kind) is an error and is left byte for byte as it was.
    """
    if not path.exists():
        return set(), 0
    data = path.read_bytes()
    keep = jsonl.complete_prefix(data)
    try:
        text = data[:keep].decode("utf-8")
        # A kill can cut a multi-byte character in two; final=False accepts that, not invalid bytes.
        codecs.getincrementaldecoder("utf-8")().decode(data[keep:], final=False)
    except UnicodeDecodeError as e:
        raise SampleError(f"--out {path}: not UTF-8 text ({e.reason}); not a Samples JSONL file?") from None
    ids: set[str] = set()
    lines = jsonl.split_lines(text)
    where = lambda n: f"{path}:{n}"
    for n, row in jsonl.parse_lines(lines, source=str(path), error=SampleError, where=where):
        if not isinstance(row.get("id"), str):
            raise SampleError(f"{path}:{n}: field 'id' missing or not a string (not a Samples file?)")
        if row.get("sampler") != sampler:
            raise SampleError(
                f"{path}:{n}: field 'sampler' is {row.get('sampler')!r}, this run uses {sampler!r}; "
                "write to a new --out file"
            )
        ids.add(row["id"])
    tail = data[keep:]
    if tail.strip() and not tail.lstrip().startswith(b"{"):
        n = text.count("\n") + 1
        raise SampleError(f"{path}:{n}: unterminated last line is not a torn Samples row "
                          "(not a Samples file?)")
    dropped = 0
    if tail:
        _, dropped = jsonl.repair_torn_tail(str(path))
    return ids, dropped


def append_fsync(path: Path, lines: list[str]) -> None:
    """Append whole lines and fsync: a kill loses at most the batch being written (its torn tail is cut on
    the next run)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())


def pending(args: Any, out: Path, sampler: dict[str, Any],
            stats: Any) -> list[tuple[dict[str, Any], list[int]]]:
    """(prompt, its missing sample indices) for every prompt of `args.prompts` with rows still to write to
    `out` (resumed: a torn last line is cut and said once); fills `stats`' prompts / already_done /
    torn_bytes_dropped. Shared by the JAX sampler and the engine path, so both resume alike."""
    prompts = load_prompts(args.prompts)
    stats.prompts = len(prompts)
    done, stats.torn_bytes_dropped = recover_output(out, sampler)
    if stats.torn_bytes_dropped:
        print(f"lr_jax.sample: dropped a torn last line ({stats.torn_bytes_dropped} bytes) from {out}",
              file=sys.stderr)
    todo = []
    for p in prompts:
        missing = [k for k in range(args.num_samples) if f"{p['id']}-{k}" not in done]
        if missing:
            todo.append((p, missing))
    stats.already_done = len(prompts) - len(todo)
    return todo

"""JSONL records, one JSON object per line, from a local path or gs:// (no JAX; the judge imports this).

One reader for prompts, samples and scored files, so every caller treats lines the same way:

- lines end at ``"\\n"`` only. ``str.splitlines`` would also split at U+2028/U+2029/U+0085, which
  ``json.dumps(..., ensure_ascii=False)`` leaves raw inside strings, and so break a valid record in two;
- line numbers are 1-based physical lines; blank (whitespace-only) lines are skipped;
- a line that is not JSON, or not a JSON object, raises the caller's project exception naming the file and
  line: ``"<file>: line <n>: invalid JSON (<reason> at column <c>)"``;
- a *torn tail* — an unterminated last line, what a writer killed mid-append leaves — is an error by default;
  with ``torn_tail="skip"`` an unterminated last line that does not parse is skipped (a complete record
  without its final newline, as hand-written files often end, is still read). A writer that resumes by
  appending cuts the torn bytes first: `complete_prefix`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from lr_jax.errors import LrJaxError
from lr_jax.io import storage

ErrorFactory = Callable[[str], Exception]
Where = Callable[[int], str]
TornTail = Literal["error", "skip"]


class JsonlError(LrJaxError, ValueError):
    """A JSONL file that cannot be read; the message names the file and line."""


def complete_prefix(data: bytes) -> int:
    """Length of the newline-terminated part of `data` (everything but a torn last line)."""
    return data.rfind(b"\n") + 1


def repair_torn_tail(path: str) -> tuple[str, int]:
    """Cut a torn last line (a writer killed mid-line) off the local append-only file `path`, durably.

    Returns (the text of its complete lines, bytes dropped); ("", 0) when the file does not exist. Resumable
    writers call this before appending, so a new row never glues onto a fragment.
    """
    if not os.path.exists(path):
        return "", 0
    with open(path, "rb") as f:
        data = f.read()
    keep = complete_prefix(data)
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return data[:keep].decode("utf-8"), len(data) - keep


def iter_lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 text file (local or gs://), each with its ``"\\n"`` if it had one.

    Local files are streamed; gs:// objects are read whole. Raises FileNotFoundError / UnicodeDecodeError /
    OSError as the file system does (callers word these errors themselves).
    """
    if storage.is_gcs(path):
        yield from split_lines(storage.read_text(path))
        return
    with open(path, encoding="utf-8", newline="") as f:
        # Iterating a file object splits at "\n" (and, with newline="", at a lone "\r" too; JSON escapes
        # "\r" inside strings, so a raw one only ever ends a line, as for universal newlines).
        yield from f


def split_lines(text: str) -> Iterator[str]:
    """`text` split after each ``"\\n"`` only (unlike ``str.splitlines``)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end + 1]
        start = end + 1


def parse_lines(lines: Iterable[str], *, source: str, error: ErrorFactory = JsonlError,
                where: Where | None = None,
                torn_tail: TornTail = "error") -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of `lines` (as from `iter_lines`).

    `error(message)` builds the exception to raise; `where(n)` names the location in messages
    (default ``"<source>: line <n>"``).
    """
    loc = where or (lambda n: f"{source}: line {n}")
    pending: tuple[int, str] | None = None  # one line of look-ahead: only the last line may be torn
    n = 0
    for n, line in enumerate(lines, start=1):
        if pending is not None:
            yield _parse(*pending, loc, error)
        pending = (n, line) if line.strip() else None
    if pending is None:
        return
    n, line = pending
    if torn_tail == "skip" and not line.endswith(("\n", "\r")):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return  # torn write: the record was never completed
        if isinstance(obj, dict):
            yield n, obj
            return
    yield _parse(n, line, loc, error)


def _parse(n: int, line: str, loc: Where, error: ErrorFactory) -> tuple[int, dict[str, Any]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"{loc(n)}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise error(f"{loc(n)}: expected a JSON object, got {type(obj).__name__}")
    return n, obj


def read_jsonl(path: str, *, error: ErrorFactory = JsonlError, where: Where | None = None,
               torn_tail: TornTail = "error") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of a local or gs:// JSONL file, streamed.

    A missing file raises ``error("<path>: file not found")``, bad UTF-8 ``error("<path>: not UTF-8
    text (...)")``, another OS error ``error("<path>: cannot read: ...")``; bad lines as in `parse_lines`.
    """
    try:
        yield from parse_lines(iter_lines(path), source=path, error=error, where=where, torn_tail=torn_tail)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        n = _first_non_utf8_line(path) if where is not None else None  # callers that name lines get one
        raise error(f"{path if n is None else where(n)}: not UTF-8 text ({e.reason})") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a JSONL file") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None


def _first_non_utf8_line(path: str) -> int | None:
    """The 1-based number of the first line of a local file that is not UTF-8 (None for gs:// or none)."""
    if storage.is_gcs(path):
        return None
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return None


def field(obj: dict[str, Any], name: str, types: tuple[type, ...], where: str, *,
          error: ErrorFactory = JsonlError, required: bool = True, none_is_missing: bool = False) -> Any:
    """`obj[name]` checked against `types` (bool never counts as int/float); a missing (or, with
    `none_is_missing`, null) field is None when not `required`. Errors read ``<where>: field 'name' ...``."""
    if name not in obj or (none_is_missing and obj[name] is None):
        if required:
            raise error(f"{where}: field {name!r} is missing")
        return None
    v = obj[name]
    if not isinstance(v, types) or isinstance(v, bool):
        want = " or ".join(t.__name__ for t in types)
        raise error(f"{where}: field {name!r} must be {want}, got {type(v).__name__}")
    return v


def read_json_object(path: str | os.PathLike[str], *, error: ErrorFactory = JsonlError) -> dict[str, Any]:
    """A local JSON file holding one object (config.json, generation_config.json, ...); invalid JSON,
    non-UTF-8 text or another JSON type is one `error` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data

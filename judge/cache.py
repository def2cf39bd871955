"""Persistent, content-addressed cache of judge answers (SQLite in WAL mode). It doubles as the resume log.

Key = SHA-256 of the endpoint, model, messages, sampling parameters (incl. the retry index), response schema
and prompt-template version, so a change in any of them is a miss and nothing stale is ever reused. Only the
event loop's thread writes (one connection, commit per answer), so concurrent tasks cannot corrupt it; WAL
keeps a committed answer across a SIGKILL. The API key is never part of the key or the stored request.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from judge.answers import Completion


def cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, kind TEXT, request TEXT, text TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL, cached_tokens INTEGER DEFAULT 0)"
        )
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(answers)")}
        if "cached_tokens" not in cols:  # a cache written before prompt-cache accounting: same answers
            self._db.execute("ALTER TABLE answers ADD COLUMN cached_tokens INTEGER DEFAULT 0")

    def get(self, key: str) -> Completion | None:
        """The answer with the usage recorded when it was paid for (prompt-cached tokens as the server
        reported them then), or None."""
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens, cached_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return Completion(row[0], int(row[1]), int(row[2]), int(row[3] or 0)) if row else None

    def put(
        self,
        key: str,
        kind: str,
        request: dict[str, Any],
        text: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
    ) -> None:
        """Store one answer; ``cached_tokens``: prompt tokens the server read from its prompt cache."""
        self._db.execute(
            "INSERT OR REPLACE INTO answers (key, kind, request, text, prompt_tokens, completion_tokens, "
            "created, cached_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                kind,
                json.dumps(request, ensure_ascii=False),
                text,
                prompt_tokens,
                completion_tokens,
                time.time(),
                cached_tokens,
            ),
        )

    def has(self, key: str) -> bool:
        """Whether an answer is stored under ``key`` (parseable or not)."""
        return self._db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class RefreshingCache(ResponseCache):
    """The response cache as ``--retry-failed`` sees it: an answer for which ``unusable(kind, text)`` holds
    (one that does not parse) counts as a miss, so that one call is made again (and its new answer replaces
    the old); every other answer is still served from the cache, so the successful calls of a failed row
    are not paid twice. ``refreshed`` counts the answers asked again."""

    def __init__(self, path: str | Path, unusable: Callable[[str, str], bool]) -> None:
        super().__init__(path)
        self.unusable = unusable
        self.refreshed = 0

    def get(self, key: str) -> Completion | None:
        row = self._db.execute(
            "SELECT kind, text, prompt_tokens, completion_tokens, cached_tokens FROM answers WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        kind, text, pt, ct, cached = row
        if self.unusable(kind, text):
            self.refreshed += 1
            return None
        return Completion(text, int(pt), int(ct), int(cached or 0))

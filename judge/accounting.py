"""What judge calls cost: per-answer `Usage` and the client's running `ClientStats` (paid, cached, batched,
retries). `judge.prices` turns these into money; ``judge.score`` writes them to ``summary.json``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # of ``prompt_tokens``: what the server said it read from its prompt (prefix) cache when the answer was
    # paid for. Depends on timing and executor, so it is kept out of ``scored.jsonl`` (`as_dict`) and goes
    # to ``usage.jsonl`` (`with_cached`)
    cached_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens

    def as_dict(self) -> dict[str, int]:
        """The row trace's usage (`judge.schema.Usage`): the same bytes whatever executor or timing."""
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    def with_cached(self) -> dict[str, int]:
        return {**self.as_dict(), "cached_tokens": self.cached_tokens}


@dataclass
class ClientStats:
    paid: dict[str, Usage] = field(default_factory=dict)  # per dimension, calls that went to the server
    # per dimension: prompt tokens of paid calls the server said it read from its prompt (prefix) cache
    cached_tokens: dict[str, int] = field(default_factory=dict)
    # per dimension: the recorded usage of answers served by the response cache (or shared in flight): what
    # those calls would have cost
    hits: dict[str, Usage] = field(default_factory=dict)
    # per dimension: the part of ``paid`` / ``cached_tokens`` answered through a batch executor (priced at
    # the batch discount)
    batched: dict[str, Usage] = field(default_factory=dict)
    batched_cached_tokens: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    transport_retries: int = 0  # counted by `judge.transport.Transport`
    parse_retries: int = 0
    started: float = field(default_factory=time.monotonic)

    def total_paid(self) -> Usage:
        u = Usage()
        for v in self.paid.values():
            u.add(v)
        return u

"""Counters of what the pipeline did to the data: truncations and skips (with record ids), JSON-safe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_IDS_PER_REASON = 100  # ids kept per skip reason (counts are exact; the id list is a sample)

SKIP_REASONS = (
    "empty_response",  # chosen / rejected / answer is empty or whitespace
    "empty_prompt",  # template produced no prompt tokens
    "response_too_long",  # a response exceeds max_response_len
    "does_not_fit",  # the un-truncatable part (template, query, responses) exceeds the row or max_prompt_len
)


@dataclass
class DataStats:
    """Exact counts; `skipped_ids` keeps the first `MAX_IDS_PER_REASON` prompt ids per reason."""

    examples_seen: int = 0
    examples_packed: int = 0
    truncated_examples: int = 0
    truncated_tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)

    def record_skip(self, reason: str, example_id: str) -> None:
        self.examples_seen += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        ids = self.skipped_ids.setdefault(reason, [])
        if len(ids) < MAX_IDS_PER_REASON:
            ids.append(str(example_id))

    def record_packed(self, truncated_tokens: int) -> None:
        self.examples_seen += 1
        self.examples_packed += 1
        if truncated_tokens:
            self.truncated_examples += 1
            self.truncated_tokens += int(truncated_tokens)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples_seen": self.examples_seen,
            "examples_packed": self.examples_packed,
            "truncated_examples": self.truncated_examples,
            "truncated_tokens": self.truncated_tokens,
            "skipped": dict(self.skipped),
            "skipped_ids": {k: list(v) for k, v in self.skipped_ids.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataStats:
        return cls(
            examples_seen=int(d["examples_seen"]),
            examples_packed=int(d["examples_packed"]),
            truncated_examples=int(d["truncated_examples"]),
            truncated_tokens=int(d["truncated_tokens"]),
            skipped={k: int(v) for k, v in d["skipped"].items()},
            skipped_ids={k: [str(x) for x in v] for k, v in d["skipped_ids"].items()},
        )

    def summary(self) -> str:
        """One line for logs, e.g. ``packed 98/100, truncated 3 (1200 tokens), skipped 2 {...}``."""
        skips = ", ".join(f"{k}={v} (e.g. {self.skipped_ids.get(k, [])[:3]})"
                          for k, v in self.skipped.items())
        head = (f"packed {self.examples_packed}/{self.examples_seen}, truncated {self.truncated_examples} "
                f"({self.truncated_tokens} tokens), skipped {self.num_skipped}")
        return head + (f": {skips}" if skips else "")

"""The fake server's fault settings (`Faults`): what goes wrong, deterministically by request number, and
how its prompt cache and Batch API behave. ``--config`` / ``POST /control`` take a JSON object of these
fields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Faults:
    latency_s: float = 0.0  # added to every chat request
    fail_429_first: int = 0  # the first N chat requests get 429
    error_429_every: int = 0  # every k-th chat request gets 429 (0: never)
    retry_after_s: float = 0.2  # sent as Retry-After (and retry-after-ms) with each 429
    error_500_every: int = 0
    hang_every: int = 0  # every k-th request sleeps hang_s before answering (longer than the client timeout)
    hang_s: float = 5.0
    garble_every: int = 0  # every k-th answer is unparseable prose
    truncate_every: int = 0  # every k-th answer is cut in half (finish_reason "length")
    garble_kinds: list[str] = field(
        default_factory=list
    )  # these prompt kinds are always answered with garbage
    json_schema: bool = True  # False: reject response_format like a server without structured output
    rpm_limit: int = 0  # server-side requests per minute (0: none); excess gets 429
    require_key: str = ""  # non-empty: 401 unless "Authorization: Bearer <require_key>"
    # malformed 200 answers (see `_bad_body`): one of BAD_BODIES; every k-th chat request; only these kinds
    bad_body: str = ""
    bad_body_every: int = 1
    bad_body_kinds: list[str] = field(default_factory=list)
    garble_document_with: str = ""  # info_extract answers for a document part containing this are garbled
    # Batch API (see the "Files and Batches" section): a batch stays in_progress for batch_delay_s after it
    # is created; batch_fail ends the next batches as "failed" (no output); batch_expire as "expired" with
    # only the first half of the requests answered (the rest in the error file, code batch_expired)
    batch_delay_s: float = 0.0
    batch_fail: bool = False
    batch_expire: bool = False
    # this share of a batch's request lines is answered with status 500 (each line's fate is drawn afresh
    # every time it is asked, from a hash of its custom_id and how often it was asked: deterministic, and a
    # re-asked line can succeed); 0: none
    batch_500_fraction: float = 0.0
    # prompt (prefix) caching: usage.prompt_tokens_details.cached_tokens counts the longest prefix of the
    # request's messages already seen, in steps of prefix_cache_step characters from prefix_cache_min chars
    prefix_cache: bool = True
    prefix_cache_min: int = 1024
    prefix_cache_step: int = 128
    # how many prefix blocks (one per prefix_cache_step characters) the cache holds, least recently used
    # evicted first, like a vLLM/SGLang KV-block pool or a provider's cache that forgets idle prefixes;
    # 0: unlimited (every prefix ever seen stays cached)
    prefix_cache_blocks: int = 0
    # as an inference engine (sampling requests, `judge.fake_server.policy`): the model names served (a
    # request for another gets vLLM's 404; empty: any name), whether ``n`` > 1 is accepted (False: 400),
    # and the longest prompt in characters (longer: vLLM's 400 about the maximum context length; 0: any)
    served_models: list[str] = field(default_factory=list)
    accept_n: bool = True
    max_prompt_chars: int = 0




BAD_BODIES = (
    "truncated_json", "wrong_content_type", "empty_body", "error_object", "no_choices", "bad_content"
)


def garbles(f: Faults, kind: str, user: str) -> bool:
    """Whether this info_extract question is about the one document part marked ``garble_document_with``
    (a deterministic failure of one chunk's extraction, whatever the order of requests)."""
    return kind == "info_extract" and bool(f.garble_document_with) and f.garble_document_with in user


def wants_bad_body(f: Faults, n: int, kind: str) -> bool:
    """Whether chat request number ``n`` of prompt kind ``kind`` gets the malformed answer ``f.bad_body``."""
    if not f.bad_body or (f.bad_body_kinds and kind not in f.bad_body_kinds):
        return False
    return n % max(1, f.bad_body_every) == 0

"""The fake server's state (counters, files, batches, the prompt cache) and the pieces of an answer every
endpoint shares: the usage object and the prompt (prefix) cache."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict, deque
from typing import Any

from judge.chunking import approx_tokens, detect_lang
from judge.fake_server.faults import Faults


class ServerState:
    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.by_kind: Counter[str] = Counter()  # 200 answers per kind
        self.attempts_by_kind: Counter[str] = Counter()
        self.status: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()  # request-body hash -> 200 answers (duplicates = paid twice)
        self.bodies: dict[str, dict[str, Any]] = {}  # body hash -> the request (GET /requests/<hash>)
        self.temperatures: Counter[str] = Counter()
        self.by_lang: Counter[str] = Counter()  # 'kind:en' / 'kind:zh' by the prompt's language
        self.auth_ok = 0
        self.window: deque[float] = deque()
        self.embeddings = 0
        self.tokens = 0
        self.cached_tokens = 0
        # hashes of message prefixes seen (prompt caching), least recently used first
        self.prefixes: OrderedDict[str, None] = OrderedDict()
        self.files: dict[str, dict[str, Any]] = {}  # id -> {"meta": file object, "data": bytes}
        self.batches: dict[str, dict[str, Any]] = {}  # id -> batch object (+ private "_due" time)
        self.batch_asks: Counter[str] = Counter()  # batch line custom_id -> times asked (batch_500_fraction)
        self.batch_stats: Counter[str] = Counter()  # created / retrieved / completed / failed / expired

    def count_answer(self, kind: str, body_hash: str, req: dict[str, Any], system: str, tokens: int,
                     cached: int) -> None:
        """Account one 200 answer (online or inside a batch); the caller holds `lock`."""
        self.by_kind[kind] += 1
        self.answered[body_hash] += 1
        self.bodies.setdefault(body_hash, req)
        self.temperatures[str(req.get("temperature"))] += 1
        self.by_lang[f"{kind}:{detect_lang(system)}"] += 1
        self.tokens += tokens
        self.cached_tokens += cached



def usage_object(pt: int, ct: int, cached: int) -> dict[str, Any]:
    """An OpenAI usage object; cached prompt tokens as OpenAI and vLLM report them."""
    return {
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "total_tokens": pt + ct,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def cached_prefix_tokens(st: ServerState, messages: list[dict[str, Any]]) -> int:
    """Prompt caching like a real server's: the tokens of the longest prefix of this request's messages
    (in ``prefix_cache_step``-character steps, from ``prefix_cache_min`` characters) that an earlier request
    already had. Deterministic given the order of requests; every prefix of this one is remembered (the
    least recently used are forgotten beyond ``prefix_cache_blocks``)."""
    f = st.faults
    if not f.prefix_cache:
        return 0
    text = "".join(f"<{m.get('role')}>{m.get('content', '')}" for m in messages)
    step, lo = max(1, f.prefix_cache_step), max(1, f.prefix_cache_min)
    h, best, seen = hashlib.sha256(), 0, []
    for end in range(step, len(text) + 1, step):
        h.update(text[end - step : end].encode())
        if end >= lo:
            seen.append((end, h.hexdigest()))
    with st.lock:
        for end, d in seen:
            if d in st.prefixes:
                best = end
        for _, d in seen:  # this request's prefixes are now the most recently used
            st.prefixes[d] = None
            st.prefixes.move_to_end(d)
        while f.prefix_cache_blocks and len(st.prefixes) > f.prefix_cache_blocks:
            st.prefixes.popitem(last=False)
    if not best:
        return 0
    # tokens of the cached characters, never more than the prompt's own count
    return min(approx_tokens(text[:best]), sum(approx_tokens(m.get("content", "")) for m in messages))

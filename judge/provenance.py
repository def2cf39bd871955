"""What produced a scored row, so a re-run never reuses a row made by another judge, prompt or input.

Every row `judge.score` writes carries ``trace.fingerprint``:

- ``judge``: the judge model, the endpoint (scheme, host, port and path only: no userinfo, query or key),
  the prompt-template version and the scorer options that change what is asked or how it is scored
  (temperature, max tokens, seed, structured mode, chunk sizes, top-k, max statements, retrieval, embedding
  model and endpoint, tokenizer, dimensions); ``judge_sha256`` hashes it;
- ``context_sha256``, ``query_sha256``, ``response_sha256``: the prompt's context and query and the
  response as the judge saw them;
- ``sha256``: all of the above.

Options that only change how hard or how fast we try (concurrency, rate limits, timeouts, attempts, retry
budget, parse retries, retry temperature, item deadline) are left out: changing them must not invalidate
finished rows. A row without a fingerprint (written before fingerprints existed) has an unknown producer.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

# JudgeConfig / ScoreOptions fields that determine the judge's answers and the scores made from them
JUDGE_FIELDS = ("temperature", "max_tokens", "seed", "structured", "prompt_layout")
SCORER_FIELDS = (
    "retrieval_chunk_tokens",
    "top_k",
    "completeness_chunk_tokens",
    "max_statements",
    "dimensions",
    "retrieval",
    "embedding_model",
)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hash_obj(obj: Any) -> str:
    return _sha(json.dumps(obj, sort_keys=True, ensure_ascii=False))


def public_endpoint(base_url: str) -> str:
    """``scheme://host:port/path`` of an endpoint: userinfo, query and fragment (where a credential could
    hide) are dropped."""
    u = urlparse(base_url)
    host = f"{u.hostname}:{u.port}" if u.port else str(u.hostname)
    return f"{u.scheme}://{host}{u.path.rstrip('/')}"


def judge_fingerprint(
    cfg: Any,
    opts: Any,
    prompt_version: str,
    *,
    tokenizer: str | None = None,
    embedding_base_url: str | None = None,
) -> dict[str, Any]:
    """The judge side of a fingerprint from a `JudgeConfig` and `ScoreOptions`."""
    options: dict[str, Any] = {k: getattr(cfg, k) for k in JUDGE_FIELDS}
    options.update({k: getattr(opts, k) for k in SCORER_FIELDS})
    options["dimensions"] = list(options["dimensions"])
    options["tokenizer"] = tokenizer
    options["embedding_endpoint"] = public_endpoint(embedding_base_url) if embedding_base_url else None
    return {
        "model": cfg.model,
        "endpoint": public_endpoint(cfg.base_url),
        "prompt_version": prompt_version,
        "options": options,
    }


def judge_digest(judge: Mapping[str, Any]) -> str:
    """``judge_sha256``: the hash of a `judge_fingerprint`."""
    return _hash_obj(judge)


def row_fingerprint(judge: Mapping[str, Any], prompt: Mapping[str, Any], sample: Mapping[str, Any]) -> dict:
    """The fingerprint stored in ``trace.fingerprint`` of the row scoring ``sample`` of ``prompt``."""
    fp: dict[str, Any] = {
        "judge": dict(judge),
        "judge_sha256": judge_digest(judge),
        "context_sha256": _sha(prompt["context"]),
        "query_sha256": _sha(prompt["query"]),
        "response_sha256": _sha(sample["response"]),
    }
    fp["sha256"] = _hash_obj(fp)
    return fp


def differences(stored: Any, expected: Mapping[str, Any]) -> list[str]:
    """Why a stored fingerprint does not match (empty when it does), in words: ``judge model 'a' -> 'b'``."""
    if not isinstance(stored, dict) or "sha256" not in stored:
        return ["no fingerprint (written by an older judge.score: producer unknown)"]
    if stored.get("sha256") == expected["sha256"]:
        return []
    out = []
    sj, ej = stored.get("judge") or {}, expected["judge"]
    if sj.get("model") != ej["model"]:
        out.append(f"judge model {sj.get('model')!r} -> {ej['model']!r}")
    if sj.get("endpoint") != ej["endpoint"]:
        out.append(f"endpoint {sj.get('endpoint')!r} -> {ej['endpoint']!r}")
    if sj.get("prompt_version") != ej["prompt_version"]:
        out.append(f"prompt version {sj.get('prompt_version')!r} -> {ej['prompt_version']!r}")
    so, eo = sj.get("options") or {}, ej["options"]
    for k in sorted(set(so) | set(eo)):
        if so.get(k) != eo.get(k):
            out.append(f"option {k} {so.get(k)!r} -> {eo.get(k)!r}")
    for part, what in (("context", "prompt context"), ("query", "prompt query"), ("response", "response")):
        if stored.get(f"{part}_sha256") != expected[f"{part}_sha256"]:
            out.append(f"{what} text changed")
    return out or ["fingerprint differs"]


def describe_mismatches(mismatched: Mapping[str, list[str]], limit: int = 3) -> str:
    """One sentence for many rows: the commonest reasons with their row counts and an example id."""
    reasons: Counter[str] = Counter()
    example: dict[str, str] = {}
    for rid, why in mismatched.items():
        for w in why:
            reasons[w] += 1
            example.setdefault(w, rid)
    parts = [f"{w} ({n} row(s), e.g. {example[w]!r})" for w, n in reasons.most_common(limit)]
    if len(reasons) > limit:
        parts.append(f"and {len(reasons) - limit} other difference(s)")
    return "; ".join(parts)

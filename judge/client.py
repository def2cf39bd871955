"""Async OpenAI-compatible judge client: concurrency bound, RPM/TPM limits, retries, persistent cache,
re-asking.

Transport: the SDK's own retries are switched off (``max_retries=0``) so that every retry goes through one
place that honours ``Retry-After``/``retry-after-ms``, pauses all requests after a 429, backs off
exponentially and stops at a per-call budget (attempts and seconds). An exhausted budget raises
`TransportExhausted`; the scorer then leaves the item pending for the next run instead of scoring it.

Parsing: the first try runs at ``temperature`` (≈0); an unparseable answer is re-asked at
``retry_temperature`` (≈0.95) up to ``parse_retries`` times, then reported as a failed `Answer` (never a
number).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai

from judge.cache import ResponseCache, cache_key
from judge.chunking import approx_tokens
from judge.parsing import OUTPUT_OF_KIND, Parsed, parse, response_format
from judge.prompts import PROMPT_VERSION, render
from judge.rate_limit import RateLimiter
from judge.schema import JudgeInputError

T = TypeVar("T")


class TransportExhausted(RuntimeError):
    """The retry budget for one call ran out (429/5xx/timeouts); the item stays pending for the next run."""


class JudgeFatalError(RuntimeError):
    """The server refuses us outright (bad key, unknown model/endpoint): stop the run, nothing is lost."""


class _SchemaUnsupported(Exception):
    pass


@dataclass
class JudgeConfig:
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # else api_key_file, else $OPENAI_API_KEY
    api_key_file: str | None = None
    temperature: float = 0.0
    retry_temperature: float = 0.95
    max_tokens: int = 1024
    concurrency: int = 16  # requests in flight at once
    rpm: float | None = None  # requests per minute (None: unlimited)
    tpm: float | None = None  # prompt + completion tokens per minute (None: unlimited)
    timeout_s: float = 120.0  # per HTTP request
    max_attempts: int = 6  # transport attempts per call
    retry_budget_s: float = 600.0  # wall time one call may spend retrying
    backoff_s: float = 1.0  # first backoff; doubles per attempt
    backoff_max_s: float = 60.0
    parse_retries: int = 2  # extra asks when the answer cannot be parsed
    structured: str = "auto"  # "json" (response_format JSON schema), "tagged", or "auto" (json, fall back)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.structured not in ("auto", "json", "tagged"):
            raise JudgeInputError(f"structured must be auto, json or tagged, got {self.structured!r}")
        if not self.base_url or not self.model:
            raise JudgeInputError("judge base_url and model are required (no default vendor)")


def resolve_api_key(cfg: JudgeConfig) -> str:
    if cfg.api_key:
        return cfg.api_key
    if cfg.api_key_file:
        try:
            return Path(cfg.api_key_file).expanduser().read_text().strip()
        except OSError as e:
            raise JudgeInputError(f"cannot read api key file {cfg.api_key_file}: {e.strerror}") from None
    # Local servers (vLLM, SGLang, llama.cpp, our fake server) accept any key; "EMPTY" is their convention.
    return os.environ.get("OPENAI_API_KEY") or "EMPTY"


def base_url_host(base_url: str) -> str:
    """Host[:port] only: no scheme, path, query or userinfo (which could carry a credential)."""
    u = urlparse(base_url)
    return f"{u.hostname}:{u.port}" if u.port else str(u.hostname)


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass
class Answer:
    """One judge question's outcome: ``ok`` with the parsed ``value``, or a typed failure with ``error``."""

    ok: bool
    value: dict[str, Any]
    raw: str
    error: str | None
    usage: Usage  # calls made for this answer (cached ones included, with their recorded usage)


@dataclass
class ClientStats:
    paid: dict[str, Usage] = field(default_factory=dict)  # per dimension, calls that went to the server
    cache_hits: int = 0
    transport_retries: int = 0
    parse_retries: int = 0
    started: float = field(default_factory=time.monotonic)

    def total_paid(self) -> Usage:
        u = Usage()
        for v in self.paid.values():
            u.add(v)
        return u


def _retry_after(exc: openai.APIStatusError) -> float | None:
    h = exc.response.headers
    if "retry-after-ms" in h:
        try:
            return float(h["retry-after-ms"]) / 1000
        except ValueError:
            pass
    if "retry-after" in h:
        v = h["retry-after"]
        try:
            return float(v)
        except ValueError:
            d = email.utils.parsedate_to_datetime(v) if v else None
            return max(0.0, d.timestamp() - time.time()) if d else None
    return None


class JudgeClient:
    def __init__(self, cfg: JudgeConfig, cache: ResponseCache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache
        self.mode = "tagged" if cfg.structured == "tagged" else "json"
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.stats = ClientStats()
        self._sem: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future[tuple[str, int, int]]] = {}
        # max_retries=0: retries are ours (see module docstring). The key lives only inside the SDK client.
        self._client = openai.AsyncOpenAI(
            api_key=resolve_api_key(cfg), base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s
        )
        self._endpoint = cfg.base_url.rstrip("/")

    async def close(self) -> None:
        await self._client.close()

    async def ask(self, kind: str, lang: str, values: dict[str, str], dimension: str) -> Answer:
        """Render ``kind`` in ``lang`` with ``values``, ask the judge, parse; re-ask if unparseable."""
        return await self.ask_with(
            kind,
            lambda mode: render(kind, lang, mode, **values),
            lambda raw: parse(kind, raw),
            response_format(OUTPUT_OF_KIND[kind]),
            PROMPT_VERSION,
            dimension,
        )

    async def ask_with(
        self,
        kind: str,
        messages_for: Callable[[str], list[dict[str, str]]],
        parser: Callable[[str], Parsed],
        json_format: dict[str, Any],
        prompt_version: str,
        dimension: str,
    ) -> Answer:
        """`ask` for prompts kept outside `judge.prompts` (e.g. `judge.eval`'s rating prompts).

        ``messages_for(mode)`` renders the messages for ``"json"`` or ``"tagged"``; ``parser(raw)`` returns a
        `Parsed`; ``json_format`` is the ``response_format`` sent in json mode; ``prompt_version`` goes into
        the cache key (so editing those prompts never reuses a stale answer). Same cache, limits, retries
        and re-asking as `ask`.
        """
        usage = Usage()
        raw, error = "", None
        attempt = 0
        while attempt <= self.cfg.parse_retries:
            messages = messages_for(self.mode)
            temp = self.cfg.temperature if attempt == 0 else self.cfg.retry_temperature
            try:
                raw, pt, ct = await self._complete(
                    kind, messages, temp, attempt, dimension, json_format, prompt_version
                )
            except _SchemaUnsupported:
                self.mode = "tagged"  # the server has no structured output: same question, tagged format
                continue
            except _Rejected as e:
                return Answer(False, {}, raw, f"request rejected by the server: {e}", usage)
            usage.add(Usage(1, pt, ct))
            parsed = parser(raw)
            if parsed.ok:
                return Answer(True, parsed.value, raw, None, usage)
            error = parsed.error
            attempt += 1
            if attempt <= self.cfg.parse_retries:
                self.stats.parse_retries += 1
        return Answer(False, {}, raw, f"unparseable after {attempt} attempts: {error}", usage)

    async def _complete(
        self,
        kind: str,
        messages: list[dict[str, str]],
        temperature: float,
        sample_index: int,
        dimension: str,
        json_format: dict[str, Any],
        prompt_version: str,
    ) -> tuple[str, int, int]:
        """One chat completion through cache, in-flight sharing, limits and retries.

        Returns ``(text, prompt_tokens, completion_tokens)``.
        """
        cfg = self.cfg
        params: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.seed is not None:
            params["seed"] = cfg.seed
        if self.mode == "json":
            params["response_format"] = json_format
        # sample_index is in the key so the k-th re-ask at high temperature is its own cache entry
        key = cache_key(
            {
                "endpoint": self._endpoint,
                "prompt_version": prompt_version,
                "sample_index": sample_index,
                **params,
            }
        )
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return hit
        if key in self._inflight:  # the same question is already on the wire: share its answer, pay once
            self.stats.cache_hits += 1
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future[tuple[str, int, int]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await self._send(kind, params, key, messages, dimension)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _send(
        self, kind: str, params: dict[str, Any], key: str, messages: list[dict[str, str]], dimension: str
    ) -> tuple[str, int, int]:
        cfg = self.cfg
        est = approx_tokens(" ".join(m["content"] for m in messages)) + min(cfg.max_tokens, 512)
        resp, handle = await self._transport(
            kind,
            est,
            lambda: self._client.chat.completions.create(**params),
            json_fallback="response_format" in params,
        )
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        pt = (
            int(getattr(resp.usage, "prompt_tokens", 0) or 0)
            if resp.usage
            else est - min(cfg.max_tokens, 512)
        )
        ct = int(getattr(resp.usage, "completion_tokens", 0) or 0) if resp.usage else approx_tokens(text)
        self.limiter.settle(handle, pt + ct)
        self.stats.paid.setdefault(dimension, Usage()).add(Usage(1, pt, ct))
        if self.cache is not None:
            self.cache.put(key, kind, params, text, pt, ct)
        return text, pt, ct

    async def _transport(
        self, kind: str, est: int, call: Callable[[], Awaitable[Any]], json_fallback: bool = False
    ) -> tuple[Any, float]:
        """Run ``call`` under the concurrency bound and rate limits, retrying 408/409/429/5xx, timeouts and
        connection errors with Retry-After or exponential backoff, within the attempt and time budget."""
        cfg = self.cfg
        if self._sem is None:
            self._sem = asyncio.Semaphore(cfg.concurrency)
        deadline = time.monotonic() + cfg.retry_budget_s
        attempt = 0
        while True:
            resp, delay, last = None, None, ""
            async with self._sem:  # held only while the request is in flight, never while backing off
                handle = await self.limiter.acquire(est)
                try:
                    resp = await call()
                except openai.BadRequestError as e:
                    msg = str(e)
                    if (
                        json_fallback
                        and cfg.structured == "auto"
                        and ("response_format" in msg or "json_schema" in msg)
                    ):
                        raise _SchemaUnsupported from None
                    raise _Rejected(f"{e.status_code}: {msg[:300]}") from None
                except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                    raise JudgeFatalError(
                        f"judge server refused the request ({e.status_code}): {str(e)[:300]}"
                    ) from None
                except openai.APIStatusError as e:
                    if e.status_code not in (408, 409, 429) and e.status_code < 500:
                        raise _Rejected(f"{e.status_code}: {str(e)[:300]}") from None
                    delay = _retry_after(e)
                    if e.status_code == 429 and delay:
                        self.limiter.pause(delay)  # the whole client is over the limit, not just this call
                    last = f"HTTP {e.status_code}"
                except (openai.APITimeoutError, openai.APIConnectionError) as e:
                    last = type(e).__name__
            if resp is not None:
                return resp, handle
            delay = delay if delay is not None else min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt)
            attempt += 1
            if attempt >= cfg.max_attempts or time.monotonic() + delay > deadline:
                raise TransportExhausted(f"{kind}: gave up after {attempt} attempts (last error: {last})")
            self.stats.transport_retries += 1
            await asyncio.sleep(delay)

    async def embed(self, texts: list[str], model: str, batch: int = 64) -> list[list[float]]:
        """Embedding vectors for ``texts`` from the server's ``/embeddings`` endpoint (cached, rate-limited,
        retried like chat calls; accounted under the 'faithfulness' dimension, where retrieval is used)."""
        out: list[list[float]] = []
        for i in range(0, len(texts), batch):
            part = texts[i : i + batch]
            key = cache_key({"endpoint": self._endpoint, "embeddings": model, "input": part})
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.stats.cache_hits += 1
                out.extend(json.loads(hit[0]))
                continue
            est = sum(approx_tokens(t) for t in part)
            resp, handle = await self._transport(
                "embeddings", est, lambda part=part: self._client.embeddings.create(model=model, input=part)
            )
            vecs = [list(map(float, d.embedding)) for d in sorted(resp.data, key=lambda d: d.index)]
            pt = int(getattr(resp.usage, "prompt_tokens", 0) or 0) if resp.usage else est
            self.limiter.settle(handle, pt)
            self.stats.paid.setdefault("faithfulness", Usage()).add(Usage(1, pt, 0))
            if self.cache is not None:
                self.cache.put(key, "embeddings", {"model": model, "input": part}, json.dumps(vecs), pt, 0)
            out.extend(vecs)
        return out


class _Rejected(Exception):
    pass


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code — also inside Jupyter, where an event loop is already running
    (then it runs on a fresh loop in a worker thread instead of failing with 'event loop is running')."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=worker, name="judge-run-sync")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]

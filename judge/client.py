"""Async OpenAI-compatible judge client: concurrency bound, RPM/TPM limits, retries, persistent cache,
re-asking.

Transport: the SDK's own retries are switched off (``max_retries=0``) so that every retry goes through one
place that honours ``Retry-After``/``retry-after-ms``, pauses all requests after a 429, backs off
exponentially and stops at a per-call budget (attempts and seconds). An exhausted budget raises
`TransportExhausted`; the scorer then leaves the item pending for the next run instead of scoring it.

Malformed answers: a 200 whose body is not a usable completion (truncated or empty JSON, the wrong content
type, an error object, no choices, non-text content) — or any other exception of one call — is retried
within the same budget; if it stays unusable, `ask` returns a failed `Answer` (the dimension fails, the run
goes on) instead of raising: one response never stops a run.

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
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai

from judge.cache import ResponseCache, cache_key
from judge.chunking import approx_tokens
from judge.parsing import OUTPUT_OF_KIND, Parsed, parse, response_format
from judge.prompts import LAYOUTS, PROMPT_VERSION, render
from judge.rate_limit import RateLimiter
from judge.schema import JudgeInputError
from lr_jax.errors import LrJaxError
from lr_jax.options import option, validate

T = TypeVar("T")


class TransportExhausted(RuntimeError):
    """The retry budget for one call ran out (429/5xx/timeouts); the item stays pending for the next run."""


class UnusableAnswer(TransportExhausted):
    """The server did answer, but every answer within the budget was unusable (a truncated or empty body, not
    JSON, the wrong content type, an error object or another shape than a chat completion, or any other
    exception while reading it). Unlike an unreachable server this will not heal by waiting: the call is
    recorded as a failed dimension (never a number), and the run goes on."""


class _Malformed(Exception):
    """One response that is not a usable chat completion / embeddings answer (retried like a 5xx)."""


class JudgeFatalError(LrJaxError, RuntimeError):
    """The server refuses us outright (bad key, unknown model/endpoint): stop the run, nothing is lost."""


class _SchemaUnsupported(Exception):
    pass


@dataclass
class JudgeConfig:
    """Where the judge is and how to talk to it. Each field's default, bounds and help live here only: the
    ``judge.score`` flags are generated from these fields (`lr_jax.options`)."""

    base_url: str = option(help="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    model: str = option(help="judge model name")
    # never a flag and never written anywhere: else api_key_file, else $OPENAI_API_KEY
    api_key: str | None = option(None, repr=False, cli=False)
    api_key_file: str | None = option(None, help="file holding the key (default: $OPENAI_API_KEY)")
    temperature: float = option(0.0, ge=0, le=2, help="first try's sampling temperature")
    retry_temperature: float = option(
        0.95, ge=0, le=2, help="temperature of re-asks after an unparseable answer"
    )
    max_tokens: int = option(1024, ge=1, help="completion tokens per judge answer")
    concurrency: int = option(16, ge=1, help="judge requests in flight")
    rpm: float | None = option(None, gt=0, help="requests per minute limit (default: none)")
    tpm: float | None = option(None, gt=0, help="prompt + completion tokens per minute limit (default: none)")
    timeout_s: float = option(120.0, gt=0, flag="--timeout", help="per-request timeout, seconds")
    max_attempts: int = option(6, ge=1, help="transport attempts per request")
    retry_budget_s: float = option(
        600.0, gt=0, flag="--retry-budget", help="seconds one request may spend retrying"
    )
    backoff_s: float = option(
        1.0, ge=0, flag="--backoff", help="first backoff, seconds (doubles per attempt)"
    )
    backoff_max_s: float = option(60.0, ge=0, cli=False)
    parse_retries: int = option(2, ge=0, help="extra asks when the answer cannot be parsed")
    structured: str = option(
        "auto",
        choices=("auto", "json", "tagged"),
        help="json: response_format JSON schema; tagged: tagged text; auto: json, falling back to tagged",
    )
    seed: int | None = option(None, help="sampling seed sent to the judge (if it supports one)")
    prompt_layout: str = option(
        "static-first",
        choices=LAYOUTS,
        help="static-first: role, rubric, examples and format first, byte-identical across calls (what "
        "prompt caching needs), variable parts last; interleaved: the zero-shot layout before issue 14",
    )

    def __post_init__(self) -> None:
        validate(self, JudgeInputError)
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


def _chat_answer(resp: Any) -> tuple[str, int | None, int | None, int]:
    """(text, prompt tokens, completion tokens, cached prompt tokens) of a chat completion; `_Malformed` for
    anything else. Cached tokens are ``usage.prompt_tokens_details.cached_tokens`` (OpenAI, vLLM) or
    ``usage.cache_read_input_tokens`` (Anthropic-style gateways); 0 when the server reports none.

    The SDK does not validate a 200's body: with the wrong content type it hands back the raw text, and a
    JSON object of another shape (``{"error": ...}``, no ``choices``) becomes a model with missing fields.
    """
    if isinstance(resp, str | bytes):
        head = resp[:80] if isinstance(resp, str) else resp[:80].decode("utf-8", "replace")
        raise _Malformed(f"the server answered with text, not a JSON chat completion ({head!r})")
    extra = getattr(resp, "model_extra", None) or {}
    if isinstance(extra, dict) and extra.get("error"):
        err = extra["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise _Malformed(f"HTTP 200 with an error object: {str(msg)[:200]}")
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Malformed("the answer has no choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if content is None:
        content = ""  # a null content is an empty answer: unparseable, so re-asked like any other
    if not isinstance(content, str):
        raise _Malformed(f"choices[0].message.content is {type(content).__name__}, not text")
    usage = getattr(resp, "usage", None)

    def count(name: str) -> int | None:
        v = getattr(usage, name, None) if usage is not None else None
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 else None

    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if cached is None:  # Anthropic-style usage (extra fields are attributes of the SDK's models)
        cached = count("cache_read_input_tokens")
    ok = isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0
    return content, count("prompt_tokens"), count("completion_tokens"), int(cached) if ok else 0


def chat_answer_from_body(body: Any) -> tuple[str, int | None, int | None, int]:
    """`_chat_answer` for a chat completion that arrived as JSON (a Batch API output line's
    ``response.body``); `_Malformed` when it is not one. As lenient as the SDK is online (it does not
    validate a 200's body either): missing optional fields such as ``usage.total_tokens`` are fine."""
    if not isinstance(body, dict):
        raise _Malformed(f"the batch answer's body is {type(body).__name__}, not a JSON object")
    if body.get("error"):
        err = body["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise _Malformed(f"HTTP 200 with an error object: {str(msg)[:200]}")

    def ns(v: Any) -> Any:  # attribute access like the SDK's models, for `_chat_answer`
        if isinstance(v, dict):
            return types.SimpleNamespace(**{str(k): ns(x) for k, x in v.items()})
        return [ns(x) for x in v] if isinstance(v, list) else v

    return _chat_answer(ns(body))


def _embeddings_answer(resp: Any, n: int) -> tuple[list[list[float]], int | None]:
    """(vectors in input order, prompt tokens) of an embeddings answer for ``n`` inputs; else `_Malformed`."""
    data = getattr(resp, "data", None)
    if isinstance(resp, str | bytes) or not isinstance(data, list) or len(data) != n:
        raise _Malformed(f"not an embeddings answer for {n} input(s)")
    try:
        vecs = [list(map(float, d.embedding)) for d in sorted(data, key=lambda d: d.index)]
    except (AttributeError, TypeError, ValueError) as e:
        raise _Malformed(f"bad embeddings data ({e})") from None
    usage = getattr(resp, "usage", None)
    pt = getattr(usage, "prompt_tokens", None) if usage is not None else None
    return vecs, (int(pt) if isinstance(pt, int) and not isinstance(pt, bool) else None)


class JudgeClient:
    def __init__(self, cfg: JudgeConfig, cache: ResponseCache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache
        self.mode = "tagged" if cfg.structured == "tagged" else "json"
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.stats = ClientStats()
        # None: answer on the wire now (online). Else an object whose ``async submit(key, kind, params)``
        # answers later (`judge.executors`: batch jobs or files), returning what `_chat_answer` returns
        self.executor: Any = None
        self._sem: asyncio.Semaphore | None = None
        self.on_wire = 0  # calls inside `_transport` now (a batch executor waits for them before a wave)
        self._inflight: dict[str, asyncio.Future[tuple[str, int, int, int]]] = {}
        # max_retries=0: retries are ours (see module docstring). The key lives only inside the SDK client.
        self._client = openai.AsyncOpenAI(
            api_key=resolve_api_key(cfg), base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s
        )
        self._endpoint = cfg.base_url.rstrip("/")

    async def close(self) -> None:
        await self._client.close()

    def _describe(self, e: BaseException) -> str:
        """``Type: innermost cause`` of a failed call, for error messages and traces. The API key and the
        endpoint's userinfo are scrubbed: messages of transport errors could in principle carry them."""
        root: BaseException = e
        seen = {id(root)}
        while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
            seen.add(id(nxt))
            root = nxt
        detail = str(root) or type(root).__name__
        text = type(e).__name__ if root is e and not str(e) else f"{type(e).__name__}: {detail}"
        secret = self._client.api_key
        if secret and secret != "EMPTY":
            text = text.replace(secret, "***")
        userinfo = urlparse(self.cfg.base_url).netloc.rpartition("@")[0]
        if userinfo:
            text = text.replace(userinfo, "***")
        return text[:300]

    async def ask(self, kind: str, lang: str, values: dict[str, str], dimension: str) -> Answer:
        """Render ``kind`` in ``lang`` with ``values``, ask the judge, parse; re-ask if unparseable."""
        return await self.ask_with(
            kind,
            lambda mode: render(kind, lang, mode, self.cfg.prompt_layout, **values),
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
                raw, pt, ct, cached = await self._complete(
                    kind, messages, temp, attempt, dimension, json_format, prompt_version
                )
            except _SchemaUnsupported:
                self.mode = "tagged"  # the server has no structured output: same question, tagged format
                continue
            except _Rejected as e:
                return Answer(False, {}, raw, f"request rejected by the server: {e}", usage)
            except UnusableAnswer as e:
                return Answer(False, {}, raw, f"no usable answer from the judge server: {e}", usage)
            usage.add(Usage(1, pt, ct, cached))
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
    ) -> tuple[str, int, int, int]:
        """One chat completion through cache, in-flight sharing, limits and retries.

        Returns ``(text, prompt_tokens, completion_tokens, cached_tokens)``; for an answer from the response
        cache (or shared in flight) the usage recorded when it was paid for.
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
            self._count_hit(dimension, hit)
            return hit
        if key in self._inflight:  # the same question is already on the wire: share its answer, pay once
            shared = await asyncio.shield(self._inflight[key])
            self._count_hit(dimension, shared)
            return shared
        fut: asyncio.Future[tuple[str, int, int, int]] = asyncio.get_running_loop().create_future()
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

    def _count_hit(self, dimension: str, hit: tuple[str, int, int, int]) -> None:
        self.stats.cache_hits += 1
        self.stats.hits.setdefault(dimension, Usage()).add(Usage(1, hit[1], hit[2]))

    async def _send(
        self, kind: str, params: dict[str, Any], key: str, messages: list[dict[str, str]], dimension: str
    ) -> tuple[str, int, int, int]:
        cfg = self.cfg
        est = approx_tokens(" ".join(m["content"] for m in messages)) + min(cfg.max_tokens, 512)
        if self.executor is not None:  # a batch executor answers this wave's questions together, later
            text, pt_usage, ct_usage, cached = await self.executor.submit(key, kind, params)
            handle = None
        else:

            async def call() -> tuple[str, int | None, int | None, int]:
                # reading the answer is part of the call: a malformed one is retried like a transport failure
                return _chat_answer(await self._client.chat.completions.create(**params))

            (text, pt_usage, ct_usage, cached), handle = await self._transport(
                kind, est, call, json_fallback="response_format" in params
            )
        pt = pt_usage if pt_usage is not None else est - min(cfg.max_tokens, 512)
        ct = ct_usage if ct_usage is not None else approx_tokens(text)
        if handle is not None:
            self.limiter.settle(handle, pt + ct)
        self.stats.paid.setdefault(dimension, Usage()).add(Usage(1, pt, ct))
        cached = min(cached, pt)
        self.stats.cached_tokens[dimension] = self.stats.cached_tokens.get(dimension, 0) + cached
        if self.executor is not None:
            self.stats.batched.setdefault(dimension, Usage()).add(Usage(1, pt, ct))
            bc = self.stats.batched_cached_tokens
            bc[dimension] = bc.get(dimension, 0) + cached
        if self.cache is not None:
            self.cache.put(key, kind, params, text, pt, ct, cached_tokens=cached)
        return text, pt, ct, cached

    async def _transport(
        self, kind: str, est: int, call: Callable[[], Awaitable[Any]], json_fallback: bool = False
    ) -> tuple[Any, float]:
        """Run ``call`` under the concurrency bound and rate limits, retrying 408/409/429/5xx, timeouts and
        connection errors with Retry-After or exponential backoff, within the attempt and time budget."""
        self.on_wire += 1
        try:
            return await self._transport_once(kind, est, call, json_fallback)
        finally:
            self.on_wire -= 1

    async def _transport_once(
        self, kind: str, est: int, call: Callable[[], Awaitable[Any]], json_fallback: bool
    ) -> tuple[Any, float]:
        cfg = self.cfg
        if self._sem is None:
            self._sem = asyncio.Semaphore(cfg.concurrency)
        deadline = time.monotonic() + cfg.retry_budget_s
        attempt = 0
        while True:
            resp, delay, last, unusable = None, None, "", False
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
                    last = self._describe(e)
                except Exception as e:  # any other failure of this one call is retried, too
                    # a truncated/empty body (JSONDecodeError from the SDK), the wrong content type, a 200
                    # with an error object, a schema error, or an SDK bug: one bad answer must not stop
                    # the run
                    last, unusable = self._describe(e), True
            if resp is not None:
                return resp, handle
            delay = delay if delay is not None else min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt)
            attempt += 1
            if attempt >= cfg.max_attempts or time.monotonic() + delay > deadline:
                exc = UnusableAnswer if unusable else TransportExhausted
                raise exc(f"{kind}: gave up after {attempt} attempts (last error: {last})")
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

            async def call(part: list[str] = part) -> tuple[list[list[float]], int | None]:
                resp = await self._client.embeddings.create(model=model, input=part)
                return _embeddings_answer(resp, len(part))

            (vecs, pt_usage), handle = await self._transport("embeddings", est, call)
            pt = pt_usage if pt_usage is not None else est
            self.limiter.settle(handle, pt)
            self.stats.paid.setdefault("faithfulness", Usage()).add(Usage(1, pt, 0))
            if self.cache is not None:
                self.cache.put(key, "embeddings", {"model": model, "input": part}, json.dumps(vecs), pt, 0)
            out.extend(vecs)
        return out


class _Rejected(Exception):
    pass


async def gather_or_cancel(coros: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run `coros` concurrently; if one fails (or the caller is cancelled), cancel the rest, then raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


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

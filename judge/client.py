"""Async OpenAI-compatible judge client: the response cache, in-flight sharing, accounting, re-asking.

`JudgeClient.ask` renders one judge question, answers it from the response cache, from an identical question
already in flight, or through the transport (`judge.transport`: concurrency bound, RPM/TPM limits, retries
within a budget) or an injected executor (`judge.executors`: batch jobs or files), and parses the answer.

Malformed answers: a 200 whose body is not a usable completion (`judge.answers`), or any other exception of
one call, is retried within the transport budget; if it stays unusable, `ask` returns a failed `Answer` (the
dimension fails, the run goes on) instead of raising: one response never stops a run. An exhausted budget
raises `TransportExhausted`; the scorer then leaves the item pending for the next run.

Parsing: the first try runs at ``temperature`` (≈0); an unparseable answer is re-asked at
``retry_temperature`` (≈0.95) up to ``parse_retries`` times, then reported as a failed `Answer` (never a
number).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from judge.accounting import ClientStats, Usage
from judge.answers import Completion, chat_completion, embeddings_answer
from judge.cache import ResponseCache, cache_key
from judge.chunking import approx_tokens
from judge.config import JudgeConfig, base_url_host, check_base_url, resolve_api_key
from judge.errors import (
    JudgeFatalError,
    RequestRejected,
    SchemaUnsupported,
    TransportExhausted,
    UnusableAnswer,
)
from judge.parsing import OUTPUT_OF_KIND, Parsed, parse, response_format
from judge.prompts import PROMPT_VERSION, render
from judge.transport import Transport

# re-exported: the names callers have always imported from here
__all__ = [
    "Answer",
    "ClientStats",
    "Completion",
    "Executor",
    "JudgeClient",
    "JudgeConfig",
    "JudgeFatalError",
    "TransportExhausted",
    "UnusableAnswer",
    "Usage",
    "base_url_host",
    "check_base_url",
    "gather_or_cancel",
    "resolve_api_key",
    "run_sync",
]

_T = TypeVar("_T")


class Executor(Protocol):
    """Who answers a cache miss instead of the wire (`judge.executors.WaveDriver`): later, in bulk."""

    async def submit(self, key: str, kind: str, params: dict[str, Any]) -> Completion: ...


@dataclass
class Answer:
    """One judge question's outcome: ``ok`` with the parsed ``value``, or a typed failure with ``error``."""

    ok: bool
    value: dict[str, Any]
    raw: str
    error: str | None
    usage: Usage  # calls made for this answer (cached ones included, with their recorded usage)


class JudgeClient:
    """Asks the judge: ``await client.ask(kind, lang, values, dimension)`` -> `Answer`.

    ``executor`` (optional): answers cache misses instead of the wire (`judge.executors.make_driver`).
    ``transport`` (optional): the connection to use (default: a new `Transport` for ``cfg``); pass the one
    an executor also uses, so their retries and limits are one."""

    def __init__(
        self,
        cfg: JudgeConfig,
        cache: ResponseCache | None = None,
        executor: Executor | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.mode = "tagged" if cfg.structured == "tagged" else "json"
        self.transport = transport if transport is not None else Transport(cfg)
        self.stats: ClientStats = self.transport.stats
        self.executor = executor
        self._inflight: dict[str, asyncio.Future[Completion]] = {}
        self._endpoint = cfg.base_url.rstrip("/")

    async def close(self) -> None:
        await self.transport.close()

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
            except SchemaUnsupported:
                self.mode = "tagged"  # the server has no structured output: same question, tagged format
                continue
            except RequestRejected as e:
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
    ) -> Completion:
        """One chat completion through cache, in-flight sharing, limits and retries.

        Returns a `Completion` with every count; for an answer from the response cache (or shared in
        flight) the usage recorded when it was paid for.
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
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
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

    def _count_hit(self, dimension: str, hit: Completion) -> None:
        self.stats.cache_hits += 1
        self.stats.hits.setdefault(dimension, Usage()).add(
            Usage(1, hit.prompt_tokens or 0, hit.completion_tokens or 0)
        )

    async def _send(
        self, kind: str, params: dict[str, Any], key: str, messages: list[dict[str, str]], dimension: str
    ) -> Completion:
        """A cache miss: asked through the executor, else on the wire; accounted and cached."""
        cfg = self.cfg
        est = approx_tokens(" ".join(m["content"] for m in messages)) + min(cfg.max_tokens, 512)
        if self.executor is not None:  # a batch executor answers this wave's questions together, later
            answer = await self.executor.submit(key, kind, params)
            handle = None
        else:

            async def call() -> Completion:
                # reading the answer is part of the call: a malformed one is retried like a transport failure
                return chat_completion(await self.transport.sdk.chat.completions.create(**params))

            answer, handle = await self.transport.call(
                kind, est, call, json_fallback="response_format" in params
            )
        text, pt_usage, ct_usage, cached = answer
        pt = pt_usage if pt_usage is not None else est - min(cfg.max_tokens, 512)
        ct = ct_usage if ct_usage is not None else approx_tokens(text)
        if handle is not None:
            self.transport.settle(handle, pt + ct)
        self.stats.paid.setdefault(dimension, Usage()).add(Usage(1, pt, ct))
        cached = min(cached, pt)
        self.stats.cached_tokens[dimension] = self.stats.cached_tokens.get(dimension, 0) + cached
        if self.executor is not None:
            self.stats.batched.setdefault(dimension, Usage()).add(Usage(1, pt, ct))
            bc = self.stats.batched_cached_tokens
            bc[dimension] = bc.get(dimension, 0) + cached
        if self.cache is not None:
            self.cache.put(key, kind, params, text, pt, ct, cached_tokens=cached)
        return Completion(text, pt, ct, cached)

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
                resp = await self.transport.sdk.embeddings.create(model=model, input=part)
                return embeddings_answer(resp, len(part))

            (vecs, pt_usage), handle = await self.transport.call("embeddings", est, call)
            pt = pt_usage if pt_usage is not None else est
            self.transport.settle(handle, pt)
            self.stats.paid.setdefault("faithfulness", Usage()).add(Usage(1, pt, 0))
            if self.cache is not None:
                self.cache.put(key, "embeddings", {"model": model, "input": part}, json.dumps(vecs), pt, 0)
            out.extend(vecs)
        return out


async def gather_or_cancel(coros: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run `coros` concurrently; if one fails (or the caller is cancelled), cancel the rest, then raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code — also inside Jupyter, where an event loop is already running
    (then it runs on a fresh loop in a worker thread instead of failing with 'event loop is running')."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:  # outside the except block: errors of ``coro`` must not chain to that RuntimeError
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

"""The retrying transport: one place where every call to an OpenAI-compatible server is made and retried.

Shared by the judge (`judge.transport.Transport` adds its config and accounting) and the engine sampler
(`lr_jax.sample.engine`). The SDK's own retries are switched off (``max_retries=0``) so that every retry goes
through `Transport.call`, which honours ``Retry-After``/``retry-after-ms``, pauses all requests after a 429,
backs off exponentially and stops at a per-call budget (attempts and seconds). An exhausted budget raises
`TransportExhausted` (`UnusableAnswer` when the server did answer but never usably); a 4xx raises
`RequestRejected`, `SchemaUnsupported` or `ServerRefused`. The API key lives only inside the SDK client
(`sdk`) and is scrubbed from every message (`describe`).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import openai

from lr_jax.openai_client.endpoint import NO_KEY
from lr_jax.openai_client.errors import (
    RequestRejected,
    SchemaUnsupported,
    ServerRefused,
    TransportExhausted,
    UnusableAnswer,
)
from lr_jax.openai_client.rate_limit import RateLimiter


class WireSettings(Protocol):
    """What the transport reads from its config (`judge.config.JudgeConfig`, `WireOptions`)."""

    base_url: str
    concurrency: int
    rpm: float | None
    tpm: float | None
    timeout_s: float
    max_attempts: int
    retry_budget_s: float
    backoff_s: float
    backoff_max_s: float


@dataclass(frozen=True)
class WireOptions:
    """A `WireSettings` for callers without a config of their own (the engine sampler builds one from its
    options); each caller states every value it cares about."""

    base_url: str
    concurrency: int
    timeout_s: float
    max_attempts: int
    retry_budget_s: float
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    rpm: float | None = None
    tpm: float | None = None


@dataclass
class RetryCount:
    """Where a transport counts its retries when the caller keeps no other statistics."""

    transport_retries: int = 0


def retry_after(exc: openai.APIStatusError) -> float | None:
    """The server's ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), in seconds."""
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


class Transport:
    """The SDK connection to one endpoint, under the concurrency bound and the RPM/TPM limits, with retries.

    ``stats`` receives the retry count (``transport_retries``); ``on_wire`` is the number of calls inside
    `call` now (a batch executor waits for them to finish before it cuts a wave); ``server`` names the
    other side in error messages ("judge server", "engine")."""

    def __init__(self, cfg: WireSettings, api_key: str, stats: Any = None, server: str = "server") -> None:
        self.cfg = cfg
        self.stats = stats if stats is not None else RetryCount()
        self.server = server
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.on_wire = 0
        self._sem: asyncio.Semaphore | None = None
        # max_retries=0: retries are ours (see module docstring)
        self.sdk = openai.AsyncOpenAI(
            api_key=api_key, base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s
        )

    async def close(self) -> None:
        await self.sdk.close()

    def settle(self, handle: float, tokens: float) -> None:
        """Tell the TPM limiter what a call that `call` reserved ``handle`` for really cost."""
        self.limiter.settle(handle, tokens)

    def describe(self, e: BaseException) -> str:
        """``Type: innermost cause`` of a failed call, for error messages and traces. The API key and the
        endpoint's userinfo are scrubbed: messages of transport errors could in principle carry them."""
        root: BaseException = e
        seen = {id(root)}
        while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
            seen.add(id(nxt))
            root = nxt
        detail = str(root) or type(root).__name__
        text = type(e).__name__ if root is e and not str(e) else f"{type(e).__name__}: {detail}"
        return self.scrub(text)[:300]

    def scrub(self, text: str) -> str:
        """``text`` without the API key or the endpoint's userinfo."""
        secret = self.sdk.api_key
        if secret and secret != NO_KEY:
            text = text.replace(secret, "***")
        userinfo = urlparse(self.cfg.base_url).netloc.rpartition("@")[0]
        if userinfo:
            text = text.replace(userinfo, "***")
        return text

    async def call(
        self, kind: str, est: int, fn: Callable[[], Awaitable[Any]], json_fallback: bool = False
    ) -> tuple[Any, float]:
        """(what ``fn()`` returned, the limiter handle to `settle`): ``fn`` run under the concurrency bound
        and rate limits, retrying 408/409/429/5xx, timeouts, connection errors and malformed answers with
        Retry-After or exponential backoff, within the attempt and time budget. ``est``: the tokens the
        TPM limiter reserves. ``json_fallback``: a 400 about ``response_format`` raises `SchemaUnsupported`
        (the caller asks again without it) instead of `RequestRejected`."""
        self.on_wire += 1
        try:
            return await self._retrying(kind, est, fn, json_fallback)
        finally:
            self.on_wire -= 1

    async def _retrying(
        self, kind: str, est: int, fn: Callable[[], Awaitable[Any]], json_fallback: bool
    ) -> tuple[Any, float]:
        cfg = self.cfg
        if self._sem is None:
            self._sem = asyncio.Semaphore(cfg.concurrency)
        deadline = time.monotonic() + cfg.retry_budget_s
        attempt = 0
        while True:
            async with self._sem:  # held only while the request is in flight, never while backing off
                handle = await self.limiter.acquire(est)
                resp, delay, last, unusable = await self._attempt(fn, json_fallback)
            if resp is not None:
                return resp, handle
            delay = delay if delay is not None else min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt)
            attempt += 1
            if attempt >= cfg.max_attempts or time.monotonic() + delay > deadline:
                exc = UnusableAnswer if unusable else TransportExhausted
                raise exc(f"{kind}: gave up after {attempt} attempts (last error: {last})")
            self.stats.transport_retries += 1
            await asyncio.sleep(delay)

    async def _attempt(
        self, fn: Callable[[], Awaitable[Any]], json_fallback: bool
    ) -> tuple[Any, float | None, str, bool]:
        """One try: (answer or None, the server's Retry-After, what went wrong, whether it was an answer
        that could not be used). Raises for what no retry can fix."""
        try:
            return await fn(), None, "", False
        except openai.BadRequestError as e:
            msg = self.scrub(str(e))
            if json_fallback and ("response_format" in msg or "json_schema" in msg):
                raise SchemaUnsupported from None
            raise RequestRejected(f"{e.status_code}: {msg[:300]}") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise ServerRefused(
                f"{self.server} refused the request ({e.status_code}): {self.scrub(str(e))[:300]}"
            ) from None
        except openai.APIStatusError as e:
            if e.status_code not in (408, 409, 429) and e.status_code < 500:
                raise RequestRejected(f"{e.status_code}: {self.scrub(str(e))[:300]}") from None
            delay = retry_after(e)
            if e.status_code == 429 and delay:
                self.limiter.pause(delay)  # the whole client is over the limit, not just this call
            return None, delay, f"HTTP {e.status_code}", False
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            return None, None, self.describe(e), False
        except Exception as e:  # any other failure of this one call is retried, too
            # a truncated/empty body (JSONDecodeError from the SDK), the wrong content type, a 200 with an
            # error object, a schema error, or an SDK bug: one bad answer must not stop the run
            return None, None, self.describe(e), True

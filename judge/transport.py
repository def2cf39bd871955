"""The retrying transport: one place where every call to the judge server is made and retried.

The SDK's own retries are switched off (``max_retries=0``) so that every retry goes through `Transport.call`,
which honours ``Retry-After``/``retry-after-ms``, pauses all requests after a 429, backs off exponentially and
stops at a per-call budget (attempts and seconds). An exhausted budget raises `TransportExhausted`
(`UnusableAnswer` when the server did answer but never usably); a 4xx raises `RequestRejected`,
`SchemaUnsupported` or `JudgeFatalError`. The API key lives only inside the SDK client (`sdk`).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import openai

from judge.accounting import ClientStats
from judge.config import JudgeConfig, resolve_api_key
from judge.errors import (
    JudgeFatalError,
    RequestRejected,
    SchemaUnsupported,
    TransportExhausted,
    UnusableAnswer,
)
from judge.rate_limit import RateLimiter


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
    `call` now (a batch executor waits for them to finish before it cuts a wave)."""

    def __init__(self, cfg: JudgeConfig, stats: ClientStats | None = None) -> None:
        self.cfg = cfg
        self.stats = stats if stats is not None else ClientStats()
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.on_wire = 0
        self._sem: asyncio.Semaphore | None = None
        # max_retries=0: retries are ours (see module docstring)
        self.sdk = openai.AsyncOpenAI(
            api_key=resolve_api_key(cfg), base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s
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
        secret = self.sdk.api_key
        if secret and secret != "EMPTY":
            text = text.replace(secret, "***")
        userinfo = urlparse(self.cfg.base_url).netloc.rpartition("@")[0]
        if userinfo:
            text = text.replace(userinfo, "***")
        return text[:300]

    async def call(
        self, kind: str, est: int, fn: Callable[[], Awaitable[Any]], json_fallback: bool = False
    ) -> tuple[Any, float]:
        """(what ``fn()`` returned, the limiter handle to `settle`): ``fn`` run under the concurrency bound
        and rate limits, retrying 408/409/429/5xx, timeouts, connection errors and malformed answers with
        Retry-After or exponential backoff, within the attempt and time budget. ``est``: the tokens the
        TPM limiter reserves."""
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
            msg = str(e)
            if (
                json_fallback
                and self.cfg.structured == "auto"
                and ("response_format" in msg or "json_schema" in msg)
            ):
                raise SchemaUnsupported from None
            raise RequestRejected(f"{e.status_code}: {msg[:300]}") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise JudgeFatalError(
                f"judge server refused the request ({e.status_code}): {str(e)[:300]}"
            ) from None
        except openai.APIStatusError as e:
            if e.status_code not in (408, 409, 429) and e.status_code < 500:
                raise RequestRejected(f"{e.status_code}: {str(e)[:300]}") from None
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

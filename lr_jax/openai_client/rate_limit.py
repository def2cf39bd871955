"""Requests-per-minute and tokens-per-minute limits as token buckets, plus a global pause after a 429.

Each limit is a bucket refilled continuously at ``limit / 60`` per second holding at most ``burst_s`` seconds'
worth, so traffic is paced evenly (providers enforce per-minute limits over shorter sub-windows, and an even
pace never trips them) instead of bursting a whole minute's quota at once. Tokens are reserved before a call
from an estimate (prompt estimate + expected completion) and corrected with the server's reported usage
afterwards (`settle`), so the TPM limit tracks what the provider counts. A request larger than the bucket is
let through when the bucket is full and leaves it in debt, rather than blocking forever.

Time comes from an injected ``clock`` (default `time.monotonic`) and waiting from an injected async ``sleep``
(default `asyncio.sleep`), so tests can drive the limiter with a fake clock: deterministic and instant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.t = now

    def refill(self, now: float) -> None:
        # a refund from `settle` may lift the level above capacity: keep it (those tokens were never used)
        self.level = max(self.level, min(self.capacity, self.level + (now - self.t) * self.rate))
        self.t = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` can be taken (0 if now)."""
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class RateLimiter:
    """RPM and TPM token buckets (None: unlimited) plus a global pause; see the module docstring."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        burst_s: float = 1.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._clock, self._sleep = clock, sleep
        now = clock()
        self._req = _Bucket(rpm, burst_s, now) if rpm else None
        self._tok = _Bucket(tpm, burst_s, now) if tpm else None
        self._lock = asyncio.Lock()
        self._paused_until = now

    def pause(self, seconds: float) -> None:
        """Stop every new request for ``seconds`` (the server said Retry-After: we are over its limit)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def acquire(self, tokens: float) -> float:
        """Wait until a request of ``tokens`` fits both limits; returns the reservation for `settle`."""
        async with self._lock:  # one waiter at a time keeps admission FIFO
            while True:
                now = self._clock()
                wait = self._paused_until - now
                for b, cost in ((self._req, 1.0), (self._tok, tokens)):
                    if b is not None:
                        b.refill(now)
                        wait = max(wait, b.wait_for(cost))
                if wait <= 0:
                    if self._req is not None:
                        self._req.level -= 1.0
                    if self._tok is not None:
                        self._tok.level -= tokens
                    return float(tokens)
                # short naps: a refund from `settle` may make room before the computed wait is over
                await self._sleep(min(max(0.005, wait), 0.05))

    def settle(self, reserved: float, actual_tokens: float) -> None:
        """Correct a reservation by the real usage the server reported."""
        if self._tok is not None:
            self._tok.refill(self._clock())  # bank the refill so far before a refund lifts the level
            self._tok.level -= actual_tokens - reserved

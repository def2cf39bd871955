"""Token-bucket RPM/TPM limiter, driven by a fake clock: deterministic, instant, and exact enough to fail a
limiter that does not pace (or paces wrongly)."""

import asyncio
import itertools

import pytest

from judge.rate_limit import RateLimiter


class FakeClock:
    """A monotonic clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, dt: float) -> None:
        self.now += dt
        self.slept += dt
        await asyncio.sleep(0)  # still yield, as a real sleep does


def limiter(clock: FakeClock, **kw) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **kw)


def test_rpm_paces_requests_after_the_burst() -> None:
    clock = FakeClock()

    async def go() -> list[float]:
        rl = limiter(clock, rpm=1200)  # 20/s, burst of 20
        times = []
        for _ in range(30):
            await rl.acquire(1)
            times.append(clock.now - 1000.0)
        return times

    times = asyncio.run(go())
    assert times[:20] == [0.0] * 20  # the burst goes at once
    gaps = [b - a for a, b in itertools.pairwise(times[19:])]
    # then 20/s (each wait is 0.05 s; float rounding can leave a 5 ms minimum nap on top of a 45 ms one)
    assert all(0.044 <= g <= 0.056 for g in gaps), gaps
    assert times[-1] == pytest.approx(0.5, abs=0.006)


def test_tpm_counts_real_usage_not_the_estimate() -> None:
    async def go(actual: int) -> float:
        clock = FakeClock()
        rl = limiter(clock, tpm=60_000)  # 1000 tokens/s, burst 1000
        for _ in range(4):
            r = await rl.acquire(500)
            rl.settle(r, actual)
        return clock.now - 1000.0

    # real usage 100/request: the refunds keep it inside the burst, no wait at all
    assert asyncio.run(go(100)) == 0.0
    # usage 1000/request: each settle leaves 500 tokens of debt: 0.5 s, then 1 s, then 1 s of refill
    assert asyncio.run(go(1000)) == pytest.approx(2.5, abs=0.01)


def test_pause_blocks_everyone() -> None:
    clock = FakeClock()

    async def go() -> list[float]:
        rl = limiter(clock)
        rl.pause(0.3)
        done = []

        async def one() -> None:
            await rl.acquire(1)
            done.append(clock.now - 1000.0)

        await asyncio.gather(one(), one(), one())
        return done

    done = asyncio.run(go())
    assert len(done) == 3 and all(0.3 <= t < 0.31 for t in done)


def test_unlimited_never_waits() -> None:
    clock = FakeClock()

    async def go() -> None:
        rl = limiter(clock)
        for _ in range(1000):
            rl.settle(await rl.acquire(10_000), 10_000)

    asyncio.run(go())
    assert clock.slept == 0.0

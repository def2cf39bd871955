"""The judge client against a real local HTTP server process: retries, Retry-After, timeouts, re-asking,
cache, tagged fallback, exhausted budget, sync wrapper inside a running loop. No mocks of openai/httpx."""

import asyncio
import time

import pytest

from judge.cache import ResponseCache
from judge.client import JudgeClient, JudgeConfig, TransportExhausted, run_sync
from judge.fake_server import BAD_BODIES, FakeJudgeServer

Q = {"query": "What does the report say about rainfall?", "response": "The report says rainfall fell by 20%."}


@pytest.fixture(scope="module")
def server():
    with FakeJudgeServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _clean(server):
    server.control(
        **{
            "fail_429_first": 0,
            "error_429_every": 0,
            "error_500_every": 0,
            "hang_every": 0,
            "garble_every": 0,
            "truncate_every": 0,
            "garble_kinds": [],
            "json_schema": True,
            "latency_s": 0.0,
            "bad_body": "",
            "bad_body_every": 1,
            "bad_body_kinds": [],
        }
    )
    server.reset()


def _ask(server, cache=None, kind="helpfulness", values=Q, **cfg):
    async def go():
        c = JudgeClient(JudgeConfig(base_url=server.url, model="judge-a", backoff_s=0.05, **cfg), cache)
        try:
            return await c.ask(kind, "en", values, dimension=kind), c
        finally:
            await c.close()

    return asyncio.run(go())


def test_429_retry_after_is_honoured(server) -> None:
    server.control(fail_429_first=2, retry_after_s=0.4)
    t = time.monotonic()
    a, c = _ask(server)
    assert a.ok and 0 <= a.value["score"] <= 10
    assert time.monotonic() - t >= 0.8  # two waits of Retry-After, not the 0.05 s backoff
    st = server.stats()
    assert st["status"] == {"429": 2, "200": 1} and c.stats.transport_retries == 2


def test_500_and_timeout_are_retried(server) -> None:
    _ask(server)  # request 1
    server.control(error_500_every=2, hang_every=3, hang_s=3.0)  # request 2 -> 500, request 3 hangs
    t = time.monotonic()
    a, c = _ask(server, kind="logicality", timeout_s=0.5)  # 2: 500, 3: hang > timeout, 4: 500, 5: ok
    assert a.ok and c.stats.transport_retries == 3 and time.monotonic() - t >= 0.5
    assert server.stats()["status"] == {"200": 2, "500": 2}


def test_exhausted_budget_raises_instead_of_scoring(server) -> None:
    server.control(fail_429_first=100, retry_after_s=0.05)
    with pytest.raises(TransportExhausted, match="3 attempts"):
        _ask(server, max_attempts=3)
    assert server.stats()["status"] == {"429": 3}


def test_garbled_output_reasked_hot_then_typed_failure(server) -> None:
    server.control(garble_kinds=["helpfulness"])
    a, _ = _ask(server, parse_retries=2)
    assert not a.ok and a.value == {} and "unparseable after 3 attempts" in a.error
    st = server.stats()
    assert st["by_kind"]["helpfulness"] == 3 and st["temperatures"] == {"0.0": 1, "0.95": 2}


def test_garbled_or_truncated_once_recovers_on_hot_retry(server) -> None:
    _ask(server)  # request 1
    server.control(garble_every=2, truncate_every=3)  # 2, 4: garbled; 3: truncated; 5: fine
    values = {"evidence": "rainfall fell by a fifth", "statement": "Rainfall fell."}
    a, c = _ask(server, kind="fact_support", values=values, parse_retries=3)
    assert a.ok and a.value["support"] == "full" and a.usage.calls == 4 and c.stats.parse_retries == 3
    assert server.stats()["temperatures"] == {"0.0": 2, "0.95": 3}


def test_cache_hits_pay_nothing_and_key_includes_model(server, tmp_path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    a1, _ = _ask(server, cache)
    a2, c2 = _ask(server, cache)
    assert a1.value == a2.value and c2.stats.cache_hits == 1 and server.stats()["requests"] == 1

    async def other_model():
        c = JudgeClient(JudgeConfig(base_url=server.url, model="judge-b"), cache)
        try:
            return await c.ask("helpfulness", "en", Q, dimension="helpfulness")
        finally:
            await c.close()

    asyncio.run(other_model())
    assert server.stats()["requests"] == 2  # another judge model is a miss
    cache.close()
    cache = ResponseCache(tmp_path / "c.sqlite")  # persistent across processes/opens
    _, c3 = _ask(server, cache)
    assert c3.stats.cache_hits == 1 and server.stats()["requests"] == 2


def test_tagged_fallback_when_server_has_no_json_schema(server) -> None:
    server.control(json_schema=False)
    a, c = _ask(server)
    assert a.ok and c.mode == "tagged" and "<score>" in a.raw
    assert server.stats()["status"] == {"400": 1, "200": 1}


def test_sync_wrapper_inside_running_loop(server) -> None:
    async def notebook_cell():  # Jupyter runs cells inside an event loop
        async def inner():
            c = JudgeClient(JudgeConfig(base_url=server.url, model="judge-a"))
            try:
                return await c.ask("logicality", "en", Q, dimension="logicality")
            finally:
                await c.close()

        return run_sync(inner())

    a = asyncio.run(notebook_cell())
    assert a.ok


@pytest.mark.parametrize("mode", BAD_BODIES)
def test_malformed_200_is_retried_then_a_failed_answer_never_an_exception(server, mode) -> None:
    """A 200 whose body is not a usable chat completion (the SDK raised JSONDecodeError for a truncated body
    and it escaped `ask`) is retried within the budget, then reported as a failed answer."""
    server.control(bad_body=mode)
    a, c = _ask(server, max_attempts=3)
    assert not a.ok and a.value == {} and "no usable answer from the judge server" in a.error, a.error
    assert "3 attempts" in a.error and c.stats.transport_retries == 2
    # (not an exact dict: a request hung by an earlier test may still finish with a "200" meanwhile)
    assert server.stats()["status"][f"200-{mode}"] == 3


@pytest.mark.parametrize("mode", ["truncated_json", "error_object"])
def test_one_malformed_200_recovers_on_retry_and_is_not_cached(server, tmp_path, mode) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    _ask(server, kind="logicality")  # request 1 is fine; 2 is malformed, 3 fine
    server.control(bad_body=mode, bad_body_every=2)
    a, c = _ask(server, cache)
    assert a.ok and c.stats.transport_retries == 1
    assert server.stats()["status"][f"200-{mode}"] == 1
    assert len(cache) == 1  # only the good answer
    cache.close()


def test_unreachable_server_error_names_the_cause() -> None:
    async def go():
        cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", backoff_s=0.01, max_attempts=2)
        c = JudgeClient(cfg)
        try:
            return await c.ask("helpfulness", "en", Q, dimension="helpfulness")
        finally:
            await c.close()

    with pytest.raises(TransportExhausted, match=r"APIConnectionError: .*(?i:refused|connect)"):
        asyncio.run(go())

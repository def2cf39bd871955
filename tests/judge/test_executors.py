"""Executors, money and the dry run, end to end: `python -m judge.score` against the fake server process
(Files + Batches endpoints in the OpenAI wire format), the official `openai` SDK as the client."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from judge import traces
from judge.fake_server import FakeJudgeServer, run_batch_file
from judge.prices import load_table
from judge.schema import JudgeInputError
from tests.helpers.paths import ROOT, shared_path
from tests.judge.test_score import cmd, run, write_data

POLL = ("--batch-poll", "0.02", "--batch-poll-max", "0.05")


def lines(out: Path) -> bytes:
    """scored.jsonl's bytes: rows are appended in completion order during a run, which differs between
    executors and runs, and rewritten in the samples file's order at its end (byte-identical files)."""
    data = (out / "scored.jsonl").read_bytes()
    assert [json.loads(x)["id"] for x in data.splitlines()] == [f"p0-{k}" for k in range(4)]
    return data


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def answer_batch_files(out: Path, first: bool = False) -> int:
    """Play the offline runner (`vllm run-batch -i IN -o OUT`) for every input file still unanswered."""
    n = 0
    for inp in sorted((out / "batches").glob("wave-*.input.jsonl")):
        dst = inp.with_name(inp.name.replace(".input.", ".output."))
        if not dst.exists():
            if n == 0 and first:  # once through the CLI, the rest in-process (each process costs seconds)
                r = subprocess.run(
                    [sys.executable, "-m", "judge.fake_server", "--run-batch", str(inp), str(dst)],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    timeout=60,
                )
                assert r.returncode == 0 and "answered" in r.stdout, r.stderr
            else:
                run_batch_file(str(inp), str(dst))
            n += 1
    return n


def test_batch_endpoints_speak_the_openai_wire_format_and_report_cached_tokens() -> None:
    body = {
        "model": "fake-judge",
        "messages": [
            {"role": "system", "content": "Task id: helpfulness. " + "Rubric text. " * 200},
            {"role": "user", "content": "<question>\nWhy?\n</question>\n\n<answer>\nBecause.\n</answer>"},
        ],
    }
    data = "".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        + "\n"
        for i in range(4)
    ).encode()
    with FakeJudgeServer() as srv:
        sdk = openai.OpenAI(api_key="EMPTY", base_url=srv.url, max_retries=0)
        f = sdk.files.create(file=("in.jsonl", data), purpose="batch")
        assert sdk.files.retrieve(f.id).bytes == len(data)
        assert sdk.files.content(f.id).text == data.decode()
        b = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert b.status == "validating"
        b = sdk.batches.retrieve(b.id)
        assert b.status == "completed" and b.request_counts.completed == 4
        out = [json.loads(x) for x in sdk.files.content(b.output_file_id).text.splitlines()]
        assert sorted(o["custom_id"] for o in out) == ["c0", "c1", "c2", "c3"]
        usage = [o["response"]["body"]["usage"] for o in out]
        cached = sorted(u["prompt_tokens_details"]["cached_tokens"] for u in usage)
        assert cached[0] == 0 and cached[1] > 0.9 * usage[0]["prompt_tokens"]  # the repeated prefix
        # online too: the same question again reads its prefix from the prompt cache
        r = sdk.chat.completions.create(**body)
        assert r.usage.prompt_tokens_details.cached_tokens > 0
        # a bounded prompt cache forgets the least recently used prefixes
        srv.control(prefix_cache_blocks=1)
        system = {"role": "system", "content": "Task id: logicality. " + "Other text. " * 200}
        other = [system, body["messages"][1]]
        sdk.chat.completions.create(**{**body, "messages": other})
        assert sdk.chat.completions.create(**body).usage.prompt_tokens_details.cached_tokens == 0
        srv.control(prefix_cache_blocks=0)
        srv.control(batch_fail=True)
        b2 = sdk.batches.retrieve(
            sdk.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        )
        assert b2.status == "failed" and b2.output_file_id is None and b2.errors.data[0].code
        srv.control(batch_fail=False, batch_expire=True)
        b3 = sdk.batches.retrieve(
            sdk.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        )
        assert b3.status == "expired" and b3.request_counts.completed == 2
        errs = sdk.files.content(b3.error_file_id).text.splitlines()
        assert len(errs) == 2 and json.loads(errs[0])["error"]["code"] == "batch_expired"
        assert srv.stats()["batches"]["created"] == 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server, one data set (1 prompt, 4 responses) and its online baseline, shared by the tests below:
    rows name the endpoint, so byte-identical rows need the same server. Each test resets it first."""
    d = tmp_path_factory.mktemp("world")
    p, s = write_data(d, 1)
    with FakeJudgeServer() as srv:
        r = run(cmd(p, s, d / "online", srv.url, "--price-as", "gpt-4o-mini"))
        assert r.returncode == 0, r.stderr
        yield srv, p, s, d / "online"


def fresh(srv: FakeJudgeServer, **faults) -> None:
    srv.control(**{"batch_delay_s": 0, "batch_fail": False, "batch_expire": False, "batch_500_fraction": 0,
                   **faults})
    srv.reset()


def test_three_executors_give_byte_identical_rows_and_switching_reuses_the_cache(world, tmp_path) -> None:
    srv, p, s, online = world
    fresh(srv)
    r = run(cmd(p, s, tmp_path / "batch", srv.url, "--executor", "openai-batch", *POLL))
    assert r.returncode == 0, r.stderr
    sb = summary(tmp_path / "batch")
    assert sb["executor"]["name"] == "openai-batch" and sb["executor"]["batches_submitted"] >= 2
    assert sb["calls"] == summary(online)["calls"]
    assert srv.stats()["batches"]["created"] == sb["executor"]["waves"]
    assert sb["cost_usd"] is None and "unknown price" in sb["price"]["note"]  # fake-judge has no price
    # batch-file: each run writes the next wave and leaves its responses pending (exit 1)
    out = tmp_path / "file"
    for _ in range(6):
        r = run(cmd(p, s, out, srv.url, "--executor", "batch-file"))
        if r.returncode == 0:
            break
        assert r.returncode == 1 and "vllm run-batch -i" in r.stderr, r.stderr
        assert answer_batch_files(out, first=_ == 0) == 1
    assert r.returncode == 0, r.stderr
    # switching executor mid-run: a batch run on the online run's cache pays nothing
    cache = str(online / "judge_cache.sqlite")
    r = run(cmd(p, s, tmp_path / "again", srv.url, "--executor", "openai-batch", *POLL, "--cache", cache))
    assert r.returncode == 0 and summary(tmp_path / "again")["calls"] == 0
    assert lines(online) == lines(tmp_path / "batch") == lines(out) == lines(tmp_path / "again")
    # the per-row accounting (prompt-cached tokens: timing- and executor-dependent) is beside the rows
    for d, name in ((online, "online"), (tmp_path / "batch", "openai-batch"), (out, "batch-file")):
        usage = [json.loads(x) for x in (d / "usage.jsonl").read_text().splitlines()]
        assert [u["id"] for u in usage] == [f"p0-{k}" for k in range(4)]
        assert {u["executor"] for u in usage} == {name}


def test_killed_batch_run_resumes_polling_the_same_batch(world, tmp_path) -> None:
    srv, p, s, online = world
    fresh(srv, batch_delay_s=3600)  # the first batch stays in progress until released
    out = tmp_path / "out"
    proc = subprocess.Popen(
        cmd(p, s, out, srv.url, "--executor", "openai-batch", *POLL),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list((out / "batches").glob("batch-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a few polls
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = list((out / "batches").glob("batch-*.json"))
    assert len(state) == 1 and srv.stats()["batches"]["created"] == 1
    srv.control(batch_delay_s=0)
    r = run(cmd(p, s, out, srv.url, "--executor", "openai-batch", *POLL))
    assert r.returncode == 0, r.stderr
    assert "resuming batch batch_fake_" in r.stderr
    st, sm = srv.stats(), summary(out)
    # one submission per wave in all: the in-flight one was polled again, never created twice
    assert st["batches"]["created"] == sm["executor"]["waves"] == 2
    assert sm["executor"]["batches_resumed"] == 1 and sm["executor"]["batches_submitted"] == 1
    assert max(st["answered"].values()) == 1  # no question paid twice
    assert lines(out) == lines(online)


@pytest.mark.parametrize("fault", ["batch_fail", "batch_expire"])
def test_failed_or_expired_batch_leaves_responses_pending_then_a_rerun_finishes(
    world, tmp_path, fault
) -> None:
    srv, p, s, online = world
    fresh(srv, **{fault: True})
    out = tmp_path / "out"
    r = run(cmd(p, s, out, srv.url, "--executor", "openai-batch", *POLL))
    assert r.returncode == 1, r.stderr
    assert summary(out)["pending"] == 4 and "Traceback" not in r.stderr
    assert ("failed" if fault == "batch_fail" else "batch_expired") in r.stderr
    assert not list((out / "batches").glob("batch-*.json"))  # nothing in flight: the next run resubmits
    srv.control(**{fault: False})
    r = run(cmd(p, s, out, srv.url, "--executor", "openai-batch", *POLL))
    assert r.returncode == 0, r.stderr
    assert max(srv.stats()["answered"].values()) == 1  # an expired batch's answers are not asked again
    assert lines(out) == lines(online)


def test_batch_lines_answered_500_are_asked_again_in_later_waves_within_the_budget(world, tmp_path) -> None:
    """Issue 19 case 11. Before: a run whose batch answered some lines with HTTP 500 exited 1 ("the batch
    gave no answer for N response(s) ... re-run to ask again"). Now those lines join the next wave, as the
    online transport retries a 500, within the same budget (--max-attempts asks, --retry-budget seconds)."""
    srv, p, s, online = world
    fresh(srv, batch_500_fraction=0.2)  # each ask of a line fails with p = 0.2, drawn afresh per ask
    out = tmp_path / "out"
    r = run(cmd(p, s, out, srv.url, "--executor", "openai-batch", *POLL, "--max-attempts", "10"))
    assert r.returncode == 0, r.stderr
    st, sm = srv.stats(), summary(out)
    assert st["batches"]["500"] > 0 and sm["executor"]["retried"] == st["batches"]["500"]
    assert sm["pending"] == 0 and sm["scored"] + sm["failed"] == 4
    assert max(st["answered"].values()) == 1  # a line answered once is never asked again
    assert lines(out) == lines(online)
    # past the budget the responses stay pending, said in one line, like an online run's
    fresh(srv, batch_500_fraction=1.0)
    out = tmp_path / "out2"
    r = run(cmd(p, s, out, srv.url, "--executor", "openai-batch", *POLL, "--max-attempts", "2"))
    assert r.returncode == 1 and summary(out)["pending"] == 4
    assert "gave up after 2 batch attempts" in r.stderr and "Traceback" not in r.stderr
    assert srv.stats()["batches"]["created"] == 2  # the first wave, then its one re-ask


def test_money_in_summary(world, tmp_path) -> None:
    srv, p, s, online = world
    fresh(srv)
    a = summary(online)
    price = load_table()["gpt-4o-mini"]
    assert a["price"]["known"] and a["price"]["as_of"] and a["price"]["model"] == "gpt-4o-mini"
    assert a["price"]["verified"] is False and a["price"]["checked"]  # only third-party copies were read
    want = price.online(a["prompt_tokens"], a["cached_tokens"], a["completion_tokens"])
    assert a["cost_usd"] == pytest.approx(want, abs=1e-8) and a["cost_usd"] > 0
    saved_pc = a["cached_tokens"] * (price.input - price.cached_input) / 1e6
    assert (
        a["saved_usd"]["prompt_cache"] == pytest.approx(saved_pc, abs=1e-8) and a["saved_usd"]["batch"] == 0
    )
    # cached tokens per row (usage.jsonl): the server's counts; helpfulness and logicality answers belong
    # to one response each, so the rows add up to the summary's
    usage = [json.loads(x) for x in (online / "usage.jsonl").read_text().splitlines()]
    for d in ("helpfulness", "logicality"):
        per_row = [u["by_dimension"][d]["cached_tokens"] for u in usage]
        assert sum(per_row) == a["by_dimension"][d]["cached_tokens"] > 0
    assert all(0 < u["cached_tokens"] <= u["prompt_tokens"] for u in usage)
    df = traces.load_scored(str(online))
    assert df.cached_tokens.tolist() == [u["cached_tokens"] for u in usage]
    assert df.prompt_tokens.tolist() == [u["prompt_tokens"] for u in usage]
    html = traces.render_trace(df.iloc[0])
    assert f"(prompt-cached {usage[0]['by_dimension']['helpfulness']['cached_tokens']})" in html
    cache = str(tmp_path / "b.sqlite")
    extra = ("--price-as", "gpt-4o-mini", "--cache", cache)
    r = run(cmd(p, s, tmp_path / "b", srv.url, "--executor", "openai-batch", *POLL, *extra))
    b = summary(tmp_path / "b")
    assert r.returncode == 0 and b["saved_usd"]["batch"] > 0
    full = price.online(b["prompt_tokens"], b["cached_tokens"], b["completion_tokens"])
    assert b["cost_usd"] == pytest.approx(full * price.batch_discount, abs=1e-8)
    assert b["saved_usd"]["batch"] == pytest.approx(full * (1 - price.batch_discount), abs=1e-8)
    # a run answered from the cache pays nothing and says what the response cache saved
    r = run(cmd(p, s, tmp_path / "c", srv.url, *extra))
    c = summary(tmp_path / "c")
    assert r.returncode == 0 and c["cost_usd"] == 0 and c["saved_usd"]["response_cache"] > 0
    bad = tmp_path / "prices.json"
    bad.write_text('{"models": {"m": {"input": -1}}}')
    r = run(cmd(p, s, tmp_path / "e", srv.url, "--prices", str(bad)))
    assert r.returncode == 2 and "models.m.input must be a number >= 0" in r.stderr
    assert not (tmp_path / "e" / "scored.jsonl").exists()
    with pytest.raises(JudgeInputError):
        load_table(tmp_path / "missing.json")


def test_api_key_never_in_batch_files_state_or_logs(tmp_path) -> None:
    key = "sk-test-BATCH-SECRET-77aa"
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer(require_key=key) as srv:
        r1 = run(cmd(p, s, tmp_path / "b", srv.url, "--executor", "openai-batch", *POLL), OPENAI_API_KEY=key)
        assert r1.returncode == 0, r1.stderr
        r2 = run(cmd(p, s, tmp_path / "f", srv.url, "--executor", "batch-file"), OPENAI_API_KEY=key)
        assert r2.returncode == 1
    for text in (r1.stdout, r1.stderr, r2.stdout, r2.stderr):
        assert key not in text
    files = [f for d in ("b", "f") for f in (tmp_path / d).rglob("*") if f.is_file()]
    assert any("batches" in str(f) for f in files)
    for f in files:
        assert key.encode() not in f.read_bytes(), f


def test_dry_run_estimate_is_within_10_percent_of_the_real_run(world, tmp_path) -> None:
    _, p, s, online = world
    _check_dry_run(p, s, tmp_path / "out", summary(online))


def test_dry_run_on_the_longreward_example(tmp_path) -> None:
    p = shared_path("data/longreward_example/prompts.jsonl")
    s = shared_path("data/longreward_example/samples.jsonl")
    with FakeJudgeServer() as srv:
        r = run(cmd(p, s, tmp_path / "real", srv.url))
        assert r.returncode == 0, r.stderr
    _check_dry_run(p, s, tmp_path / "out", summary(tmp_path / "real"))


def _check_dry_run(p: Path, s: Path, out: Path, real: dict) -> None:
    """--dry-run sends nothing, writes nothing, and is within 10% of the calls and tokens of ``real``."""
    r = run(cmd(p, s, out, "http://127.0.0.1:9/v1", "--dry-run", "--price-as", "gpt-4o-mini"))
    assert r.returncode == 0, r.stderr
    assert not out.exists() and "nothing was sent" in r.stderr
    est = json.loads(r.stdout)
    for k in ("calls", "prompt_tokens"):
        assert abs(est[k] - real[k]) <= 0.1 * real[k], (k, est[k], real[k])
    total_est = est["prompt_tokens"] + est["completion_tokens"]
    total = real["prompt_tokens"] + real["completion_tokens"]
    assert abs(total_est - total) <= 0.1 * total
    assert est["cost_usd"] > 0 and est["price"]["model"] == "gpt-4o-mini"


def test_batch_output_lines_map_to_what_the_online_client_would_do() -> None:
    from judge.errors import RequestRejected, SchemaUnsupported, TransportExhausted, UnusableAnswer
    from judge.executors import parse_output

    def line(cid: str, code: int | None, body: object = None, error: object = None) -> str:
        resp = None if code is None else {"status_code": code, "body": body}
        return json.dumps({"custom_id": cid, "response": resp, "error": error})

    ok = {
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}},
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
    }
    text = "\n".join(
        [
            line("ok", 200, ok),
            line("slow", 429, {"error": {"message": "rate limit"}}),
            line("schema", 400, {"error": {"message": "response_format json_schema is not supported"}}),
            line("bad", 400, {"error": {"message": "context too long"}}),
            line("garbage", 200, {"no": "choices"}),
            line("expired", None, error={"code": "batch_expired", "message": "too late"}),
            line("stranger", 200, ok),  # not asked in this job: ignored
            '{"custom_id": "torn", "respo',  # a torn line answers nothing
        ]
    )
    keys = {"ok", "slow", "schema", "bad", "garbage", "expired", "torn"}
    params = {k: {"response_format": {"type": "json_schema"}} for k in keys}
    got = parse_output(text, keys, params, "auto")
    assert got["ok"] == ("hi", 9, 2, 4)
    assert isinstance(got["slow"], TransportExhausted) and not isinstance(got["slow"], UnusableAnswer)
    assert isinstance(got["schema"], SchemaUnsupported)
    assert isinstance(got["bad"], RequestRejected)
    assert isinstance(got["garbage"], UnusableAnswer)
    assert isinstance(got["expired"], TransportExhausted) and "batch_expired" in str(got["expired"])
    assert "stranger" not in got and "torn" not in got
    # no fallback asked for
    assert isinstance(parse_output(text, keys, params, "json")["schema"], RequestRejected)


def test_online_schedule_keeps_prefix_sharing_calls_together() -> None:
    """Responses written sample-major (p0-0, p1-0, p0-1, …) are judged prompt by prompt, and a response's
    support checks reach the server back to back (concurrency 1: the wire order is the queue order)."""
    import asyncio
    import re

    from judge.client import JudgeClient, JudgeConfig
    from judge.score.scorer import ScoreOptions, Scorer
    from tests.judge.test_score import CONTEXT

    facts = ["The stone bridge was rebuilt in 1822", "Railways reached Ashford in 1868",
             "The market hall became a library in 1901"]
    prompts = {f"p{p}": {"id": f"p{p}", "context": CONTEXT, "query": f"What changed in Ashford? ({p})"}
               for p in range(2)}
    samples = [{"id": f"p{p}-{k}", "prompt_id": f"p{p}", "query": prompts[f"p{p}"]["query"],
                "response": " ".join(f"{f} [r{p}-{k}]." for f in facts), "sampler": {}}
               for k in range(3) for p in range(2)]
    marker = re.compile(r"\[r(\d-\d)\]")
    wire: list[tuple[str, set[str]]] = []  # (kind, responses named in the request) in the order sent

    async def go() -> None:
        with FakeJudgeServer() as srv:
            client = JudgeClient(JudgeConfig(base_url=srv.url, model="fake-judge", concurrency=1))
            create = client.transport.sdk.chat.completions.create

            async def recording(**params):
                text = " ".join(m["content"] for m in params["messages"])
                kind = re.search(r"Task id: (\w+)", text).group(1)
                wire.append((kind, {f"p{m}" for m in marker.findall(text)}))
                return await create(**params)

            client.transport.sdk.chat.completions.create = recording
            try:
                await Scorer(client, ScoreOptions(max_items=2)).score_many(prompts, samples)
            finally:
                await client.close()

    asyncio.run(go())
    first_seen = list(dict.fromkeys(r for _, names in wire for r in sorted(names)))
    assert first_seen == ["p0-0", "p0-1", "p0-2", "p1-0", "p1-1", "p1-2"]  # prompt by prompt
    support = [(i, next(iter(names))) for i, (kind, names) in enumerate(wire) if kind == "fact_support"]
    for rid in {r for _, r in support}:
        at = [i for i, r in support if r == rid]
        assert len(at) == len(facts) and at == list(range(at[0], at[0] + len(at))), (rid, wire)

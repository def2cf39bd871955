"""`lr_jax.sample --engine openai` against a real local HTTP server speaking OpenAI's protocol (the fake
server's scripted policy, `judge.fake_server.policy`): the rows, ``n``, the fallback without ``n``, resume,
prompts the engine rejects, and one-line errors for a wrong model, a bad key and an unreachable server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from judge.fake_server import FakeJudgeServer
from lr_jax.data.tokenization import prompt_text
from lr_jax.sample import SampleError, SampleOptions, run
from lr_jax.sample.cli import main
from lr_jax.sample.engine import request_seed

KEY = "sk-test-engine-7f3a9c"  # the server's key: must never appear in any output
PROMPTS = [
    {"id": "p0", "context": "The capital of Veloria is Glenford.", "query": "What is Veloria's capital?"},
    {"id": 17, "context": "Ashford lies on the river Tay.", "query": "Which river runs through Ashford?"},
    {"id": "p2", "context": "", "query": "Name a colour of the sky."},
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeJudgeServer]:
    with FakeJudgeServer(served_models=["policy-7b"], require_key=KEY) as s:
        yield s


@pytest.fixture
def srv(server: FakeJudgeServer) -> Iterator[FakeJudgeServer]:
    server.reset()
    yield server
    server.control(accept_n=True, max_prompt_chars=0)


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return prompts, tmp_path / "samples.jsonl"


def _opts(srv: FakeJudgeServer, prompts: Path, out: Path, **kw: Any) -> SampleOptions:
    base: dict[str, Any] = dict(engine="openai", base_url=srv.url, served_model="policy-7b",
                                prompts=str(prompts), out=str(out), num_samples=3, temperature=0.8,
                                top_p=0.9, seed=5, max_new_tokens=6, no_progress=True)
    return SampleOptions(**{**base, **kw})


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def _requests(srv: FakeJudgeServer) -> list[dict[str, Any]]:
    return [srv.request(h) for h in srv.stats()["answered"]]


def test_rows_are_samples_rows_asked_with_n_and_the_sampler_template(srv, files) -> None:
    prompts, out = files
    stats = run(_opts(srv, prompts, out, logprobs=True))
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(f"{p['id']}-{k}" for p in PROMPTS for k in range(3))
    by_prompt = {str(p["id"]): p for p in PROMPTS}
    for r in rows:
        p = by_prompt[r["prompt_id"]]
        assert r["id"].startswith(f"{r['prompt_id']}-") and r["query"] == p["query"]
        assert r["sampler"] == {"model": "policy-7b", "temperature": 0.8, "top_p": 0.9, "seed": 5,
                                "engine": "openai"}
        # the scripted policy's tokens are words: the count and log-probs are per choice, not per request
        words = r["response"].split()
        assert r["num_tokens"] == len(words) == len(r["logprobs"]) <= 6
        assert r["finish_reason"] == "stop" or (r["finish_reason"] == "length" and len(words) == 6)
        assert all(isinstance(x, float) and x <= 0 for x in r["logprobs"])
    assert {r["finish_reason"] for r in rows} == {"stop", "length"}  # max_new_tokens reached the engine
    assert len({r["response"] for r in rows}) > 3  # n choices differ
    # one request per prompt, with n, the sampler's user message, and the decoding settings
    reqs = _requests(srv)
    assert stats.requests == len(reqs) == 3 and not stats.n_refused
    for q in reqs:
        p = next(p for p in PROMPTS if q["messages"][0]["content"] == prompt_text(p["context"], p["query"]))
        assert q["messages"] == [{"role": "user", "content": prompt_text(p["context"], p["query"])}]
        assert (q["model"], q["n"], q["temperature"], q["top_p"], q["max_tokens"], q["logprobs"]) == \
            ("policy-7b", 3, 0.8, 0.9, 6, True)
        assert q["seed"] == request_seed(5, str(p["id"]), 0)
    assert KEY not in out.read_text()


def test_a_server_without_n_is_asked_once_per_sample_and_says_so_once(srv, files, capsys) -> None:
    prompts, out = files
    srv.control(accept_n=False)
    stats = run(_opts(srv, prompts, out))
    rows = _rows(out)
    assert len(rows) == 9 and stats.n_refused and stats.requests == 9
    assert capsys.readouterr().err.count("does not give n choices") == 1
    reqs = [q for q in _requests(srv) if "n" not in q]
    assert len(reqs) == 9 and all("logprobs" not in q for q in reqs)  # one choice: usage counts its tokens
    assert sorted(q["seed"] for q in reqs) == sorted(request_seed(5, str(p["id"]), k)
                                                      for p in PROMPTS for k in range(3))
    for r in rows:
        assert r["num_tokens"] == len(r["response"].split())


def test_greedy_asks_once_per_prompt(srv, files) -> None:
    """Every greedy sample is the one greedy answer (vLLM refuses n > 1 at temperature 0)."""
    prompts, out = files
    stats = run(_opts(srv, prompts, out, temperature=0.0))
    rows = _rows(out)
    assert len(rows) == 9 and stats.requests == len(_requests(srv)) == 3 and not stats.n_refused
    assert all("n" not in q and q["temperature"] == 0.0 for q in _requests(srv))
    for p in PROMPTS:
        assert len({r["response"] for r in rows if r["prompt_id"] == str(p["id"])}) == 1


def test_resume_after_a_partial_file_asks_only_for_the_missing_samples(srv, files, capsys) -> None:
    prompts, out = files
    run(_opts(srv, prompts, out))
    full = {r["id"]: r for r in _rows(out)}
    lines = out.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if json.loads(ln)["prompt_id"] != "17"][:4]  # p0/p2 partly, 17 not at all
    out.write_text("".join(keep) + lines[-1][:25])  # + a torn last line (a kill mid-write)
    srv.reset()
    stats = run(_opts(srv, prompts, out))
    assert stats.torn_bytes_dropped == 25 and "dropped a torn last line" in capsys.readouterr().err
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(full)  # each id once, the torn line gone
    kept = {json.loads(ln)["id"] for ln in keep}
    want = {}
    for p in PROMPTS:
        missing = [k for k in range(3) if f"{p['id']}-{k}" not in kept]
        if missing:
            want[str(p["id"])] = (len(missing), request_seed(5, str(p["id"]), missing[0]))
    got = {}
    for q in _requests(srv):
        p = next(p for p in PROMPTS if q["messages"][0]["content"] == prompt_text(p["context"], p["query"]))
        got[str(p["id"])] = (q.get("n", 1), q["seed"])
    assert got == want and stats.rows_written == 9 - len(kept)
    assert all(r["num_tokens"] == len(r["response"].split()) for r in rows)  # per choice, also with n
    assert run(_opts(srv, prompts, out)).rows_written == 0  # nothing left: no request at all


def test_a_prompt_the_engine_rejects_is_skipped_and_named(srv, files, capsys) -> None:
    prompts, out = files
    srv.control(max_prompt_chars=60)  # p0 and 17 are longer (vLLM: "maximum context length")
    stats = run(_opts(srv, prompts, out))
    assert sorted(stats.rejected) == ["17", "p0"] and stats.rows_written == 3
    assert {r["prompt_id"] for r in _rows(out)} == {"p2"}
    err = capsys.readouterr().err
    assert "rejected prompt 'p0'" in err and "maximum context length" in err
    assert not stats.n_refused  # a rejected prompt is not taken for a server without n


def _cli(*args: str) -> int:
    return main(["--no-progress", *args])


def test_wrong_model_bad_key_and_unreachable_server_are_one_line(srv, files, tmp_path, capsys,
                                                                 monkeypatch) -> None:
    prompts, out = files
    base = ["--engine", "openai", "--prompts", str(prompts), "--out", str(out)]
    assert _cli(*base, "--base-url", srv.url, "--served-model", "policy-8b") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and srv.url in err and "'policy-8b'" in err and "does not exist" in err
    wrong = tmp_path / "key"
    wrong.write_text("sk-wrong-key-123\n")
    assert _cli(*base, "--base-url", srv.url, "--served-model", "policy-7b",
                "--api-key-file", str(wrong)) == 2
    cap = capsys.readouterr()
    assert "(401)" in cap.err and "sk-wrong-key-123" not in cap.err + cap.out and KEY not in cap.err + cap.out
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    assert _cli(*base, "--base-url", url, "--served-model", "policy-7b", "--max-attempts", "2",
                "--retry-budget", "5") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert url in err and "'policy-7b'" in err and "retry budget" in err and "Connect" in err
    assert not out.exists() or out.read_text() == ""  # nothing written, nothing lost
    # options are checked before any file or request
    for extra, why in ((["--base-url", srv.url], "--served-model"),
                       (["--base-url", "localhost:8000", "--served-model", "m"], "not an http(s) URL"),
                       (["--base-url", srv.url, "--served-model", "m", "--max-prompt-tokens", "9"],
                        "--max-prompt-tokens 9")):
        assert _cli(*base, *extra) == 2
        assert why in capsys.readouterr().err
    assert _cli("--prompts", str(prompts), "--out", str(out)) == 2
    assert "--model is required" in capsys.readouterr().err
    with pytest.raises(SampleError, match="--served-model"):
        SampleOptions(engine="openai", base_url=srv.url, prompts="p", out="o")

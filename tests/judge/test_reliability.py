"""Nothing silent, nothing hangs, no tracebacks: `judge.score` and `judge.pairs` against a real fake-server
process — malformed server answers, stale rows, one writer per --out, partial extraction failures, option
validation, unreachable servers, bad paths and out-of-range rewards. Most runs call ``main()`` in-process
(the same code as the console script, without a second interpreter start)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from judge import pairs, score
from judge.fake_server import FakeJudgeServer
from judge.schema import DIMENSIONS, validate_scored_row
from judge.score import cli as score_cli
from lr_jax.options import from_args
from tests.helpers.paths import ROOT
from tests.helpers.scored import write_scored_dir
from tests.judge.test_score import CONTEXT, cmd, rows, write_data

FAST = ("--max-attempts", "2", "--backoff", "0.01")


def judge(capsys, prompts: Path, samples: Path, out: Path, url: str, *extra: str) -> tuple[int, str, str]:
    """``python -m judge.score ...`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = score_cli.main(cmd(prompts, samples, out, url, *extra)[3:])
    except SystemExit as e:  # argparse
        code = int(e.code or 0)
    got = capsys.readouterr()
    return code, got.out, got.err


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------- malformed answers


@pytest.mark.parametrize("mode", ["truncated_json", "wrong_content_type", "empty_body", "error_object"])
def test_a_malformed_answer_fails_one_dimension_never_the_run(tmp_path, capsys, mode) -> None:
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer(bad_body=mode, bad_body_kinds=["logicality"]) as srv:
        code, _, err = judge(capsys, p, s, tmp_path / "out", srv.url, *FAST)
        assert srv.stats()["status"][f"200-{mode}"] == 8  # 4 responses x 2 attempts
    assert code == 0, err
    got = rows(tmp_path / "out")
    assert len(got) == 4 and "Traceback" not in err
    for x in got:
        validate_scored_row(x)
        lg = x["trace"]["logicality"]
        assert lg["status"] == "failed" and lg["score"] is None
        assert "no usable answer from the judge server" in lg["error"]
        assert all(x["trace"][d]["status"] == "ok" for d in DIMENSIONS if d != "logicality")
        assert x["status"] == "scored"  # reward = mean of the other three, never a number from a failure


def test_every_third_answer_malformed_still_scores_everything(tmp_path, capsys) -> None:
    p, s = write_data(tmp_path, 1)
    with FakeJudgeServer(bad_body="truncated_json", bad_body_every=3) as srv:
        # One request at a time: a retry is the next request, and of 3 consecutive ones only one is malformed,
        # so every question gets an answer (concurrent requests could land all 4 attempts on bad numbers).
        code, _, err = judge(capsys, p, s, tmp_path / "out", srv.url, "--max-attempts", "4", "--backoff", "0",
                             "--concurrency", "1")
        assert srv.stats()["status"]["200-truncated_json"] > 0
    assert code == 0, err
    got = rows(tmp_path / "out")
    assert len(got) == 4 and all(x["status"] == "scored" for x in got)
    assert all(x["trace"][d]["status"] == "ok" for x in got for d in DIMENSIONS)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["transport_retries"] > 0


# ------------------------------------------------------------------------------------ stale rows / provenance


def test_rows_from_another_judge_options_or_input_are_never_reused_silently(tmp_path, capsys) -> None:
    p, s = write_data(tmp_path, 1)
    out = tmp_path / "out"
    with FakeJudgeServer() as srv:
        assert judge(capsys, p, s, out, srv.url)[0] == 0
        before = (out / "scored.jsonl").read_bytes()
        summary_before = (out / "summary.json").read_text()
        fp = rows(out)[0]["trace"]["fingerprint"]
        assert fp["judge"]["model"] == "fake-judge" and fp["judge"]["options"]["max_statements"] == 30
        assert set(fp) >= {"sha256", "judge_sha256", "context_sha256", "query_sha256", "response_sha256"}

        def refused(*extra: str, prompts: Path = p, samples: Path = s) -> str:
            code, _, err = judge(capsys, prompts, samples, out, srv.url, *extra)
            assert code == 2, err
            assert (out / "scored.jsonl").read_bytes() == before  # nothing appended
            assert (out / "summary.json").read_text() == summary_before  # still describes the file
            line = one_line(err)
            assert "--rescore-changed" in line
            return line

        assert "judge model 'fake-judge' -> 'judge-b'" in refused("--model", "judge-b")
        assert "option max_statements 30 -> 5" in refused("--max-statements", "5")
        srv.reset()
        s2 = tmp_path / "s2.jsonl"
        s2.write_text(s.read_text().replace("Railways reached", "Trains reached"))
        assert "response text changed (1 row(s), e.g. 'p0-0')" in refused(samples=s2)
        p2 = tmp_path / "p2.jsonl"
        p2.write_text(p.read_text().replace("wool market", "fish market"))
        assert "prompt context text changed (4 row(s)" in refused(prompts=p2)
        assert srv.stats()["requests"] == 0  # refused before any judge call
        # transport options do not make a row stale
        code, stdout, _ = judge(capsys, p, s, out, srv.url, "--concurrency", "3", "--parse-retries", "5")
        assert code == 0 and "already done 4" in stdout
        # --rescore-changed judges them again with the new judge; the summary describes the file
        code, stdout, err = judge(capsys, p, s, out, srv.url, "--model", "judge-b", "--rescore-changed")
        assert code == 0, err
        assert "scored 4" in stdout
    lines = rows(out)
    assert len(lines) == 8  # appended; readers keep the last line per id
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge_model"] == "judge-b" and summary["rescored_changed"] == 4
    assert summary["file"]["judge_models"] == {"judge-b": 4} and summary["rows_in_file"] == 4
    assert summary["file"]["producers"] == {"this_run": 4, "other": 0, "unknown": 0}


def test_rows_without_fingerprint_are_unknown_producers(tmp_path, capsys) -> None:
    p, s = write_data(tmp_path, 1)
    out = tmp_path / "out"
    with FakeJudgeServer() as srv:
        assert judge(capsys, p, s, out, srv.url)[0] == 0
        old = rows(out)
        for x in old:  # what judge.score wrote before fingerprints existed
            del x["trace"]["fingerprint"]
        (out / "scored.jsonl").write_text("".join(json.dumps(x) + "\n" for x in old))
        code, _, err = judge(capsys, p, s, out, srv.url)
        assert code == 2 and "no fingerprint" in one_line(err) and "producer unknown" in err
        srv.reset()
        code, stdout, err = judge(capsys, p, s, out, srv.url, "--rescore-changed")
        assert code == 0 and "scored 4" in stdout, err
        assert srv.stats()["requests"] == 0  # same judge, same questions: every answer from the cache
    assert all("fingerprint" in x["trace"] for x in rows(out)[4:])


# --------------------------------------------------------------------------------------------- one writer


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_one_writer_per_out_and_stale_locks_are_taken_over(tmp_path, capsys) -> None:
    p, s = write_data(tmp_path, 1)
    out = tmp_path / "out"
    lock = out / ".judge.score.lock"
    key = "sk-lock-test-SECRET"
    with FakeJudgeServer(latency_s=0.4) as srv:
        proc = subprocess.Popen(
            cmd(p, s, out, srv.url, "--concurrency", "1", "--max-items", "1"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OPENAI_API_KEY": key},
        )
        try:
            deadline = time.monotonic() + 60
            while not lock.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            holder = json.loads(lock.read_text())
            assert set(holder) == {"pid", "host", "started"} and holder["pid"] == proc.pid
            assert key not in lock.read_text()
            code, _, err = judge(capsys, p, s, out, srv.url)
            assert code == 2
            line = one_line(err)
            assert f"being written by another judge.score (pid {proc.pid} on host" in line
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # dies holding the lock
            proc.wait()
        assert lock.exists()
        srv.control(latency_s=0.0)
        code, _, err = judge(capsys, p, s, out, srv.url)
        assert code == 0, err
        assert f"taking over a stale lock {lock} (pid {proc.pid}" in err
        assert not lock.exists()  # released at the end
        assert sorted(x["id"] for x in rows(out)) == [f"p0-{k}" for k in range(4)]
        # a stale lock written by hand (dead pid, this host) is taken over too; another host's is refused
        lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}))
        code, _, err = judge(capsys, p, s, out, srv.url)
        assert code == 0 and "taking over a stale lock" in err
        lock.write_text(json.dumps({"pid": 1, "host": "other-host", "started": 0}))
        code, _, err = judge(capsys, p, s, out, srv.url)
        assert code == 2 and "host other-host" in one_line(err) and "delete the lock file" in err


# ------------------------------------------------------------------------------ partial completeness failure


def test_a_failed_chunk_extraction_fails_completeness_and_retry_failed_extracts_it(tmp_path, capsys) -> None:
    prompts, samples = tmp_path / "p.jsonl", tmp_path / "s.jsonl"
    marker = "Zebra crossings were painted in 1955."
    ctx = CONTEXT + " " + marker
    prompts.write_text(json.dumps({"id": "p0", "context": ctx, "query": "How did Ashford change?"}) + "\n")
    _, s = write_data(tmp_path, 1)
    samples.write_text(s.read_text())
    out = tmp_path / "out"
    extra = ("--completeness-chunk-tokens", "30")
    with FakeJudgeServer(garble_document_with="Zebra crossings") as srv:
        code, _, err = judge(capsys, prompts, samples, out, srv.url, *extra)
        assert code == 0, err
        first = rows(out)
        for x in first:
            validate_scored_row(x)
            c = x["trace"]["completeness"]
            assert c["status"] == "failed" and c["score"] is None  # not "nothing relevant"
            assert "information extraction failed for 1 of" in c["error"] and "--retry-failed" in c["error"]
            bad = [ch for ch in c["chunks"] if "error" in ch]
            assert len(bad) == 1  # the chunk holding the marker; the others were extracted
            assert x["scores"]["completeness"] is None
        srv.control(garble_document_with="")
        srv.reset()
        code, _, err = judge(capsys, prompts, samples, out, srv.url, *extra, "--retry-failed")
        assert code == 0, err
        # only the failed chunk is extracted again (the others come from the cache), then each response
        assert srv.stats()["by_kind"] == {"info_extract": 1, "completeness": 4}
    for x in rows(out)[4:]:
        c = x["trace"]["completeness"]
        assert c["status"] == "ok" and c["error"] is None and not any("error" in ch for ch in c["chunks"])


# ----------------------------------------------------------------------------------- options: no hangs


@pytest.mark.parametrize(
    ("flag", "value", "match"),
    [
        ("--concurrency", "0", "must be >= 1, got 0"),
        ("--concurrency", "-1", "must be >= 1, got -1"),
        ("--max-items", "0", "must be >= 1, got 0"),
        ("--rpm", "-5", "must be > 0, got -5.0"),
        ("--tpm", "0", "must be > 0"),
        ("--rpm", "nan", "must be a finite number"),
        ("--timeout", "inf", "must be a finite number"),
        ("--retry-budget", "0", "must be > 0"),
        ("--max-attempts", "0", "must be >= 1"),
        ("--backoff", "-1", "must be >= 0"),
        ("--item-timeout", "0", "must be > 0"),
        ("--temperature", "3", "must be >= 0 and <= 2"),
        ("--parse-retries", "-1", "must be >= 0"),
        ("--max-tokens", "0", "must be >= 1"),
        ("--max-statements", "0", "must be >= 1"),
        ("--top-k", "0", "must be >= 1"),
        ("--retrieval-chunk-tokens", "0", "must be >= 1"),
        ("--completeness-chunk-tokens", "-3", "must be >= 1"),
        ("--limit", "-1", "must be >= 1"),
        ("--limit", "0", "must be >= 1, got 0"),  # issue 19 case 10: exited 0 having judged nothing
        ("--batch-poll", "nan", "must be a finite number"),
        ("--batch-max-requests", "0", "must be >= 1"),
        ("--concurrency", "two", "must be an integer, got 'two'"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(tmp_path, capsys, flag, value, match) -> None:
    p, s = write_data(tmp_path, 1)
    t = time.monotonic()
    code, _, err = judge(capsys, p, s, tmp_path / "out", "http://127.0.0.1:9/v1", flag, value)
    assert code == 2 and time.monotonic() - t < 5
    line = one_line(err)
    assert f"argument {flag}: {match}" in line, line
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_api_validates_like_the_cli() -> None:
    from judge.client import JudgeConfig
    from judge.schema import JudgeInputError

    with pytest.raises(JudgeInputError, match=r"concurrency \(--concurrency\) must be >= 1, got 0"):
        JudgeConfig(base_url="http://x/v1", model="m", concurrency=0)
    with pytest.raises(JudgeInputError, match=r"rpm \(--rpm\) must be a finite number"):
        JudgeConfig(base_url="http://x/v1", model="m", rpm=float("nan"))
    with pytest.raises(JudgeInputError, match=r"max_items \(--max-items\) must be >= 1"):
        score.ScoreOptions(max_items=0)
    with pytest.raises(pairs.PairsInputError, match=r"min_gap \(--min-gap\) must be a finite number"):
        pairs.PairsOptions(min_gap=float("inf"))


def test_flags_are_generated_from_the_option_dataclasses() -> None:
    """Each default exists once: the parser's defaults are the dataclasses' defaults, and every flag the
    CLIs had before is still there."""
    from judge.client import JudgeConfig

    args = score_cli.build_parser().parse_args(
        ["--prompts", "p", "--samples", "s", "--out", "o", "--base-url", "http://x/v1", "--model", "m"]
    )
    assert from_args(JudgeConfig, args) == JudgeConfig(base_url="http://x/v1", model="m")
    assert from_args(score.ScoreOptions, args) == score.ScoreOptions()
    flags = {o for a in score_cli.build_parser()._actions for o in a.option_strings}
    old = [
        "--prompts", "--samples", "--out", "--work-dir", "--base-url", "--model", "--api-key-file",
        "--cache", "--temperature", "--retry-temperature", "--parse-retries", "--max-tokens",
        "--concurrency", "--rpm", "--tpm", "--timeout", "--max-attempts", "--retry-budget", "--backoff",
        "--item-timeout", "--structured", "--seed", "--tokenizer", "--retrieval-chunk-tokens", "--top-k",
        "--completeness-chunk-tokens", "--max-statements", "--retrieval", "--embedding-model",
        "--embedding-base-url", "--max-items", "--limit", "--retry-failed", "--no-progress",
    ]
    assert set(old) <= flags and "--api-key" not in flags  # a key is never a flag
    pargs = pairs.build_parser().parse_args(["--scored", "d", "--out", "o"])
    assert from_args(pairs.PairsOptions, pargs) == pairs.PairsOptions()
    pflags = {o for a in pairs.build_parser()._actions for o in a.option_strings}
    assert {"--scored", "--prompts", "--out", "--min-responses", "--min-gap", "--num-shards",
            "--compression", "--overwrite"} <= pflags


def test_empty_samples_file_is_refused(tmp_path, capsys) -> None:
    p, s = write_data(tmp_path, 1)
    s.write_text("\n")
    code, _, err = judge(capsys, p, s, tmp_path / "out", "http://127.0.0.1:9/v1")
    assert code == 2 and "no samples (the file is empty)" in one_line(err)


# ------------------------------------------------------------------------------------ unclear messages


def test_unreachable_server_says_so_with_the_cause(tmp_path, capsys) -> None:
    p, s = write_data(tmp_path, 1)
    t = time.monotonic()
    code, out, err = judge(capsys, p, s, tmp_path / "out", "http://127.0.0.1:9/v1", *FAST)
    assert code == 1 and time.monotonic() - t < 20
    assert "pending 4" in out
    line = one_line(err)
    assert "no answer from the judge server at 127.0.0.1:9" in line and "APIConnectionError" in line
    assert "4 response(s) left pending" in line


def test_unusable_output_paths_are_refused_before_any_work(tmp_path, capsys) -> None:
    _, s = write_data(tmp_path, 1)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with FakeJudgeServer() as srv:
        for out, match in ((afile, "is a file, not a directory"), (afile / "sub", "is a file, so")):
            code, _, err = judge(capsys, tmp_path / "missing.jsonl", s, out, srv.url)
            assert code == 2 and match in one_line(err) and "--out" in err  # not the missing prompts file
        assert srv.stats()["requests"] == 0
    d = tmp_path / "d"
    write_scored_dir(str(d), n_prompts=2, n_responses=5)
    for out, match in ((afile, "is a file, not a directory"), (afile / "sub", "is a file, so")):
        assert pairs.main(["--scored", str(d), "--out", str(out)]) == 2
        assert match in one_line(capsys.readouterr().err)


def test_unwritable_output_dir_is_refused(tmp_path, capsys) -> None:
    """/proc/self takes no new files even for root (os.access would say yes); a 0o555 dir, for non-root."""
    p, s = write_data(tmp_path, 1)
    code, _, err = judge(capsys, p, s, Path("/proc/self/judge-out"), "http://127.0.0.1:9/v1")
    assert code == 2 and "parent directory /proc/self is not writable" in one_line(err)
    assert pairs.main(["--scored", str(tmp_path), "--out", "/proc/self/pairs"]) == 2
    assert "is not writable" in one_line(capsys.readouterr().err)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            code, _, err = judge(capsys, p, s, ro, "http://127.0.0.1:9/v1")
            assert code == 2 and "directory is not writable" in one_line(err)
        finally:
            ro.chmod(0o755)


def test_pairs_input_mistakes_are_one_line(tmp_path, capsys) -> None:
    out = str(tmp_path / "pairs")
    # missing path, empty path, empty file
    assert pairs.main(["--scored", str(tmp_path / "nope"), "--out", out]) == 2
    assert "not found; pass --scored the directory judge.score wrote" in one_line(capsys.readouterr().err)
    assert pairs.main(["--scored", "", "--out", out]) == 2
    assert "--scored: empty path" in one_line(capsys.readouterr().err)
    d = tmp_path / "run"
    d.mkdir()
    assert pairs.main(["--scored", str(d), "--out", out]) == 2
    assert "directory holds no scored.jsonl" in one_line(capsys.readouterr().err)
    (d / "scored.jsonl").write_text("")
    (d / "prompts.jsonl").write_text(json.dumps({"id": "p0", "context": "c", "query": "q"}) + "\n")
    assert pairs.main(["--scored", str(d), "--out", out]) == 2
    assert "no scored rows (the file is empty)" in one_line(capsys.readouterr().err)
    # a samples file passed as --scored
    p, s = write_data(tmp_path, 1)
    assert pairs.main(["--scored", str(s), "--prompts", str(p), "--out", out]) == 2
    line = one_line(capsys.readouterr().err)
    assert "samples.jsonl: line 1: " in line and "looks like a samples file" in line and "judge.score" in line
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    ("flag", "value", "match"),
    [
        ("--num-shards", "0", "must be >= 1"),
        ("--min-responses", "1", "must be >= 2"),
        ("--min-gap", "nan", "must be a finite number"),
        ("--min-gap", "-1", "must be >= 0"),
    ],
)
def test_pairs_bad_numbers_are_refused_at_parse_time(tmp_path, capsys, flag, value, match) -> None:
    d = tmp_path / "run"
    write_scored_dir(str(d), n_prompts=2, n_responses=5)
    with pytest.raises(SystemExit) as e:
        pairs.main(["--scored", str(d), "--out", str(tmp_path / "o"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: {match}" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(("field", "value"), [("reward", 1e9), ("helpfulness", -0.5), ("logicality", 10.5)])
def test_pairs_rejects_scores_outside_0_to_10(tmp_path, capsys, field, value) -> None:
    d = tmp_path / "run"
    _, scored = write_scored_dir(str(d), n_prompts=2, n_responses=5)
    scored[3]["scores"][field] = value
    (d / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored))
    assert pairs.main(["--scored", str(d), "--out", str(tmp_path / "o")]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"scored.jsonl: line 4: field 'scores.{field}' must be a number in [0, 10] or null" in line


def test_a_killed_writer_left_as_a_zombie_holds_no_lock() -> None:
    """A SIGKILLed judge.score stays a zombie until reaped; its lock must count as stale at once."""
    import subprocess
    import sys
    import time

    from judge.outdir import _pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.02)
    try:
        assert not _pid_alive(child.pid)
    finally:
        child.wait()
    assert _pid_alive(os.getpid())

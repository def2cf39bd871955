"""Bad input to the judge CLIs, as a new user gives it (issue 19, cases 6 and 10, and their neighbours): each
is refused with one line before any work, or ends with one clear line, never a hang, a traceback or a
silent exit 0."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from judge.eval import main as eval_main
from judge.fake_server import cli as fake_server_cli
from tests.helpers.paths import ROOT
from tests.judge.test_reliability import judge, one_line
from tests.judge.test_score import write_data

CLOSED = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: connection refused at once


def predictions(run: Path, n: int = 3) -> Path:
    """A predictions dir with one hotpotqa file of ``n`` items (the format ``lr_jax.eval predict`` writes)."""
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "task": "hotpotqa", "benchmark": "longbench", "query": f"Where is item {i}?",
             "answers": [f"shelf number {i}"], "prediction": f"on shelf number {i}"} for i in range(n)]
    (run / "hotpotqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def evaluate(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = eval_main(list(argv))
    except SystemExit as e:  # argparse
        code = int(e.code or 0)
    got = capsys.readouterr()
    return code, got.out, got.err


# ------------------------------------------------------------------------------------------------ judge.score


@pytest.mark.parametrize(("flag", "url"), [("--base-url", "not a url"), ("--base-url", "ftp://host/v1"),
                                           ("--base-url", "http:///v1"),
                                           ("--embedding-base-url", "localhost:8000")])
def test_score_refuses_an_unusable_endpoint_before_any_call(tmp_path, capsys, flag, url) -> None:
    """Before: 'not a url' was retried for the whole transport budget (33 s) before saying so."""
    p, s = write_data(tmp_path, 1)
    extra = (flag, url) if flag != "--base-url" else ()
    t = time.monotonic()
    code, _, err = judge(capsys, p, s, tmp_path / "out", url if flag == "--base-url" else CLOSED, *extra)
    assert code == 2 and time.monotonic() - t < 5
    line = one_line(err)
    assert line.startswith("judge.score: error: ") and f"{flag} {url!r} is not an http(s) URL" in line, line
    assert not (tmp_path / "out" / "scored.jsonl").exists()


def test_score_names_the_line_of_a_samples_file_that_is_not_utf8(tmp_path, capsys) -> None:
    p, s = write_data(tmp_path, 1)
    lines = s.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"Ashford", b"Ashf\xe9rd", 1)  # latin-1, as a Windows editor may save it
    s.write_bytes(b"".join(lines))
    code, _, err = judge(capsys, p, s, tmp_path / "out", CLOSED)
    assert code == 2
    assert f"{s}:3: not UTF-8 text" in one_line(err)


# ------------------------------------------------------------------------------------------------ judge.eval


def test_eval_max_items_zero_is_refused_not_a_hang(tmp_path) -> None:
    """Before: ``--max-items 0`` waited forever on a semaphore of 0 (a subprocess, so today's code fails by
    its timeout instead of hanging the suite)."""
    run = predictions(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "judge.eval", "--predictions", str(run), "--base-url", CLOSED,
                        "--model", "m", "--max-items", "0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "argument --max-items: must be >= 1, got 0" in one_line(r.stderr)
    assert not (run / "judged.jsonl").exists()


@pytest.mark.parametrize(("argv", "match"), [
    (("--limit", "-1"), "argument --limit: must be >= 1, got -1"),  # before: judged 2 of 3, silently
    (("--limit", "0"), "argument --limit: must be >= 1, got 0"),
    (("--concurrency", "0"), "argument --concurrency: must be >= 1, got 0"),
    (("--temperature", "nan"), "argument --temperature: must be a finite number"),
    (("--max-tokens", "0"), "argument --max-tokens: must be >= 1"),
    (("--base-url", "not a url"), "argument --base-url: 'not a url' is not an http(s) URL with a host"),
])
def test_eval_refuses_bad_numbers_and_urls_at_parse_time(tmp_path, capsys, argv, match) -> None:
    run = predictions(tmp_path / "run")
    base = ["--predictions", str(run), "--model", "m"] + (["--base-url", CLOSED] if "--base-url" not in argv
                                                          else [])
    code, _, err = evaluate(capsys, *base, *argv)
    assert code == 2 and match in one_line(err)
    assert not (run / "judged.jsonl").exists()


def test_eval_with_an_unreachable_judge_says_so_on_stderr(tmp_path, capsys) -> None:
    """Before: exit 1 with nothing on stderr (and 'no running event loop' as the cause in results.json)."""
    run = predictions(tmp_path / "run")
    code, out, err = evaluate(capsys, "--predictions", str(run), "--base-url", CLOSED, "--model", "m",
                              "--max-attempts", "1", "--no-progress")
    assert code == 1
    line = one_line(err)
    assert line.startswith("judge.eval: error: no answer from the judge server at 127.0.0.1:9 for 3 item(s)")
    assert "Connect" in line and "no running event loop" not in line, line
    assert "; ;" not in out and "judge.eval: ;" not in out


def test_eval_refuses_an_empty_task_file_naming_it(tmp_path, capsys) -> None:
    """Before: ``judge.eval: ; Avg –`` and exit 0."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "qasper.jsonl").write_text("")
    code, _, err = evaluate(capsys, "--predictions", str(run), "--base-url", CLOSED, "--model", "m")
    assert code == 2 and one_line(err) == f"error: {run / 'qasper.jsonl'}: no predictions (the file is empty)"


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_eval_refuses_an_output_dir_that_is_a_file(tmp_path, capsys, kind) -> None:
    """Before: a FileExistsError / NotADirectoryError traceback after the predictions were read."""
    run = predictions(tmp_path / "run")
    out = run / "hotpotqa.jsonl" if kind == "file" else run / "hotpotqa.jsonl" / "out"
    code, _, err = evaluate(capsys, "--predictions", str(run), "--out", str(out), "--rule-only")
    assert code == 2 and "is a file" in one_line(err) and "--out" in one_line(err)


# ------------------------------------------------------------------------------------------ the fake server


@pytest.mark.parametrize(("argv", "match"), [
    (["--config", "{bad json"], "--config is not JSON"),
    (["--config", "[1]"], "--config must be a JSON object"),
    (["--config", '{"latency": 1}'], "unknown fault setting(s) ['latency']"),
    (["--port", "-1"], "argument --port: must be >= 0"),
    (["--run-batch", "/nonexistent/in.jsonl", "out.jsonl"], "/nonexistent/in.jsonl: No such file"),
])
def test_fake_server_cli_refuses_bad_input_in_one_line(capsys, argv, match) -> None:
    """Before: tracebacks (JSONDecodeError, TypeError, FileNotFoundError)."""
    try:
        code = fake_server_cli.main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 2 and match in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(("argv", "match"), [
    (("--tokenizer", "/nonexistent/tok"), "--tokenizer /nonexistent/tok: no such directory"),
    (("--api-key-file", "/nonexistent/key"), "cannot read api key file /nonexistent/key"),
])
def test_score_refuses_a_missing_tokenizer_or_key_file_before_making_the_output(tmp_path, capsys, argv,
                                                                                 match) -> None:
    """Before: the tokenizer said 'Repo id must use alphanumeric chars', and both left an output dir with
    an empty scored.jsonl / cache behind."""
    p, s = write_data(tmp_path, 1)
    code, _, err = judge(capsys, p, s, tmp_path / "out", CLOSED, *argv)
    assert code == 2 and match in one_line(err)
    assert not (tmp_path / "out").exists()


def test_eval_retry_failed_serves_the_parseable_cached_answers(tmp_path, capsys) -> None:
    """Before: ``--retry-failed`` on an item with one parseable and one unparseable cached rating crashed
    (``ValueError: not enough values to unpack``: its cache returned 3 fields where the client reads 4)."""
    from judge.fake_server import FakeJudgeServer

    run = tmp_path / "run"
    run.mkdir()
    row = {"id": "q0", "task": "hotpotqa", "benchmark": "longbench", "query": "Where is the item?",
           "answers": ["shelf number zero", "the blue shelf"], "prediction": "on a shelf"}
    (run / "hotpotqa.jsonl").write_text(json.dumps(row) + "\n")
    with FakeJudgeServer(garble_every=2) as srv:  # of the item's two questions, the second is garbled
        judge_args = ["--predictions", str(run), "--base-url", srv.url, "--model", "m", "--no-progress",
                      "--parse-retries", "0", "--concurrency", "1"]
        assert evaluate(capsys, *judge_args)[0] == 0
        assert json.loads((run / "results.json").read_text())["judged"]["tasks"]["hotpotqa"]["failed"] == 1
        srv.control(garble_every=0)
        n = srv.stats()["requests"]
        code, _, err = evaluate(capsys, *judge_args, "--retry-failed")
        assert code == 0, err
        assert srv.stats()["requests"] == n + 1  # only the unparseable answer is asked again
    res = json.loads((run / "results.json").read_text())
    assert res["usage"]["refreshed_answers"] == 1 and res["usage"]["cache_hits"] == 1


def test_an_output_on_a_missing_bucket_is_refused_before_any_work(tmp_path, capsys, gcs_bucket) -> None:
    """Before: judge.score and judge.pairs wrote to ``gs://<no such bucket>/…`` until the first write failed
    with a google.api_core ``NotFound`` traceback (judge.score: at its lock, judge.pairs: after reading and
    selecting everything)."""
    from judge import pairs
    from judge.outdir import check_output_dir
    from lr_jax.io import storage
    from tests.helpers.scored import write_scored_dir

    p, s = write_data(tmp_path, 1)
    code, _, err = judge(capsys, p, s, "gs://no-such-bucket-here/out", CLOSED)
    assert code == 2
    want = ("judge.score: error: --out gs://no-such-bucket-here/out: bucket gs://no-such-bucket-here does "
            "not exist")
    assert one_line(err).startswith(want)
    write_scored_dir(str(tmp_path / "scored"))
    capsys.readouterr()
    assert pairs.main(["--scored", str(tmp_path / "scored"), "--out", "gs://no-such-bucket-here/pairs"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "--out gs://no-such-bucket-here/pairs: bucket gs://no-such-bucket-here does not exist" in err
    check_output_dir(f"gs://{gcs_bucket}/out", "--out")  # an existing bucket passes, and keeps no probe
    assert not storage.list_files(f"gs://{gcs_bucket}/out")


def test_two_eval_runs_on_one_output_are_refused_not_interleaved(tmp_path, capsys) -> None:
    """Before: a second ``judge.eval`` on the same output appended the same items to judged.jsonl (and paid
    for them) alongside the first."""
    from judge.fake_server import FakeJudgeServer

    run = predictions(tmp_path / "run", 4)
    with FakeJudgeServer(latency_s=0.5) as srv:
        argv = ["--predictions", str(run), "--base-url", srv.url, "--model", "m", "--no-progress",
                "--concurrency", "1", "--max-items", "1"]
        proc = subprocess.Popen([sys.executable, "-m", "judge.eval", *argv], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (run / ".judge.eval.lock").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            code, _, err = evaluate(capsys, *argv)
            assert code == 2 and "being written by another judge.eval" in one_line(err)
        finally:
            _, first_err = proc.communicate(timeout=120)
        assert proc.returncode == 0, first_err
    assert len((run / "judged.jsonl").read_text().splitlines()) == 4  # each item judged once
    assert not (run / ".judge.eval.lock").exists()

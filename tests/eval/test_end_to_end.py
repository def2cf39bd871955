"""`python -m lr_jax.eval predict` then `python -m judge.eval` on CPU: a tiny converted model, benchmark files
in the published formats, the scripted OpenAI-compatible judge server (a real HTTP process)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from judge.eval import main as eval_main
from judge.eval import parse_rating
from judge.fake_server import FakeJudgeServer
from lr_jax.eval.__main__ import main as lr_eval_main
from lr_jax.eval.report import aggregate, compare_frame, compare_table, load_results

REPO = Path(__file__).parents[2]


def _predict(model: str, bench: str, data: Path, out: Path, *extra: str) -> int:
    return lr_eval_main(["predict", "--model", model, "--benchmark", bench, "--data", str(data),
                         "--out", str(out),
                         "--max-new-tokens", "4", "--max-input-tokens", "40", "--batch-size", "2",
                         "--pad-to", "64", "--no-progress", *extra])


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_predict_judge_resume_failures_and_compare(tiny_model, longbench_dir, chat_files, tmp_path, capsys):
    run = tmp_path / "run_a"
    # --- predictions, both benchmarks, into one run dir
    assert _predict(tiny_model, "longbench", longbench_dir, run) == 0
    s = _last_json(capsys.readouterr().out)["tasks"]
    written = {t: v["written"] for t, v in s.items()}
    assert written == {"narrativeqa": 1, "hotpotqa": 2, "gov_report": 1, "trec": 1}
    assert all(v["truncated"] == v["written"] for v in s.values())  # 60-word contexts > 40 tokens
    tc, fs = chat_files
    assert _predict(tiny_model, "longbench_chat", tc, run) == 0
    hot = _rows(run / "hotpotqa.jsonl")
    assert [r["id"] for r in hot] == ["hotpotqa-0", "hotpotqa-1"] and hot[1]["answers"] == ["red", "blue sky"]
    assert all(r["truncated_tokens"] > 0 and r["sampler"]["temperature"] == 0.0 for r in hot)
    assert len(_rows(run / "longbench_chat.jsonl")) == 2

    # --- kill mid-write: one row survives, the next is torn; the re-run regenerates only the missing one
    full = (run / "hotpotqa.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    (run / "hotpotqa.jsonl").write_text(lines[0] + lines[1][:30])
    assert _predict(tiny_model, "longbench", longbench_dir, run) == 0
    s = _last_json(capsys.readouterr().out)["tasks"]
    assert s["hotpotqa"]["written"] == 1 and s["hotpotqa"]["already_done"] == 1
    assert sum(v["written"] for v in s.values()) == 1
    assert (run / "hotpotqa.jsonl").read_text() == full  # greedy: the same text, no duplicate

    # --- what judging will cost, before any call; LongBench's own metrics without a judge
    capsys.readouterr()
    assert eval_main(["--predictions", str(run), "--dry-run", "--few-shots", str(fs)]) == 0
    total = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert total[:5] == ["total", "items", "6", "calls", "7"]  # 6 judged items, hotpotqa-1 has 2 references
    assert eval_main(["--predictions", str(run), "--rule-only"]) == 0
    rule = json.loads((run / "results.json").read_text())
    assert "judged" not in rule
    assert set(rule["rule"]["tasks"]) == {"narrativeqa", "hotpotqa", "gov_report", "trec"}
    assert not (run / "judge_cache.sqlite").exists()

    with FakeJudgeServer() as srv:
        judge = ["--base-url", srv.url, "--model", "scripted-judge", "--no-progress"]
        # --- judged + rule-based scores
        assert eval_main(["--predictions", str(run), "--few-shots", str(fs), *judge]) == 0
        res = json.loads((run / "results.json").read_text())
        j = res["judged"]
        assert set(j["categories"]) == {"LongBench-Chat", "S-Doc", "M-Doc", "Summ"}
        assert j["average"] == pytest.approx(sum(j["categories"][c]["score"] for c in j["categories"]) / 4)
        assert "trec" not in j["tasks"] and res["rule"]["tasks"]["trec"]["items"] == 1
        stats = srv.stats()
        # one call per reference: hotpotqa 1 + 2, narrativeqa 1 (QA), gov_report 1, 2 chat questions
        assert stats["by_kind"] == {"eval_qa": 4, "eval_summ": 1, "eval_chat": 2}
        with sqlite3.connect(run / "judge_cache.sqlite") as db:
            chat_req = [json.loads(r[0])["messages"][1]["content"]
                        for r in db.execute("SELECT request FROM answers WHERE kind = 'eval_chat'")]
        assert len(chat_req) == 2  # few-shots shown, with their scores
        assert all("<example_rating_3>\n2\n</example_rating_3>" in r for r in chat_req)
        judged = _rows(run / "judged.jsonl")
        for row in judged:  # item score = max over references, mapped per scale
            top = {"eval_qa": 3, "eval_summ": 5, "eval_chat": 10}[row["kind"]]
            r = max(x["rating"] for x in row["ratings"])
            assert row["score"] == pytest.approx(r / 10 if top == 10 else (r - 1) / (top - 1))
        md = (run / "results.md").read_text()
        assert "| LongBench-Chat | S-Doc | M-Doc | Summ | Avg |" in md and "## Rule-based" in md

        # --- a re-run pays nothing
        n = srv.stats()["requests"]
        assert eval_main(["--predictions", str(run), "--few-shots", str(fs), *judge]) == 0
        assert srv.stats()["requests"] == n
        assert json.loads((run / "results.json").read_text())["judged"] == j

        # --- an unparseable rating: a reported failure, left out of the mean, never a number
        bad = {**hot[0], "prediction": "UNRATEABLE"}  # the scripted judge cannot rate it
        with open(run / "hotpotqa.jsonl", "a") as f:  # the last line per id is the prediction
            f.write(json.dumps(bad) + "\n")
        assert eval_main(["--predictions", str(run), "--few-shots", str(fs), *judge]) == 0
        assert srv.stats()["requests"] == n + 3  # the first ask + 2 re-asks, only for the changed item
        res2 = json.loads((run / "results.json").read_text())
        t = res2["judged"]["tasks"]["hotpotqa"]
        assert (t["failed"], t["failed_ids"], t["scored"]) == (1, ["hotpotqa-0"], 1)
        other = next(r for r in judged if r["id"] == "hotpotqa-1")
        assert t["score"] == pytest.approx(100 * other["score"])  # the mean of the one scored item
        assert "hotpotqa-0" in (run / "results.md").read_text()
        failed_row = _rows(run / "judged.jsonl")[-1]
        assert failed_row["status"] == "failed" and failed_row["score"] is None
        assert "unparseable after 3 attempts" in failed_row["error"]

        # --- --retry-failed after the judge got better: only the failed calls are paid again
        (run / "hotpotqa.jsonl").write_text(full + json.dumps({**hot[0], "prediction": "rateable x"}) + "\n")
        srv.control(garble_kinds=["eval_qa"])  # the judge answers prose: unparseable
        assert eval_main(["--predictions", str(run), "--tasks", "hotpotqa", *judge]) == 0
        tasks = json.loads((run / "results.json").read_text())["judged"]["tasks"]
        assert tasks["hotpotqa"]["failed_ids"] == ["hotpotqa-0"]
        srv.control(garble_kinds=[])
        n2 = srv.stats()["requests"]
        assert eval_main(["--predictions", str(run), "--tasks", "hotpotqa", *judge]) == 0  # plain re-run
        assert srv.stats()["requests"] == n2  # a failed item is final without --retry-failed
        assert eval_main(["--predictions", str(run), "--tasks", "hotpotqa", "--retry-failed", *judge]) == 0
        assert srv.stats()["requests"] == n2 + 1  # the cached unparseable first answer, asked again
        res3 = json.loads((run / "results.json").read_text())
        assert res3["judged"]["tasks"]["hotpotqa"]["failed"] == 0 and res3["usage"]["refreshed_answers"] == 1

        # --- another judge model never reuses the rows of the first: everything is judged again
        n3 = srv.stats()["requests"]
        assert eval_main(["--predictions", str(run), "--few-shots", str(fs), *judge[:3], "other-judge",
                          "--no-progress"]) == 0
        assert srv.stats()["requests"] == n3 + 7
        assert json.loads((run / "results.json").read_text())["judge"]["model"] == "other-judge"

        # --- a second run whose predictions are the references: compare shows the deltas
        run_b = tmp_path / "run_b"
        run_b.mkdir()
        for p in run.glob("*.jsonl"):
            if p.name != "judged.jsonl":
                rows = {r["id"]: {**r, "prediction": r["answers"][-1]} for r in _rows(p)}
                (run_b / p.name).write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
        assert eval_main(["--predictions", str(run_b), "--few-shots", str(fs), *judge]) == 0
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert eval_main(["compare", str(run), str(run_b), "--names", "SFT,DPO", "--png", str(png)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["model", "LongBench-Chat", "S-Doc", "M-Doc", "Summ", "Avg"]
    assert table.splitlines()[4].startswith("Δ DPO vs SFT") and "+" in table.splitlines()[4]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = compare_frame([str(run), str(run_b)])
    assert list(df.columns) == ["LongBench-Chat", "S-Doc", "M-Doc", "Summ", "Avg"] and len(df) == 2
    assert load_results(str(run_b))["judged"]["categories"]["M-Doc"]["score"] == 100.0  # perfect answers


def test_bad_input_is_one_error_line_and_nothing_is_lost(tiny_model, longbench_dir, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    rows = (longbench_dir / "hotpotqa.jsonl").read_text().splitlines()
    bad = rows[1].replace('"input": "', '"input": 5, "x": "')
    (longbench_dir / "hotpotqa.jsonl").write_text(rows[0] + "\n" + bad + "\n")
    assert _predict(tiny_model, "longbench", longbench_dir, run, "--tasks", "hotpotqa") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {longbench_dir / 'hotpotqa.jsonl'}:2: field 'input' must be str, got int"]
    assert not run.exists()  # checked before the model is loaded: nothing written
    assert _predict(tiny_model, "longbench", longbench_dir, run, "--tasks", "nq") == 2
    assert "unknown LongBench task 'nq'" in capsys.readouterr().err
    run.mkdir()
    (run / "trec.jsonl").write_text(json.dumps({"id": "x", "sampler": {"temperature": 0.0}}) + "\n")
    assert _predict(tiny_model, "longbench", longbench_dir, run, "--tasks", "trec", "--temperature", "1") == 2
    assert "field 'sampler'" in capsys.readouterr().err  # other settings: write to a new --out
    assert (run / "trec.jsonl").read_text().count("\n") == 1
    shutil.rmtree(run)
    run.mkdir()
    (run / "qasper.jsonl").write_text('{"id": "a", "task": "qasper", "prediction": 1}\n')
    assert eval_main(["--predictions", str(run), "--rule-only"]) == 2
    want = f"error: {run / 'qasper.jsonl'}:1: field 'prediction' must be str, got int"
    assert capsys.readouterr().err.strip() == want
    assert eval_main(["--predictions", str(run)]) == 2
    assert "--base-url and --model are required" in capsys.readouterr().err


def test_rating_parser_types_failures() -> None:
    assert parse_rating('{"reasoning": "ok", "rating": 3}', 3).value == {"rating": 3, "reasoning": "ok"}
    assert parse_rating("<reasoning>fine</reasoning>\n<rating>7</rating>", 10).value["rating"] == 7
    assert parse_rating("It is good. Rating: [[4]]", 5).value["rating"] == 4
    assert parse_rating('{"rating": "2"}', 3).value["rating"] == 2
    for text, why in [('{"rating": null}', "not an integer"), ('{"rating": 2.5}', "not an integer"),
                      ('{"rating": 4}', "outside 1-3"), ("<rating>0</rating>", "outside 1-3"),
                      ("I would rather not say.", "no rating found"), ('{"rating": true}', "not an integer")]:
        p = parse_rating(text, 3)
        assert not p.ok and why in p.error and p.value == {}


def test_aggregate_excludes_failures_and_averages_the_paper_columns() -> None:
    items = [{"task": "hotpotqa", "id": "a", "status": "scored", "score": 1.0},
             {"task": "hotpotqa", "id": "b", "status": "failed", "score": None},
             {"task": "musique", "id": "c", "status": "scored", "score": 0.5},
             {"task": "qasper", "id": "d", "status": "scored", "score": 0.0},
             {"task": "gov_report", "id": "e", "status": "scored", "score": 0.75},
             {"task": "longbench_chat", "id": "1", "status": "scored", "score": 0.7},
             {"task": "longbench_chat", "id": "2", "status": "scored", "score": 0.8}]
    agg = aggregate(items)
    assert agg["tasks"]["hotpotqa"] == {"score": 100.0, "category": "M-Doc", "items": 2, "scored": 1,
                                        "failed": 1, "failed_ids": ["b"]}
    cats = {c: v["score"] for c, v in agg["categories"].items()}
    assert cats == pytest.approx({"LongBench-Chat": 75.0, "S-Doc": 0.0, "M-Doc": 75.0, "Summ": 75.0})
    assert agg["average"] == pytest.approx((75 + 0 + 75 + 75) / 4)
    assert aggregate(items[:2])["average"] is None  # not all four columns: no Avg
    # The paper's own rows (Llama-3.1-8B, LongReward Table 1): Avg = mean of the four columns.
    paper = [{"run": name, "judged": {"categories": {c: {"score": v} for c, v in zip(
        ["LongBench-Chat", "S-Doc", "M-Doc", "Summ"], vals, strict=True)}, "average": sum(vals) / 4}}
        for name, vals in [("SFT", (69.8, 66.1, 44.5, 39.6)),
                           ("DPO w/ LongReward", (72.6, 67.8, 55.8, 43.2))]]
    out = compare_table(paper).splitlines()
    assert out[2].split()[-1] == "55.0" and out[3].split()[-1] == "59.9"
    assert out[4].split()[-5:] == ["+2.8", "+1.7", "+11.3", "+3.6", "+4.9"]


def test_judge_eval_imports_no_jax() -> None:
    code = "import sys, judge.eval; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_compare_needs_results(tmp_path, capsys) -> None:
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)
    assert eval_main(["compare", str(tmp_path / "nothing")]) == 2
    assert "results.json: file not found" in capsys.readouterr().err


def test_benchmarks_and_predictions_on_gcs(tiny_model, longbench_dir, chat_files, gcs_bucket, tmp_path,
                                           capsys, monkeypatch) -> None:
    from lr_jax.io import storage

    root = f"gs://{gcs_bucket}/bench"
    for p in longbench_dir.glob("*.jsonl"):
        storage.upload_file(str(p), f"{root}/LongBench/{p.name}")
    storage.upload_file(str(chat_files[0]), f"{root}/test_cases.json")
    run = tmp_path / "run"
    assert _predict(tiny_model, "longbench", f"{root}/LongBench", run, "--limit", "1") == 0
    found = set(_last_json(capsys.readouterr().out)["tasks"])  # the task files listed on GCS
    assert found == {"narrativeqa", "hotpotqa", "gov_report", "trec"}
    assert _predict(tiny_model, "longbench_chat", f"{root}/test_cases.json", run) == 0
    one = tmp_path / "one_device"  # the default mesh is every device on data (8 here): same file as 1 device
    assert _predict(tiny_model, "longbench_chat", f"{root}/test_cases.json", one, "--mesh", "1,1,1") == 0
    assert (one / "longbench_chat.jsonl").read_bytes() == (run / "longbench_chat.jsonl").read_bytes()
    for p in run.glob("*.jsonl"):
        storage.upload_file(str(p), f"gs://{gcs_bucket}/runs/a/{p.name}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-eval-test-secret-1234")
    out = tmp_path / "scores"
    with FakeJudgeServer() as srv:
        assert eval_main(["--predictions", f"gs://{gcs_bucket}/runs/a", "--out", str(out),
                          "--base-url", srv.url, "--model", "m", "--no-progress"]) == 0
    res = load_results(str(out))
    assert res["judged"]["categories"]["LongBench-Chat"]["scored"] == 2
    for f in out.rglob("*"):  # the key lives only in the HTTP client
        assert b"sk-eval-test-secret-1234" not in f.read_bytes(), f
    assert eval_main(["--predictions", f"gs://{gcs_bucket}/runs/a", "--rule-only"]) == 2
    assert "--out must be a local directory" in capsys.readouterr().err


def _hand_predictions(run: Path, n: int) -> None:
    """n hotpotqa predictions in the Predictions format (no model needed)."""
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "task": "hotpotqa", "benchmark": "longbench", "query": f"Where is item {i} ?",
             "answers": [f"shelf number {i}"], "prediction": f"on shelf number {i}" if i % 2 else "no idea"}
            for i in range(n)]
    (run / "hotpotqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_unreachable_judge_leaves_items_pending_and_a_killed_run_resumes_without_paying_twice(tmp_path):
    run = tmp_path / "run"
    _hand_predictions(run, 6)
    with FakeJudgeServer(error_500_every=1) as srv:  # every request fails
        args = ["--predictions", str(run), "--base-url", srv.url, "--model", "m", "--no-progress",
                "--max-attempts", "2", "--backoff", "0.01"]
        assert eval_main(args) == 1
    res = json.loads((run / "results.json").read_text())
    assert res["pending"]["count"] == 6 and res["judged"]["tasks"] == {}  # pending, never scored
    assert (run / "judged.jsonl").read_text() == ""

    with FakeJudgeServer(latency_s=0.25) as srv:
        cmd = [sys.executable, "-m", "judge.eval", "--predictions", str(run), "--base-url", srv.url,
               "--model", "m", "--no-progress", "--concurrency", "1", "--max-items", "1"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # a loaded machine starts Python slowly; 6 items take >= 1.5 s
        while time.monotonic() < deadline and (run / "judged.jsonl").read_text().count("\n") < 2:
            time.sleep(0.05)
        proc.kill()  # SIGKILL mid-run
        proc.wait()
        killed_at = (run / "judged.jsonl").read_text().count("\n")
        assert 2 <= killed_at < 6
        assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
        answered = srv.stats()["answered"]
    rows = _rows(run / "judged.jsonl")
    assert sorted(r["id"] for r in rows) == [f"q{i}" for i in range(6)]  # every item exactly once
    # Each distinct question was paid once, except at most the one in flight at the kill.
    assert len(answered) == 6 and sum(answered.values()) <= 7
    assert json.loads((run / "results.json").read_text())["judged"]["tasks"]["hotpotqa"]["scored"] == 6


def test_rule_only_scores_longbench_e_by_length_bucket(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"id": str(i), "task": "qasper_e", "query": "q", "answers": ["paris"], "prediction": p,
             "length": n} for i, (p, n) in enumerate([("Paris", 100), ("London", 5000), ("in Paris", 9000)])]
    (run / "qasper_e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert eval_main(["--predictions", str(run), "--rule-only"]) == 0
    t = load_results(str(run))["rule"]["tasks"]["qasper_e"]
    # F1: 1, 0, 2*(1/2)*1/(3/2) = 2/3 -> mean 55.56; buckets 100 / 0 / 66.67
    assert t["score"] == 55.56 and t["e_buckets"] == {"0-4k": 100.0, "4-8k": 0.0, "8k+": 66.67}
    assert "| qasper_e (8k+) | | 66.67 |" in (run / "results.md").read_text()

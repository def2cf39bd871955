"""Hostile input to `python -m lr_jax.eval predict` (issue 19, cases 5, 7 and 10): every case is one line on
stderr naming the flag or the file, exit status 2, before the model is loaded (the loader is replaced by one
that fails the test), and nothing is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lr_jax.eval import predict
from lr_jax.eval.__main__ import main
from lr_jax.eval.benchmarks import EvalInputError
from tests.eval.conftest import longbench_row

UNWRITABLE = "/proc/self/lr_jax_out"  # no process can create a file here, root included


@pytest.fixture
def no_model(monkeypatch) -> None:
    class Refuse:
        @staticmethod
        def load(*args, **kwargs):
            raise AssertionError("the model was loaded before the input error was reported")

    monkeypatch.setattr(predict, "Policy", Refuse)


def _run(data: Path, out: Path | str, *extra: str, bench: str = "longbench") -> int:
    return main(["predict", "--model", "/nonexistent/model", "--benchmark", bench, "--data", str(data),
                 "--out", str(out), "--no-progress", *extra])


def _one_line(capsys, *needles: str) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in lines[0], lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("flag, value", [
    ("temperature", "nan"), ("temperature", "inf"), ("temperature", "-1"), ("top-p", "nan"), ("top-p", "0"),
    ("top-p", "1.5"), ("seed", "-1"), ("seed", str(2**32)), ("pad-to", "0"), ("pad-to", "-4"),
    ("batch-size", "0"), ("limit", "0"), ("max-input-tokens", "1"), ("max-new-tokens", "0"), ("limit", "x"),
])
def test_numbers_out_of_range_are_refused_when_parsed(flag, value, tmp_path, capsys) -> None:
    # Neither the model nor the data exist: an error about them would mean the flag was not checked first.
    with pytest.raises(SystemExit) as e:
        _run(tmp_path / "no_data", tmp_path / "run", f"--{flag}={value}")
    assert e.value.code == 2
    _one_line(capsys, f"argument --{flag}:", value)
    assert not (tmp_path / "run").exists()


def test_tiny_temperature_and_the_python_api_are_checked(longbench_dir, tmp_path, capsys, no_model) -> None:
    assert _run(longbench_dir, tmp_path / "run", "--temperature", "1e-9") == 2
    _one_line(capsys, "(--temperature) must be 0 (greedy) or >= 1e-06, got 1e-09")
    base = dict(model="m", benchmark="longbench", data="d", out="o")
    for field, value in [("temperature", math.nan), ("seed", -1), ("pad_to", 0), ("benchmark", "x")]:
        with pytest.raises(EvalInputError, match=field):
            predict.PredictOptions(**{**base, field: value})


@pytest.mark.parametrize("case", ["file", "under_file", "proc", "gcs", "data_dir", "task_file_is_a_dir"])
def test_bad_out_is_one_line_before_the_model_loads(case, longbench_dir, tmp_path, capsys, no_model) -> None:
    (tmp_path / "a_file").write_text("keep")
    (tmp_path / "run" / "hotpotqa.jsonl").mkdir(parents=True)
    out = {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "run", "proc": UNWRITABLE,
           "gcs": "gs://bucket/run", "data_dir": longbench_dir, "task_file_is_a_dir": tmp_path / "run"}[case]
    want = {"file": "is a file, not a directory", "under_file": "a_file is a file, so the directory cannot",
            "proc": "not writable", "gcs": "must be a local path",
            "data_dir": "hotpotqa.jsonl: is the --data file; write to a new file",
            "task_file_is_a_dir": "hotpotqa.jsonl: is a directory, not a file"}[case]
    before = (longbench_dir / "hotpotqa.jsonl").read_bytes()
    assert _run(longbench_dir, out, "--tasks", "hotpotqa") == 2
    _one_line(capsys, f"error: --out {out}", want)
    assert (tmp_path / "a_file").read_text() == "keep"
    assert (longbench_dir / "hotpotqa.jsonl").read_bytes() == before


def test_empty_task_files_are_an_error_naming_the_file(longbench_dir, tmp_path, capsys, no_model) -> None:
    (longbench_dir / "qasper.jsonl").write_text("\n")
    assert _run(longbench_dir, tmp_path / "run") == 2  # every task present, one of them empty
    _one_line(capsys, f"error: {longbench_dir / 'qasper.jsonl'}: no items (an empty file)")
    chat = tmp_path / "test_cases.json"
    chat.write_text("[]")
    assert _run(chat, tmp_path / "run", bench="longbench_chat") == 2
    _one_line(capsys, f"error: {chat}: no items (an empty list)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("length", ["NaN", "Infinity"])
def test_non_finite_length_is_one_line(length, tmp_path, capsys, no_model) -> None:
    row = json.dumps(longbench_row("hotpotqa", 0)).replace('"length": 60', f'"length": {length}')
    (tmp_path / "hotpotqa.jsonl").write_text(row + "\n")
    assert _run(tmp_path / "hotpotqa.jsonl", tmp_path / "run", "--tasks", "hotpotqa") == 2
    _one_line(capsys, ":1: field 'length' must be a finite number")


def test_usage_and_unknown_subcommand(capsys) -> None:
    assert main([]) == 2 and "usage: python -m lr_jax.eval predict" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "predict --help" in capsys.readouterr().out
    assert main(["score"]) == 2
    _one_line(capsys, "unknown subcommand 'score'")
    with pytest.raises(SystemExit) as e:
        main(["predict", "--help"])
    assert e.value.code == 0 and "--temperature TEMPERATURE" in capsys.readouterr().out


def test_task_and_data_mistakes_are_one_line(longbench_dir, gcs_bucket, tmp_path, capsys, no_model) -> None:
    assert _run(longbench_dir, tmp_path / "run", "--tasks", ",") == 2
    _one_line(capsys, "error: --tasks ',': names no task")
    assert _run(longbench_dir / "hotpotqa.jsonl", tmp_path / "run", "--tasks", "hotpotqa,trec") == 2
    _one_line(capsys, "is one task's file: name one task with --tasks")
    for data in (tmp_path / "nope", f"gs://{gcs_bucket}-missing/LongBench"):  # a missing bucket too
        assert _run(data, tmp_path / "run") == 2
        _one_line(capsys, f"error: --data {data}: does not exist")
    assert not (tmp_path / "run").exists()

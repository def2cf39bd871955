"""Hostile input to `python -m lr_jax.data.import_prefs` and `python -m lr_jax.data.demo` (issue 19, case 7
and its neighbours): one line on stderr naming the flag or the file, exit status 2, before any input is read,
and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lr_jax.data import demo, import_prefs
from lr_jax.data.errors import DataError
from lr_jax.data.import_prefs.__main__ import main
from lr_jax.io import records

UNWRITABLE = "/proc/self/lr_jax_out"  # no process can create a file here, root included
ROW = {"prompt": "q", "chosen": "a", "rejected": "b"}


def _one_line(capsys, *needles: str) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and "error: " in lines[0], lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def prefs(tmp_path: Path) -> Path:
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps(ROW) + "\n")
    (tmp_path / "a_file").write_text("keep")
    return f


@pytest.mark.parametrize("case, want", [
    ("file", "is a file, not a directory"),
    ("under_file", "a_file is a file, so the directory cannot be created"),
    ("proc", "not writable"),
])
def test_bad_out_is_one_line_before_reading_input(case, want, prefs, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(import_prefs, "convert", lambda paths: pytest.fail("input read before --out checked"))
    out = {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "recs", "proc": UNWRITABLE}[case]
    assert main(["--input", str(prefs), "--out", str(out)]) == 2
    _one_line(capsys, f"error: --out {out}: ", want)
    assert (tmp_path / "a_file").read_text() == "keep"


def test_missing_gcs_bucket_is_one_line(prefs, gcs_bucket, capsys) -> None:
    assert main(["--input", str(prefs), "--out", "gs://no-such-bucket-zz/recs"]) == 2
    _one_line(capsys, "--out gs://no-such-bucket-zz/recs: bucket gs://no-such-bucket-zz does not exist")
    assert main(["--input", str(prefs), "--out", f"gs://{gcs_bucket}/recs"]) == 0  # the same, in a bucket
    assert [r["chosen"] for r in records.read_pairs(f"gs://{gcs_bucket}/recs")] == ["a"]


@pytest.mark.parametrize("flag, value", [("num-shards", "0"), ("num-shards", "-1"), ("num-shards", "nan"),
                                         ("compression", "ZIP")])
def test_bad_options_are_refused_when_parsed(flag, value, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"), f"--{flag}", value])
    assert e.value.code == 2
    _one_line(capsys, f"argument --{flag}:", value)
    with pytest.raises(DataError, match=r"num_shards \(--num-shards\) must be >= 1"):  # the Python API too
        import_prefs.run([str(tmp_path / "missing.jsonl")], str(tmp_path / "o"), num_shards=0)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_scores_are_refused(value, tmp_path, capsys) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(ROW)[:-1] + f', "score_chosen": {value}}}\n')
    assert main(["--input", str(f), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, f"error: {f}: line 1: field 'score_chosen' must be a finite number")
    assert not (tmp_path / "o" / records.METADATA_FILE).exists()


def test_input_that_is_a_directory_or_empty(prefs, tmp_path, capsys) -> None:
    assert main(["--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, f"error: {tmp_path}: is a directory; --input takes a JSONL or Parquet file")
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "empty.jsonl: no rows")
    assert main(["--input", str(prefs), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 1 pairs to {tmp_path / 'o'}"


@pytest.mark.parametrize("argv, want", [
    (["--n-train", "0"], "argument --n-train: must be >= 1, got 0"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--num-shards", "0"], "argument --num-shards: must be >= 1, got 0"),
    (["--context-tokens", "nan"], "argument --context-tokens: must be an integer, got 'nan'"),
])
def test_demo_numbers_are_refused_when_parsed(argv, want, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(tmp_path / "d"), *argv])
    assert e.value.code == 2
    _one_line(capsys, want)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("case, want", [("out_file", "--out {f}: is a file, not a directory"),
                                        ("tok_under_file", "--tokenizer-dir {f}/tok: {f} is a file")])
def test_demo_bad_out_is_one_line(case, want, tmp_path, capsys) -> None:
    f = tmp_path / "a_file"
    f.write_text("keep")
    argv = ["--out", str(f)] if case == "out_file" else ["--out", str(tmp_path / "d"), "--tokenizer-dir",
                                                          str(f / "tok")]
    assert demo.main(argv) == 2
    _one_line(capsys, "error: " + want.format(f=f))
    assert f.read_text() == "keep" and not (tmp_path / "d").exists()

"""lr_jax.io.jsonl, the one JSONL reader, and the four readers built on it (judge.pairs / score / traces,
lr_jax.data.sources): line numbers, blank lines, torn tails, error messages, local and gs:// (emulator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from judge import pairs, score, traces
from judge.schema import JudgeInputError
from lr_jax.data.errors import DataError
from lr_jax.data.sources import parse_prompts_jsonl
from lr_jax.io import jsonl, storage
from tests.helpers.scored import make_scored_rows, write_scored_dir

# Characters that `json.dumps(..., ensure_ascii=False)` leaves raw inside a string but `str.splitlines`
# treats as line ends: a reader that splits with `splitlines` cuts such a record in two.
LINE_SEPARATORS = "a\u2028b\u2029c\x85d\x1ce\x1df\x1eg\x0bh\x0ci"


def _write(path, text: str) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


def test_records_with_unicode_line_separators_round_trip(tmp_path) -> None:
    objs = [{"id": i, "response": f"{i}:{LINE_SEPARATORS}"} for i in range(3)]
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)
    assert len(text.splitlines()) > len(objs)  # the trap this reader avoids
    path = _write(tmp_path / "x.jsonl", text)
    assert [o for _, o in jsonl.read_jsonl(path)] == objs
    assert [n for n, _ in jsonl.read_jsonl(path)] == [1, 2, 3]
    assert [o for _, o in jsonl.parse_lines(jsonl.split_lines(text), source="t")] == objs


def test_line_numbers_are_physical_and_blank_lines_are_skipped(tmp_path) -> None:
    # A leading blank line, whitespace-only lines, a CRLF line and no final newline.
    text = '\n{"a": 1}\n   \n\t\n{"a": 2}\r\n{"a": 3}'
    path = _write(tmp_path / "x.jsonl", text)
    want = [(2, {"a": 1}), (5, {"a": 2}), (6, {"a": 3})]
    assert list(jsonl.read_jsonl(path)) == want
    assert list(jsonl.parse_lines(jsonl.split_lines(text), source="t")) == want
    assert list(jsonl.read_jsonl(_write(tmp_path / "e.jsonl", ""))) == []


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json",
         r"x\.jsonl: line 3: invalid JSON \(Expecting property name .* at column 2\)$"),
        ("[1, 2]", r"x\.jsonl: line 3: expected a JSON object, got list$"),
        ('"text"', r"x\.jsonl: line 3: expected a JSON object, got str$"),
        ('{"a": 1} trailing', r"x\.jsonl: line 3: invalid JSON \(Extra data at column 10\)$"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line: str, match: str) -> None:
    path = _write(tmp_path / "x.jsonl", '{"a": 1}\n\n' + line + '\n{"a": 2}\n')
    it = jsonl.read_jsonl(path)
    assert next(it) == (1, {"a": 1})  # streamed: records before the bad line are delivered
    with pytest.raises(jsonl.JsonlError, match=match):
        next(it)
    # The caller's exception type and location format.
    with pytest.raises(JudgeInputError, match=r"x\.jsonl:3: "):
        list(jsonl.read_jsonl(path, error=JudgeInputError, where=lambda n: f"{path}:{n}"))


def test_file_level_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(jsonl.JsonlError, match=r"nope\.jsonl: file not found$"):
        list(jsonl.read_jsonl(str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: not UTF-8 text \(invalid continuation byte\)$"):
        list(jsonl.read_jsonl(str(bad), error=DataError))
    with pytest.raises(jsonl.JsonlError, match="is a directory"):
        list(jsonl.read_jsonl(str(tmp_path)))


def test_torn_tail(tmp_path) -> None:
    whole = '{"a": 1}\n{"a": 2}\n'
    torn = _write(tmp_path / "torn.jsonl", whole + '{"a": 3, "b": "hal')
    with pytest.raises(jsonl.JsonlError, match=r"line 3: invalid JSON"):
        list(jsonl.read_jsonl(torn))
    assert [o["a"] for _, o in jsonl.read_jsonl(torn, torn_tail="skip")] == [1, 2]
    # A complete last record without its newline (hand-written files) is read in both modes.
    ended = _write(tmp_path / "ended.jsonl", whole + '{"a": 3}')
    for mode in ("error", "skip"):
        assert [o["a"] for _, o in jsonl.read_jsonl(ended, torn_tail=mode)] == [1, 2, 3]
    # Only the last line can be torn: a bad terminated line still raises.
    mid = _write(tmp_path / "mid.jsonl", '{"a": 1}\n{"a": \n{"a": 3}')
    with pytest.raises(jsonl.JsonlError, match=r"line 2: invalid JSON"):
        list(jsonl.read_jsonl(mid, torn_tail="skip"))
    # A torn tail that happens to be a JSON non-object is still a torn write in "skip" mode only if it fails
    # to parse; a complete non-object line is an error.
    arr = _write(tmp_path / "arr.jsonl", whole + "[1]")
    with pytest.raises(jsonl.JsonlError, match="expected a JSON object"):
        list(jsonl.read_jsonl(arr, torn_tail="skip"))


def test_complete_prefix() -> None:
    assert jsonl.complete_prefix(b"") == 0
    assert jsonl.complete_prefix(b'{"a": 1}\n') == 9
    assert jsonl.complete_prefix(b'{"a": 1}\n{"a"') == 9
    assert jsonl.complete_prefix(b'{"a"') == 0


def test_gcs_objects_read_like_local_files(gcs_bucket: str, tmp_path) -> None:
    objs = [{"id": i, "t": LINE_SEPARATORS} for i in range(3)]
    text = "\n" + "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs) + '{"id": 3, "t": "to'
    path = f"gs://{gcs_bucket}/d/x.jsonl"
    storage.write_text(path, text)
    assert [n for n, _ in jsonl.read_jsonl(path, torn_tail="skip")] == [2, 3, 4]
    assert [o for _, o in jsonl.read_jsonl(path, torn_tail="skip")] == objs
    with pytest.raises(jsonl.JsonlError, match=rf"gs://{gcs_bucket}/d/x\.jsonl: line 5: invalid JSON"):
        list(jsonl.read_jsonl(path))
    with pytest.raises(jsonl.JsonlError, match=rf"gs://{gcs_bucket}/d/nope\.jsonl: file not found"):
        list(jsonl.read_jsonl(f"gs://{gcs_bucket}/d/nope.jsonl"))


# ------------------------------------------------------------------------------------------- the four callers


def test_callers_read_records_with_line_separators(tmp_path) -> None:
    """Every reader built on the helper keeps a response containing U+2028 etc. whole (each split it in two
    with `str.splitlines` before)."""
    d = str(tmp_path)
    prompts, rows = write_scored_dir(d, n_prompts=2, n_responses=3)
    for r in rows:
        r["response"] += LINE_SEPARATORS
    with open(os.path.join(d, "scored.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    df = traces.load_scored(d)
    assert list(df.response) == [r["response"] for r in rows]
    by_prompt = pairs.load_candidates(os.path.join(d, "scored.jsonl"), pairs.PairStats())
    assert sorted(c.response for cs in by_prompt.values() for c in cs) == sorted(
        r["response"] for r in rows if r["status"] == "scored" and r["scores"]["reward"] is not None)
    ids, dropped = score.recover_scored(tmp_path / "scored.jsonl")
    assert ids == {r["id"] for r in rows} and dropped == 0
    sft = "".join(json.dumps({"id": i, "context": LINE_SEPARATORS, "query": "q", "answer": "a"},
                             ensure_ascii=False) + "\n" for i in range(4))
    got = parse_prompts_jsonl(sft, source="p.jsonl", shard_index=1, shard_count=2)
    assert [e.prompt_id for e in got] == ["1", "3"] and got[0].context == LINE_SEPARATORS
    del prompts


def test_score_readers_keep_their_messages(tmp_path) -> None:
    p = _write(tmp_path / "prompts.jsonl", '{"id": 1, "context": "c", "query": "q"}\n\n[1]\n')
    with pytest.raises(JudgeInputError, match=r"prompts\.jsonl:3: expected a JSON object, got list$"):
        score.load_prompts(p)
    with pytest.raises(JudgeInputError, match=r"missing\.jsonl: file not found$"):
        score.load_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"p\.jsonl: line 2: invalid JSON \(Expecting value at column 1\)$"):
        parse_prompts_jsonl('{"id": 1, "context": "c", "query": "q", "answer": "a"}\n?\n', source="p.jsonl")


def test_recover_scored_cuts_only_a_torn_tail(tmp_path) -> None:
    _, rows = make_scored_rows(1, 3)
    whole = "".join(json.dumps(r) + "\n" for r in rows)
    path = tmp_path / "scored.jsonl"
    path.write_text(whole + json.dumps(rows[0])[:17])
    ids, dropped = score.recover_scored(path)
    assert ids == {r["id"] for r in rows} and dropped == 17 and path.read_text() == whole
    # A complete record without its final newline is also cut: the writer re-scores it (cache hit).
    path.write_text(whole + json.dumps({"id": "extra"}))
    ids, dropped = score.recover_scored(path)
    assert "extra" not in ids and path.read_text() == whole
    path.write_text(whole.replace(json.dumps(rows[1]), "{torn"))
    with pytest.raises(JudgeInputError, match=r"scored\.jsonl:2: invalid JSON .*not the last line"):
        score.recover_scored(path)
    path.write_text(json.dumps({"no_id": 1}) + "\n")
    with pytest.raises(JudgeInputError, match=r"scored\.jsonl:1: field 'id'.*not the last line"):
        score.recover_scored(path)


def test_readers_do_not_import_jax() -> None:
    code = ("import sys, judge.pairs, judge.score, judge.traces, lr_jax.io.jsonl, lr_jax.data.sources\n"
            "bad = [m for m in ('jax', 'jaxlib', 'tensorflow') if m in sys.modules]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_repair_torn_tail_cuts_only_the_fragment(tmp_path) -> None:
    path = tmp_path / "out.jsonl"
    assert jsonl.repair_torn_tail(str(path)) == ("", 0)  # no file yet
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')
    text, dropped = jsonl.repair_torn_tail(str(path))
    assert (text, dropped) == ('{"id": "a"}\n{"id": "b"}\n', len(b'{"id": "c", "resp'))
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'  # on disk too, so an append starts a new line
    assert jsonl.repair_torn_tail(str(path)) == ('{"id": "a"}\n{"id": "b"}\n', 0)

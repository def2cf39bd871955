"""judge.pairs: best/worst selection, skip counting, bad-input errors, and crash-safe commits (local + gs://)."""

from __future__ import annotations

import json
import math
import os

import pytest

from judge import pairs
from lr_jax.io import records, storage
from tests.helpers.scored import make_scored_rows, write_jsonl, write_scored_dir


def reference_pairs(prompts, rows, min_responses, min_gap):
    """Naive reference: sort each prompt's scored responses by (reward desc, id asc)."""
    out = {}
    for p in prompts:
        c = [
            r
            for r in rows
            if r["prompt_id"] == p["id"] and r["status"] == "scored" and r["scores"]["reward"] is not None
        ]
        if len(c) < min_responses:
            continue
        c.sort(key=lambda r: (-r["scores"]["reward"], r["id"]))
        best = c[0]
        worst_reward = c[-1]["scores"]["reward"]
        worst = sorted([r for r in c if r["scores"]["reward"] == worst_reward], key=lambda r: r["id"])[-1]
        gap = best["scores"]["reward"] - worst_reward
        if gap <= 0 or gap < min_gap:
            continue
        out[p["id"]] = (best, worst)
    return out


def test_contract_of_synthetic_rows() -> None:
    """The test data follows judge.score's contract (checked by its validator when that module is present)."""
    schema = pytest.importorskip("judge.schema")
    _, rows = make_scored_rows(2, 3, fail_every=4)
    for i, r in enumerate(rows):
        schema.validate_scored_row(r, f"row {i}")


def test_pairs_match_reference_and_counts(tmp_path, capsys) -> None:
    d = str(tmp_path / "run")
    prompts, rows = write_scored_dir(d, n_prompts=6, n_responses=5, seed=3, fail_every=4)
    out = str(tmp_path / "pairs")
    assert pairs.main(["--scored", d, "--out", out, "--min-responses", "5", "--num-shards", "2"]) == 0
    printed = capsys.readouterr().out
    got = {r["prompt_id"]: r for r in records.read_pairs(out)}
    want = reference_pairs(prompts, rows, 5, 0.0)
    assert set(got) == set(want) and got
    for pid, (best, worst) in want.items():
        g = got[pid]
        assert g["chosen"] == best["response"] and g["rejected"] == worst["response"]
        assert g["context"] == f"Context of {pid}: apples are red."
        assert g["chosen_reward"] == pytest.approx(best["scores"]["reward"], rel=1e-6)
        for dim in records.DIMENSIONS:
            for side, row in (("chosen", best), ("rejected", worst)):
                v = row["scores"][dim]
                assert math.isnan(g[f"{side}_{dim}"]) if v is None else g[f"{side}_{dim}"] == v
    meta = records.read_metadata(out)
    # p0 has a failed response (4 scored < 5): skipped and counted.
    assert meta["counts"]["skipped_too_few"] == 1 and meta["counts"]["rows_failed"] == 1
    assert meta["judge_model"] == "judge-mini" and meta["producer"] == "judge.pairs"
    assert f"pairs written        {len(want)}" in printed


def test_ties_and_gaps_are_deterministic(tmp_path) -> None:
    prompts = [{"id": 1, "context": "c", "query": "q"}, {"id": "2", "context": "c2", "query": "q2"}]
    _, base = make_scored_rows(1, 1)
    rows = []
    for pid, rewards in ((1, [7.0, 7.0, 3.0, 3.0]), ("2", [5.0, 5.0, 5.0, 5.0])):
        for k, rw in enumerate(rewards):
            r = json.loads(json.dumps(base[0]))
            r.update(id=f"{pid}-{k}", prompt_id=pid, response=f"r{pid}-{k}", status="scored")
            r["scores"] = {d: rw for d in records.DIMENSIONS} | {"reward": rw}
            rows.append(r)
    write_jsonl(str(tmp_path / "scored.jsonl"), rows[::-1])  # file order must not matter
    write_jsonl(str(tmp_path / "prompts.jsonl"), prompts)
    meta = pairs.run(str(tmp_path), str(tmp_path / "o"), min_responses=4)
    (got,) = records.read_pairs(str(tmp_path / "o"))
    # chosen: smallest id among the best; rejected: largest id among the worst. Prompt "2" has no preference.
    assert (got["prompt_id"], got["chosen"], got["rejected"]) == ("1", "r1-0", "r1-3")
    assert meta["counts"]["skipped_no_gap"] == 1
    meta = pairs.run(str(tmp_path), str(tmp_path / "o2"), min_responses=4, min_gap=4.5)
    assert meta["num_records"] == 0 and meta["counts"]["skipped_small_gap"] == 1


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("status"), r"scored\.jsonl: line 3: field 'status'"),
        (lambda r: r["scores"].update(reward="high"), r"scored\.jsonl: line 3: field 'scores\.reward'"),
        (lambda r: r.update(prompt_id="nope"), r"field 'prompt_id'.*not in the prompts file"),
    ],
)
def test_bad_rows_name_file_line_field(tmp_path, capsys, mutate, match) -> None:
    d = str(tmp_path)
    _, rows = write_scored_dir(d, n_prompts=1, n_responses=4)
    mutate(rows[2])
    write_jsonl(os.path.join(d, "scored.jsonl"), rows)
    with pytest.raises(pairs.PairsInputError, match=match):
        pairs.run(d, str(tmp_path / "o"), min_responses=2)
    assert pairs.main(["--scored", d, "--out", str(tmp_path / "o"), "--min-responses", "2"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    rows[2] = make_scored_rows(1, 4)[1][2]
    write_jsonl(os.path.join(d, "scored.jsonl"), rows)
    with open(os.path.join(d, "scored.jsonl"), "a") as f:
        f.write("{not json\n")
    with pytest.raises(pairs.PairsInputError, match=r"scored\.jsonl: line 5: invalid JSON"):
        pairs.run(d, str(tmp_path / "o"), min_responses=2)


def test_missing_prompts_file_is_explained(tmp_path) -> None:
    write_jsonl(str(tmp_path / "scored.jsonl"), make_scored_rows(1, 2)[1])
    with pytest.raises(pairs.PairsInputError, match="pass --prompts"):
        pairs.run(str(tmp_path), str(tmp_path / "o"))


def test_crash_before_commit_then_rerun_on_gcs(gcs_bucket, tmp_path, monkeypatch) -> None:
    d = str(tmp_path / "run")
    prompts, rows = write_scored_dir(d, n_prompts=5, n_responses=3, seed=1)
    out = f"gs://{gcs_bucket}/pairs"
    real = storage.write_text

    def crash_on_commit(path, *a, **kw):
        if path.endswith(records.METADATA_FILE):
            raise RuntimeError("simulated crash after shard upload")
        return real(path, *a, **kw)

    monkeypatch.setattr(storage, "write_text", crash_on_commit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pairs.run(d, out, min_responses=3, num_shards=3)
    monkeypatch.setattr(storage, "write_text", real)
    leftovers = storage.list_files(out)
    assert len([p for p in leftovers if ".tfrecord-" in p]) == 3 and not any(
        p.endswith("metadata.json") for p in leftovers
    )
    with pytest.raises(records.RecordError, match="no committed preference dataset"):
        list(records.read_pairs(out, cache_dir=str(tmp_path / "c")))

    # Rerun with a different shard count: the crashed run's shards must not survive next to the new ones.
    meta = pairs.run(d, out, min_responses=3, num_shards=2)
    want = reference_pairs(prompts, rows, 3, 0.0)
    got = [r["prompt_id"] for r in records.read_pairs(out, cache_dir=str(tmp_path / "c"))]
    assert sorted(got) == sorted(want) and len(got) == len(set(got)) == meta["num_records"]
    assert len([p for p in storage.list_files(out) if ".tfrecord-" in p]) == 2

    # Same input again: a no-op (the commit marker is untouched); other input: refused unless --overwrite.
    again = pairs.run(d, out, min_responses=3, num_shards=2)
    assert again["skipped"] and again["commit_id"] == meta["commit_id"]
    with pytest.raises(records.AlreadyCommittedError):
        pairs.run(d, out, min_responses=2, num_shards=2)
    new = pairs.run(d, out, min_responses=2, num_shards=2, overwrite=True)
    assert new["commit_id"] != meta["commit_id"]
    got = [r["prompt_id"] for r in records.read_pairs(out, cache_dir=str(tmp_path / "c"))]
    assert sorted(got) == sorted(reference_pairs(prompts, rows, 2, 0.0))


def test_inputs_and_output_on_gcs(gcs_bucket, tmp_path, capsys) -> None:
    prompts, rows = make_scored_rows(3, 3, seed=4)
    for name, data in (("scored.jsonl", rows), ("prompts.jsonl", prompts)):
        storage.write_text(f"gs://{gcs_bucket}/run/{name}", "".join(json.dumps(r) + "\n" for r in data))
    out = f"gs://{gcs_bucket}/pairs"
    assert pairs.main(["--scored", f"gs://{gcs_bucket}/run", "--out", out, "--min-responses", "3"]) == 0
    got = sorted(r["prompt_id"] for r in records.read_pairs(out, cache_dir=str(tmp_path / "c")))
    assert got == sorted(reference_pairs(prompts, rows, 3, 0.0))
    assert pairs.main(["--scored", f"gs://{gcs_bucket}/run", "--out", out + "2", "--min-responses", "9"]) == 0
    assert "no pairs were written" in capsys.readouterr().err


def _scored_line(rid: str, pid: str, response: str, judge: float) -> str:
    scores = {d: judge for d in records.DIMENSIONS} | {"reward": judge}
    row = {"id": rid, "prompt_id": pid, "response": response, "status": "scored", "scores": scores}
    return json.dumps(row)


def test_reference_weight_ranks_by_the_hybrid_reward(tmp_path, capsys) -> None:
    """The judge prefers a fluent wrong answer; with --reference-weight 0.5 the right one is chosen."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "prompts.jsonl").write_text(
        json.dumps({"id": "q", "context": "Ilsa came in 1874; Tobin in 1838.", "query": "When did Ilsa come?",
                    "answer": "1874", "distractors": ["1838"]}) + "\n")
    (d / "scored.jsonl").write_text("\n".join([
        _scored_line("a", "q", "The chronicle records that Ilsa arrived in 1838.", 9.0),  # fluent, wrong
        _scored_line("b", "q", "1874", 6.0),  # terse, right
        _scored_line("c", "q", "1874 or 1838", 4.0),  # hedging: the rule gives it 0
    ]) + "\n")
    judge_only, hybrid = str(tmp_path / "judge_only"), str(tmp_path / "hybrid")
    assert pairs.main(["--scored", str(d), "--out", judge_only, "--min-responses", "3"]) == 0
    argv = ["--scored", str(d), "--out", hybrid, "--min-responses", "3", "--reference-weight", "0.5"]
    assert pairs.main(argv) == 0
    assert "0.5 x judge + 0.5 x reference (match)" in capsys.readouterr().out
    (j,), (h,) = records.read_pairs(judge_only), records.read_pairs(hybrid)
    assert j["chosen"].endswith("arrived in 1838.") and j["rejected"] == "1874 or 1838"
    assert (h["chosen"], h["rejected"]) == ("1874", "1874 or 1838")
    # 0.5 * 6 + 0.5 * 10 vs 0.5 * 4 + 0.5 * 0; the dimensions stay the judge's
    assert h["chosen_reward"] == pytest.approx(8.0) and h["rejected_reward"] == pytest.approx(2.0)
    assert h["chosen_helpfulness"] == 6.0
    assert records.read_metadata(hybrid)["options"]["reference_metric"] == "match"
    assert "reference_weight" not in records.read_metadata(judge_only)["options"]  # old fingerprints kept


def test_reference_weight_needs_every_prompt_to_have_an_answer(tmp_path, capsys) -> None:
    d = tmp_path / "run"
    d.mkdir()
    bad_answer = json.dumps({"id": "r", "context": "c", "query": "q?", "answer": 3}) + "\n"
    no_answer = json.dumps({"id": "q", "context": "c", "query": "q?"}) + "\n"
    (d / "prompts.jsonl").write_text(no_answer + bad_answer)
    (d / "scored.jsonl").write_text(_scored_line("a", "q", "x", 5.0) + "\n")
    out = str(tmp_path / "out")
    assert pairs.main(["--scored", str(d), "--out", out, "--reference-weight", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(
        "prompts.jsonl: line 1: field 'answer' missing: --reference-weight > 0 ranks responses against each "
        "prompt's reference answer")
    (d / "prompts.jsonl").write_text(bad_answer)
    assert pairs.main(["--scored", str(d), "--out", out, "--reference-weight", "0.3"]) == 2
    assert "prompts.jsonl: line 1: field 'answer' must be a non-empty string or a list of them, got 3" in \
        capsys.readouterr().err

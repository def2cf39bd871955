"""Public preference sets imported into our records (`lr_jax.data.import_prefs`) and mixed with judged long
pairs by weight (`data.mixture`): mapping, one-line errors, determinism, resume, host sharding, packing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from lr_jax.data import demo
from lr_jax.data.errors import DataError
from lr_jax.data.import_prefs import convert_row
from lr_jax.data.import_prefs import run as import_run
from lr_jax.errors import ConfigError
from lr_jax.io import records
from lr_jax.training.config import from_config_dict, parse_mixture
from tests.helpers.paths import ROOT

CHAT = {"prompt": [{"role": "user", "content": "Name a prime."}],
        "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
        "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}],
        "score_chosen": 9.0, "score_rejected": 2.0}


def test_rows_map_strings_and_chat_lists():
    r = convert_row({"prompt": "Say hi.", "chosen": "hi", "rejected": "no"}, source="f.jsonl", index=3,
                    stem="f")
    assert (r["prompt_id"], r["context"], r["query"], r["chosen"], r["rejected"]) == ("f-3", "", "Say hi.",
                                                                                       "hi", "no")
    assert (r["chosen_reward"], r["rejected_reward"]) == (1.0, 0.0) and r["chosen_helpfulness"] is None
    r = convert_row(CHAT, source="f.jsonl", index=0, stem="f")
    assert (r["query"], r["chosen"], r["rejected"], r["chosen_reward"]) == ("Name a prime.", "7", "8", 9.0)
    # No prompt field: the turns of `chosen` before its answer are the prompt; several turns keep roles.
    multi = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "4"}]
    wrong = [*multi[:2], {"role": "assistant", "content": "5"}]
    r = convert_row({"id": 17, "chosen": multi, "rejected": wrong}, source="f.jsonl", index=0, stem="f")
    assert (r["prompt_id"], r["query"], r["chosen"], r["rejected"]) == ("17", "system: Be brief.\nuser: 2+2?",
                                                                        "4", "5")
    records.encode_pair(r)  # a complete record


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "rejected": "b"}, "line 2: missing field 'chosen'"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "line 2: field 'chosen': must be a string or a list"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
     "line 2: field 'chosen': a message list with no assistant message"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"},
     "line 2: field 'prompt': message 0 must"),
    ({"chosen": "a", "rejected": "b"}, "line 2: missing field 'prompt'"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": "high"}, "field 'score_chosen'"),
])
def test_bad_input_is_one_line_naming_file_record_and_field(tmp_path, row, message):
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(row) + "\n")
    p = subprocess.run([sys.executable, "-m", "lr_jax.data.import_prefs", "--input", str(f), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith(f"error: {f}: ") and message in last[0], last
    assert not (tmp_path / "out" / records.METADATA_FILE).exists()


def test_parquet_and_jsonl_import_deterministically(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [dict(CHAT, prompt_id=f"c{i}") for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    b = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(2)]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b))
    ins = [str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl")]
    meta = import_run(ins, str(tmp_path / "out"), num_shards=2)
    assert meta["num_records"] == 5
    got = list(records.read_pairs(str(tmp_path / "out")))
    assert sorted(r["prompt_id"] for r in got) == ["b-0", "b-1", "c0", "c1", "c2"]
    assert {r["chosen"] for r in got} == {"7", "yes"}
    again = import_run(ins, str(tmp_path / "out"), num_shards=2)  # same input: a no-op
    assert again.get("skipped") and again["fingerprint"] == meta["fingerprint"]
    with pytest.raises(DataError, match="different input is already committed"):  # refused
        (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "x", "chosen": "y", "rejected": "z"}) + "\n")
        import_run(ins, str(tmp_path / "out"), num_shards=2)


def test_mixture_spec_is_validated():
    assert parse_mixture("a=0.7, b=0.3") == [("a", 0.7), ("b", 0.3)]
    for bad, msg in (("a", "not PATH=WEIGHT"), ("a=x", "not a number"), ("a=0", "> 0"), ("a=1,a=2", "twice")):
        with pytest.raises(ConfigError, match=msg):
            parse_mixture(bad)


def _cfg(tmp_path, **data):
    spec = importlib.util.spec_from_file_location("cpu_dpo", ROOT / "configs" / "cpu_dpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config().to_dict()
    c["model"].update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=16, tie_embeddings=False)
    c["train"].update(out_dir=str(tmp_path / "run"))
    c["data"].update(batch_size=4, seq_len=96, **data)
    return from_config_dict(c)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    long = [dict(p, chosen_reward=8.0, rejected_reward=2.0) for p in
            demo.make_synthetic_pairs(24, 0, context_tokens=40, num_facts=1, id_prefix="long")]
    for p in long:
        for side in ("chosen", "rejected"):
            for dim in records.DIMENSIONS:
                p[f"{side}_{dim}"] = None
    records.write_pairs(long, str(d / "long"), num_shards=2)
    (d / "short.jsonl").write_text("".join(
        json.dumps({"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
                    "rejected": "no" if i % 2 == 0 else "yes"}) + "\n" for i in range(40)))
    import_run([str(d / "short.jsonl")], str(d / "short"), num_shards=4)
    return f"{d / 'long'}=0.5,{d / 'short'}=0.5"


def _rows_of(batch):
    return [tuple(batch["tokens"][i].tolist()) for i in range(batch["tokens"].shape[0])]


def test_mixture_is_weighted_deterministic_resumable_and_host_sharded(tmp_path, two_sources):
    from lr_jax.training import data as train_data

    cfg = _cfg(tmp_path, mixture=two_sources, pairs_per_row=4)
    it = train_data.build(cfg).train_iterator()
    batches = [next(it) for _ in range(12)]
    # Both sources feed rows; short pairs (no document) share rows: some row holds several pairs.
    tokens = np.concatenate([b["tokens"] for b in batches])
    pairs_per_row = np.concatenate([b["pair_valid"] for b in batches]).sum(1)
    assert pairs_per_row.max() > 1 and pairs_per_row.min() >= 1
    weights = [w for _, w in parse_mixture(two_sources)]
    picks = [train_data.mixture_pick(weights, cfg.data.seed, j, k) for j in range(4) for k in range(12)]
    assert 0 < sum(picks) < len(picks)
    # Deterministic: a second build gives the same batches.
    again = train_data.build(cfg).train_iterator()
    for b in batches:
        nb = next(again)
        for k in b:
            np.testing.assert_array_equal(nb[k], b[k], err_msg=k)
    # Resumable: the state after 5 batches continues with batches 5.. exactly.
    it2 = train_data.build(cfg).train_iterator()
    for _ in range(5):
        next(it2)
    state = json.loads(json.dumps(it2.get_state()))
    it3 = train_data.build(cfg).train_iterator()
    it3.set_state(state)
    for b in batches[5:]:
        nb = next(it3)
        for k in b:
            np.testing.assert_array_equal(nb[k], b[k], err_msg=k)
    # Host sharded: two "hosts" holding rows {0, 2} and {1, 3} make the same global rows.
    parts = [train_data.build(cfg, rows=r).train_iterator() for r in ([0, 2], [1, 3])]
    for b in batches[:4]:
        a, c = next(parts[0]), next(parts[1])
        assert _rows_of(a) == [_rows_of(b)[0], _rows_of(b)[2]] and _rows_of(c) == [_rows_of(b)[1],
                                                                                  _rows_of(b)[3]]
    assert tokens.shape[1] == cfg.data.seq_len
    # A different mixture's state does not resume this one.
    other = train_data.build(_cfg(tmp_path, mixture=two_sources.replace("=0.5,", "=0.25,"),
                                  pairs_per_row=4)).train_iterator()
    with pytest.raises(DataError, match="cannot resume"):
        other.set_state(state)


def test_mixture_config_errors(tmp_path, two_sources):
    with pytest.raises(ConfigError, match=r"either data\.path or data\.mixture, not both"):
        _cfg(tmp_path, mixture=two_sources, path=str(tmp_path))
    from lr_jax.training import data as train_data

    with pytest.raises(DataError, match="does not exist"):
        train_data.build(_cfg(tmp_path, mixture=f"{tmp_path / 'nope'}=1"))

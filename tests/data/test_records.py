"""Integration with real TFRecord files: demo dataset round trip, host sharding, GZIP, SFT prompts file."""

from __future__ import annotations

import json
import re

import pytest

from lr_jax.data import demo
from lr_jax.data.errors import DataError
from lr_jax.data.packing import PackingConfig
from lr_jax.data.pipeline import DataPipeline
from lr_jax.data.tokenization import ChatTokenizer
from lr_jax.io import records, storage


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    paths = demo.write_demo_dataset(out, n_train=12, n_eval=6, seed=1, context_tokens=40, num_shards=4)
    return paths, ChatTokenizer.from_dir(paths["tokenizer"])


def _packing(tok: ChatTokenizer) -> PackingConfig:
    return PackingConfig(seq_len=128, max_pairs_per_row=2, pad_id=tok.pad_id)


def test_records_round_trip_matches_generator(dataset):
    paths, _ = dataset
    written = demo.make_synthetic_pairs(12, 1, context_tokens=40, id_prefix="demo-train")
    read = sorted(records.read_pairs(paths["train"]), key=lambda r: r["prompt_id"])
    assert [r["prompt_id"] for r in read] == sorted(p["prompt_id"] for p in written)
    by_id = {p["prompt_id"]: p for p in written}
    for r in read:
        for key in ("context", "query", "chosen", "rejected"):
            assert r[key] == by_id[r["prompt_id"]][key]


def test_host_shards_are_disjoint_and_cover(dataset):
    paths, tok = dataset
    hosts = [DataPipeline.from_path(paths["train"], tok, _packing(tok), global_batch_size=4, process_index=i,
                                    process_count=2, seed=0) for i in range(2)]
    ids = [{e.prompt_id for e in h.examples} for h in hosts]
    assert ids[0].isdisjoint(ids[1]) and len(ids[0] | ids[1]) == 12
    assert all(h.batch_size == 2 for h in hosts)
    ex_ids = [{int(i) for b in h.iterate_once() for i in b["example_ids"].ravel() if i >= 0} for h in hosts]
    assert ex_ids[0].isdisjoint(ex_ids[1]) and len(ex_ids[0]) + len(ex_ids[1]) == 12
    with pytest.raises(DataError, match="not divisible"):
        DataPipeline.from_path(paths["train"], tok, _packing(tok), global_batch_size=3, process_count=2)


def test_gzip_records_and_eval_split(dataset, tmp_path):
    _, tok = dataset
    pairs = demo.make_synthetic_pairs(8, 4, context_tokens=30)
    records.write_pairs(pairs, str(tmp_path / "gz"), num_shards=2, compression="GZIP")
    kw = dict(global_batch_size=2, eval_fraction=0.5)
    train = DataPipeline.from_path(str(tmp_path / "gz"), tok, _packing(tok), split="train", **kw)
    ev = DataPipeline.from_path(str(tmp_path / "gz"), tok, _packing(tok), split="eval", **kw)
    ids_t, ids_e = {e.prompt_id for e in train.examples}, {e.prompt_id for e in ev.examples}
    assert ids_t.isdisjoint(ids_e) and ids_t | ids_e == {p["prompt_id"] for p in pairs}
    assert next(train)["pair_valid"].sum() >= 1


def test_gcs_records_and_prompts(dataset, gcs_bucket, tmp_path, monkeypatch):
    _, tok = dataset
    monkeypatch.setenv("LR_JAX_CACHE", str(tmp_path / "cache"))
    pairs = demo.make_synthetic_pairs(6, 5, context_tokens=30)
    root = f"gs://{gcs_bucket}/demo"
    records.write_pairs(pairs, f"{root}/train", num_shards=2, compression="GZIP")
    storage.write_text(f"{root}/prompts.jsonl",
                       "".join(json.dumps(r) + "\n" for r in demo.pairs_to_prompts(pairs)))
    hosts = [DataPipeline.from_path(f"{root}/train", tok, _packing(tok), global_batch_size=2, process_index=i,
                                    process_count=2) for i in range(2)]
    assert sorted(e.prompt_id for h in hosts for e in h.examples) == sorted(p["prompt_id"] for p in pairs)
    sft = DataPipeline.from_path(f"{root}/prompts.jsonl", tok, _packing(tok), global_batch_size=2,
                                 objective="sft")
    assert [e.responses[0] for e in sft.examples] == [p["chosen"] for p in pairs]


def test_sft_from_prompts_file(dataset):
    paths, tok = dataset
    pipe = DataPipeline.from_path(paths["prompts"], tok, _packing(tok), global_batch_size=2, objective="sft")
    assert len(pipe.examples) == 12 and all(len(e.responses) == 1 for e in pipe.examples)
    b = next(pipe)
    assert b["branch_ids"].max() == 1 and b["loss_mask"].sum() > 0
    with pytest.raises(DataError, match="use objective 'sft'"):
        DataPipeline.from_path(paths["prompts"], tok, _packing(tok), global_batch_size=2, objective="dpo")


def test_missing_dataset_is_a_data_error(tmp_path, dataset):
    _, tok = dataset
    with pytest.raises(DataError, match="no committed preference dataset"):
        DataPipeline.from_path(str(tmp_path / "nothing"), tok, _packing(tok), global_batch_size=2)
    with pytest.raises(DataError, match=r"nope.jsonl: cannot read prompts file"):
        DataPipeline.from_path(str(tmp_path / "nope.jsonl"), tok, _packing(tok), global_batch_size=2,
                               objective="sft")


def test_demo_cli_writes_a_readable_dataset(tmp_path, capsys):
    demo.main(["--out", str(tmp_path / "d"), "--n-train", "4", "--n-eval", "2", "--context-tokens", "20",
               "--num-shards", "1", "--gzip"])
    assert '"train"' in capsys.readouterr().out
    assert len(list(records.read_pairs(str(tmp_path / "d" / "eval")))) == 2
    with pytest.raises(DataError, match="local tokenizer_dir"):
        demo.write_demo_dataset("gs://bucket/demo", n_train=1, n_eval=1)


def test_demo_pairs_are_answerable_and_deterministic():
    pairs = demo.make_synthetic_pairs(30, 2, context_tokens=300)
    assert pairs == demo.make_synthetic_pairs(30, 2, context_tokens=300)
    assert pairs != demo.make_synthetic_pairs(30, 3, context_tokens=300)
    for p in pairs:
        value = re.sub(r"^.* (\S+)\.$", r"\1", p["chosen"])
        wrong = re.sub(r"^.* (\S+)\.$", r"\1", p["rejected"])
        assert value != wrong and p["chosen"].replace(value, wrong) == p["rejected"]
        assert p["chosen"] in p["context"]  # the fact is stated in the document
        assert wrong not in re.findall(r"\w+", p["context"])  # default distractor is absent from the document
        assert 280 <= demo.count_words(p["context"]) <= 330
    hard = demo.make_synthetic_pairs(30, 2, distractor="in_context")
    words = lambda text: re.findall(r"\w+", text)
    assert sum(re.sub(r"^.* (\S+)\.$", r"\1", p["rejected"]) in words(p["context"]) for p in hard) >= 25

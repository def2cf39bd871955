"""Pipeline: resume state, deterministic shuffling, truncation/skip reporting, split, SFT, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lr_jax.data import demo
from lr_jax.data.batch import TOKEN_FIELDS
from lr_jax.data.errors import DataError
from lr_jax.data.packing import PackingConfig
from lr_jax.data.pipeline import DataPipeline
from lr_jax.data.sources import Example, eval_bucket, examples_from_pairs, in_split, parse_prompts_jsonl
from lr_jax.data.tokenization import ChatTokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> ChatTokenizer:
    return ChatTokenizer.from_dir(demo.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def _examples(n: int, seed: int = 0, context_tokens: int = 30) -> list[Example]:
    pairs = demo.make_synthetic_pairs(n, seed, context_tokens=context_tokens)
    return examples_from_pairs(pairs, source="mem")


def _pipe(tok, examples, **kw) -> DataPipeline:
    packing = PackingConfig(seq_len=kw.pop("seq_len", 160), max_pairs_per_row=kw.pop("P", 2),
                            pad_id=tok.pad_id)
    return DataPipeline(examples, tok, packing, batch_size=kw.pop("batch_size", 2), **kw)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_from_state_equals_continuing(tok):
    examples = _examples(13)
    original = _pipe(tok, examples, seed=5)
    for _ in range(3):
        next(original)
    state = json.loads(json.dumps(original.get_state()))  # must survive JSON
    expected = [next(original) for _ in range(8)]  # crosses at least one epoch boundary
    assert original.epoch >= 1
    resumed = _pipe(tok, examples, seed=5)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(8)]
    assert all(_same(a, b) for a, b in zip(expected, got, strict=True))
    assert resumed.get_state() == original.get_state()
    # A fresh pipeline that skips the resume sees different data (so the test can fail).
    fresh = _pipe(tok, examples, seed=5)
    assert not all(_same(a, b) for a, b in zip(expected, [next(fresh) for _ in range(8)], strict=True))


def test_set_state_rejects_other_layout(tok):
    state = _pipe(tok, _examples(5), seed=1).get_state()
    with pytest.raises(DataError, match="seed"):
        _pipe(tok, _examples(5), seed=2).set_state(state)
    with pytest.raises(DataError, match="shard_count"):
        _pipe(tok, _examples(5), seed=1, shard_count=2).set_state(state)


def test_shuffle_deterministic_by_seed_and_epoch(tok):
    p1, p2, p3 = (_pipe(tok, _examples(10), seed=s) for s in (7, 7, 8))
    assert np.array_equal(p1.order(0), p2.order(0))
    assert not np.array_equal(p1.order(0), p3.order(0))
    assert not np.array_equal(p1.order(0), p1.order(1))
    assert sorted(p1.order(3).tolist()) == list(range(10))
    assert all(_same(next(p1), next(p2)) for _ in range(4))


def test_every_example_once_per_epoch_and_batch_contract(tok):
    n = 11
    pipe = _pipe(tok, _examples(n), seed=3, batch_size=3)
    seen: list[int] = []
    while pipe.epoch == 0:
        b = next(pipe)
        assert {k: v.shape for k, v in b.items()} == {
            **{k: (3, 160) for k in TOKEN_FIELDS},
            "example_ids": (3, 2), "pair_valid": (3, 2)}
        seen += [int(i) for i in b["example_ids"].ravel() if i >= 0]
    # Rows of the epoch's last batch may already hold next-epoch items; all of epoch 0 came first.
    assert sorted(seen[:n]) == list(range(n))
    once = [int(i) for b in pipe.iterate_once() for i in b["example_ids"].ravel() if i >= 0]
    assert once == list(range(n))  # one pass, file order


def test_iterate_once_num_batches_pads_with_empty_batches(tok):
    pipe = _pipe(tok, _examples(3), batch_size=2)
    batches = list(pipe.iterate_once(num_batches=4))
    assert len(batches) == 4
    assert batches[-1]["segment_ids"].sum() == 0 and batches[-1]["pair_valid"].sum() == 0
    assert len(list(pipe.iterate_once(num_batches=1))) == 1


def test_truncation_is_counted_and_keeps_query(tok):
    examples = _examples(4, context_tokens=200)
    pipe = _pipe(tok, examples, seq_len=96, P=1, batch_size=1, shuffle=False)
    batch = next(pipe)
    row_tokens = batch["tokens"][0][batch["segment_ids"][0] == 1]
    text = tok.decode(row_tokens)
    assert examples[0].query.replace(" ", "") in text.replace(" ", "")
    assert pipe.stats.truncated_examples >= 1 and pipe.stats.truncated_tokens > 100
    # Head and tail of the context survive; the middle is gone.
    ctx_words = examples[0].context.split()
    assert text.split()[2:5] == ctx_words[:3]
    assert int((batch["segment_ids"][0] > 0).sum()) == 96


def test_skips_are_counted_with_ids_not_crashes(tok):
    examples = _examples(6)
    ctx, query = examples[0].context, examples[0].query
    bad_empty = Example("bad-empty", ctx, query, ("  ", "Ada Kerr lives in Ashford."), "mem: record 100")
    long_answer = " ".join(["The capital of Velesia is Ashford."] * 60)
    bad_long = Example("bad-long", ctx, query, (long_answer, "x"), "mem: record 101")
    pipe = _pipe(tok, [*examples[:3], bad_empty, bad_long, *examples[3:]], shuffle=False)
    batches = list(pipe.iterate_once(stats=pipe.stats))
    packed = {int(i) for b in batches for i in b["example_ids"].ravel() if i >= 0}
    assert packed == {0, 1, 2, 5, 6, 7}
    assert pipe.stats.skipped == {"empty_response": 1, "does_not_fit": 1}
    assert pipe.stats.skipped_ids == {"empty_response": ["bad-empty"], "does_not_fit": ["bad-long"]}
    assert "skipped 2" in pipe.stats.summary()


def test_all_skipped_is_an_error_not_a_hang(tok):
    ex = _examples(2)
    pipe = _pipe(tok, [Example(e.prompt_id, e.context, e.query, ("", ""), e.source) for e in ex])
    with pytest.raises(DataError, match="every example was skipped"):
        next(pipe)


def test_bad_record_names_record_and_field():
    pairs = demo.make_synthetic_pairs(3, 0, context_tokens=20)
    del pairs[1]["rejected"]
    with pytest.raises(DataError, match=r"mem: record 1 \(prompt_id=demo-0-1\): missing field 'rejected'"):
        examples_from_pairs(pairs, source="mem")
    pairs[1]["rejected"] = 3
    with pytest.raises(DataError, match="field 'rejected' must be a string"):
        examples_from_pairs(pairs, source="mem")


def test_hash_split_is_disjoint_covering_and_stable():
    ids = [f"p{i}" for i in range(2000)]
    ev = {i for i in ids if in_split(i, "eval", 0.1)}
    tr = {i for i in ids if in_split(i, "train", 0.1)}
    assert ev.isdisjoint(tr) and ev | tr == set(ids)
    assert 150 < len(ev) < 250
    assert eval_bucket("p1") == eval_bucket("p1") and 0 <= eval_bucket("p1") < 1
    assert {i for i in ids if in_split(i, "eval", 0.2)} >= ev  # growing the fraction only adds prompts


def test_sft_jsonl_parsing_sharding_and_batches(tok):
    rows = demo.pairs_to_prompts(demo.make_synthetic_pairs(6, 1, context_tokens=20))
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    shards = [parse_prompts_jsonl(text, source="p.jsonl", shard_index=i, shard_count=2) for i in range(2)]
    assert sorted(e.prompt_id for s in shards for e in s) == sorted(r["id"] for r in rows)
    assert {e.prompt_id for e in shards[0]}.isdisjoint({e.prompt_id for e in shards[1]})
    examples = parse_prompts_jsonl(text, source="p.jsonl")
    pipe = _pipe(tok, examples, seq_len=96, P=2, shuffle=False)
    b = next(pipe)
    assert b["branch_ids"].max() == 1
    seg1 = (b["segment_ids"][0] == 1) & (b["loss_mask"][0] == 1)
    answer = tok.decode(b["targets"][0][seg1]).replace(" ", "")
    assert answer == (rows[0]["answer"] + "<eos>").replace(" ", "")
    bad = text.replace('"answer"', '"answr"', 1)
    with pytest.raises(DataError, match=r"p.jsonl: line 1 \(id=demo-1-0\): missing field 'answer'"):
        parse_prompts_jsonl(bad, source="p.jsonl")
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        parse_prompts_jsonl(rows and json.dumps(rows[0]) + "\n{oops\n", source="p.jsonl")


def test_prefetcher_matches_plain_pipeline_and_resumes(tok):
    from lr_jax.data.prefetch import Prefetcher

    plain = _pipe(tok, _examples(9), seed=4)
    expected = [next(plain) for _ in range(7)]
    pre = Prefetcher(_pipe(tok, _examples(9), seed=4), size=3)
    got = [next(pre) for _ in range(3)]
    state = pre.get_state()
    plain_again = _pipe(tok, _examples(9), seed=4)
    for _ in range(3):
        next(plain_again)
    assert state == plain_again.get_state()  # the consumer's position, not the thread's
    got += [next(pre) for _ in range(2)]
    pre.set_state(state)  # rewind: drop prefetched batches
    got += [next(pre) for _ in range(4)]
    pre.close()
    assert all(_same(a, b) for a, b in zip(expected[:5] + expected[3:7], got, strict=True))
    bad = Prefetcher(_pipe(tok, [Example("x", "c", "q", ("", ""), "mem: record 0")]))
    with pytest.raises(DataError, match="every example was skipped"):
        next(bad)
    bad.close()

"""Packing layout (hand-checked), the mask-rule consequences, middle truncation and skips — pure NumPy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.data.errors import DataError
from lr_jax.data.packing import (
    PackingConfig,
    Skip,
    layout,
    pack,
    pair_to_separate_sequences,
    prepare,
    stack_rows,
    truncate_middle,
)
from lr_jax.model.attention.mask import TokenInfo, allowed

PAD = 0


def test_layout_hand_checked_two_pairs_in_one_row():
    cfg = PackingConfig(seq_len=12, max_pairs_per_row=2, pad_id=PAD)
    a = layout(np.array([10, 11, 12]), [np.array([20, 21]), np.array([30])], pad_id=PAD, example_id=7)
    b = layout(np.array([40]), [np.array([50]), np.array([60])], pad_id=PAD, example_id=9)
    rows = pack([a, b], cfg)
    assert len(rows) == 1
    batch = stack_rows(rows, 2, cfg)
    r = {k: v[0].tolist() for k, v in batch.items()}
    #               prompt[:-1] | p[-1] chosen | p[-1] rej | pair 2: p[-1] c | p[-1] r | pad
    assert r["tokens"] == [10, 11, 12, 20, 21, 12, 30, 40, 50, 40, 60, PAD]
    assert r["positions"] == [0, 1, 2, 3, 4, 2, 3, 0, 1, 0, 1, 0]
    assert r["branch_ids"] == [0, 0, 1, 1, 1, 2, 2, 1, 1, 2, 2, 0]
    assert r["segment_ids"] == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0]
    assert r["targets"] == [11, 12, 20, 21, PAD, 30, PAD, 50, PAD, 60, PAD, PAD]
    assert r["loss_mask"] == [0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 0]
    assert r["example_ids"] == [7, 9] and r["pair_valid"] == [1, 1]
    # The padding row of the batch is empty.
    assert batch["segment_ids"][1].sum() == 0 and batch["pair_valid"][1].tolist() == [0, 0]
    assert batch["example_ids"][1].tolist() == [-1, -1]
    assert all(v.dtype == np.int32 for v in batch.values())


def test_next_fit_respects_seq_len_and_pairs_per_row():
    cfg = PackingConfig(seq_len=8, max_pairs_per_row=2, pad_id=PAD)
    seg = lambda: layout(np.array([1, 2]), [np.array([3]), np.array([4])], pad_id=PAD)  # 5 tokens
    small = lambda: layout(np.array([1]), [np.array([3])], pad_id=PAD)  # 2 tokens
    rows = pack([seg(), seg(), small(), small(), small()], PackingConfig(seq_len=8, max_pairs_per_row=2))
    assert [r.count for r in rows] == [1, 2, 2]  # 5+5 > 8; then 5+2; then P=2 caps 2+2(+2)
    with pytest.raises(DataError):
        pack([layout(np.arange(1, 9), [np.array([3])], pad_id=PAD)], cfg)


def _info(batch):
    return TokenInfo(jnp.asarray(batch["positions"]), jnp.asarray(batch["segment_ids"]),
                     jnp.asarray(batch["branch_ids"]))


def test_mask_rule_rejected_never_sees_chosen_and_matches_separate_sequences():
    cfg = PackingConfig(seq_len=24, max_pairs_per_row=2, pad_id=PAD)
    p1, c1, r1 = np.array([5, 6, 7, 8]), np.array([9, 10, 11]), np.array([12, 13])
    p2, c2, r2 = np.array([14, 15]), np.array([16]), np.array([17, 18, 19])
    segs = [layout(p1, [c1, r1], pad_id=PAD), layout(p2, [c2, r2], pad_id=PAD)]
    batch = stack_rows(pack(segs, cfg), 1, cfg)
    m = np.asarray(allowed(_info(batch), _info(batch)))[0]  # [S, S]
    seg, br = batch["segment_ids"][0], batch["branch_ids"][0]
    for q in range(cfg.seq_len):
        for k in range(cfg.seq_len):
            if br[q] == 2 and br[k] == 1 and m[q, k]:
                pytest.fail(f"rejected token {q} attends chosen token {k}")
            if seg[q] != seg[k] and m[q, k]:
                pytest.fail(f"token {q} attends another pair's token {k}")
    # Every response position sees exactly the (position, token) set of the plain sequence prompt+response,
    # and predicts the same target: hence identical log-probs for any position-aware model.
    for s, (p, c, r) in enumerate([(p1, c1, r1), (p2, c2, r2)], start=1):
        sep = pair_to_separate_sequences(p, c, r, pad_id=PAD)
        for b, row in ((1, 0), (2, 1)):
            packed_q = np.where((seg == s) & (br == b))[0]
            sep_q = np.where(sep["positions"][row] >= len(p) - 1)[0][: len(packed_q)]
            for q, qs in zip(packed_q, sep_q, strict=True):
                vis = {(int(batch["positions"][0, k]), int(batch["tokens"][0, k])) for k in np.where(m[q])[0]}
                vis_sep = {(int(sep["positions"][row, k]), int(sep["tokens"][row, k])) for k in range(qs + 1)}
                assert vis == vis_sep
                assert batch["targets"][0, q] == sep["targets"][row, qs]
                assert batch["loss_mask"][0, q] == sep["loss_mask"][row, qs]


def _np_logps(batch, emb, pos_emb, wq, wk, wv, unembed, mask):
    """float64 one-layer attention LM: per-(row, position) log-prob of the target."""
    x = emb[batch["tokens"]] + pos_emb[batch["positions"]]  # [B, S, D]
    q, k, v = x @ wq, x @ wk, x @ wv
    s = np.einsum("bqd,bkd->bqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -1e30)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    h = x + np.einsum("bqk,bkd->bqd", a, v)
    logits = h @ unembed
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0] - logz


def test_packed_logprobs_equal_separate_sequences_float64():
    rng = np.random.default_rng(0)
    V, D, S = 32, 8, 20
    params = (rng.normal(size=(V, D)), rng.normal(size=(S, D)), rng.normal(size=(D, D)),
              rng.normal(size=(D, D)), rng.normal(size=(D, D)), rng.normal(size=(D, V)))
    p, c, r = np.array([3, 4, 5, 6, 7]), np.array([8, 9, 10, 11]), np.array([12, 13, 14])
    cfg = PackingConfig(seq_len=S, max_pairs_per_row=2, pad_id=PAD)
    packed = stack_rows(pack([layout(np.array([1, 2]), [np.array([3]), np.array([4])], pad_id=PAD),
                              layout(p, [c, r], pad_id=PAD)], cfg), 1, cfg)
    mask = np.asarray(allowed(_info(packed), _info(packed)))
    lp = _np_logps(packed, *params, mask) * packed["loss_mask"]
    sel = lambda b: ((packed["segment_ids"] == 2) & (packed["branch_ids"] == b))
    sep = pair_to_separate_sequences(p, c, r, pad_id=PAD)
    n = sep["tokens"].shape[1]
    causal = np.broadcast_to(np.tril(np.ones((n, n), bool)), (2, n, n))  # independent of the mask module
    lp_sep = _np_logps(sep, *params, causal) * sep["loss_mask"]
    np.testing.assert_allclose(lp[sel(1)].sum(), lp_sep[0].sum(), rtol=1e-12)
    np.testing.assert_allclose(lp[sel(2)].sum(), lp_sep[1].sum(), rtol=1e-12)
    assert packed["loss_mask"][sel(1)].sum() == len(c) and packed["loss_mask"][sel(2)].sum() == len(r)


def test_truncate_middle_keeps_head_tail_and_everything_outside_span():
    ids = np.arange(100, 120)  # span = context tokens 3..16 (14 tokens)
    out = truncate_middle(ids, (3, 17), 5)
    assert out.tolist() == [*range(100, 103), *range(103, 108), *range(113, 120)]  # keep 9: head 5, tail 4
    assert truncate_middle(ids, (3, 17), 0) is ids
    with pytest.raises(DataError):
        truncate_middle(ids, (3, 17), 15)


def test_prepare_truncates_context_from_middle_keeps_query_and_responses():
    prompt = np.array([1, 2, *range(100, 140), 7, 8, 9])  # template, 40 context, query+gen
    chosen, rejected = np.array([50, 51, 52]), np.array([60, 61])
    cfg = PackingConfig(seq_len=30, pad_id=PAD)
    seg = prepare(prompt, (2, 42), [chosen, rejected], cfg, example_id=3)
    assert not isinstance(seg, Skip)
    assert len(seg) == cfg.seq_len  # exactly fills: L-1 + 4 + 3 = 30 -> L = 24
    assert seg.truncated_tokens == len(prompt) - 24
    assert seg.prompt[:2].tolist() == [1, 2] and seg.prompt[-3:].tolist() == [7, 8, 9]
    ctx = seg.prompt[2:-3].tolist()
    assert ctx == list(range(100, 110)) + list(range(131, 140))  # 10 head + 9 tail
    assert seg.responses[0].tolist() == chosen.tolist() and seg.responses[1].tolist() == rejected.tolist()
    # max_prompt_len truncates too, even when the row has room
    seg2 = prepare(prompt, (2, 42), [chosen, rejected], PackingConfig(seq_len=100, max_prompt_len=20))
    assert len(seg2.prompt) == 20 and seg2.truncated_tokens == len(prompt) - 20


@pytest.mark.parametrize(
    ("responses", "cfg", "reason"),
    [
        ([np.array([5]), np.array([], np.int32)], PackingConfig(seq_len=64), "empty_response"),
        ([np.arange(3, 40), np.array([5])], PackingConfig(seq_len=64, max_response_len=16),
         "response_too_long"),
        ([np.arange(3, 40), np.arange(3, 30)], PackingConfig(seq_len=64), "does_not_fit"),
    ],
)
def test_prepare_skips_with_reason(responses, cfg, reason):
    prompt = np.array([1, 2, 100, 101, 102, 103, 7, 8])
    out = prepare(prompt, (2, 6), responses, cfg)
    assert isinstance(out, Skip) and out.reason == reason


def test_separate_sequences_layout():
    sep = pair_to_separate_sequences(np.array([1, 2]), np.array([3, 4]), np.array([5]), pad_id=PAD, seq_len=5)
    assert sep["tokens"].tolist() == [[1, 2, 3, 4, 0], [1, 2, 5, 0, 0]]
    assert sep["targets"].tolist() == [[2, 3, 4, 0, 0], [2, 5, 0, 0, 0]]
    assert sep["loss_mask"].tolist() == [[0, 1, 1, 0, 0], [0, 1, 0, 0, 0]]
    assert sep["branch_ids"].tolist() == [[0, 1, 1, 1, 0], [0, 2, 2, 0, 0]]
    assert sep["segment_ids"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]

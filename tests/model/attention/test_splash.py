"""Splash attention (TPU Pallas kernel, run in interpret mode on CPU) vs a float64 dense reference.

Covers the two-pass shared-prefix encoding (values and gradients), the one-pass path for batches without
branches, GQA, the host-side layout check and `is_available` off TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.model.attention import splash
from lr_jax.model.attention.layout import to_ring_order
from lr_jax.model.attention.mask import TokenInfo
from tests.helpers import attention as oracle
from tests.helpers.mesh import ambient

S, HQ, HKV, D = 256, 4, 2, 16  # the kernel needs multiples of 128 even in interpret mode
SCALE = 0.3


def _dense64_loss_and_out(q, k, v, info: TokenInfo, w):
    return oracle.out_and_grads64(q, k, v, oracle.mask_rule(*oracle.ids(info)), SCALE, w)


def _inputs(b: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return f(b, S, HQ, D), f(b, S, HKV, D), f(b, S, HKV, D), f(b, S, HQ, D)


def _shared_prefix_info() -> TokenInfo:
    # Row 0: [prompt 100 | chosen 50 | rejected 60] + packed causal segment of 46 (boundaries inside blocks).
    # Row 1: two packed pairs [p 30 | c 20 | r 40] [p 90 | c 36 | r 40].
    def row(pieces):
        pos, seg, br = [], [], []
        for s_id, (pl, resp) in enumerate(pieces, start=1):
            pos.append(np.arange(pl))
            seg.append(np.full(pl + sum(resp), s_id))
            br.append(np.zeros(pl))
            for b_id, rl in enumerate(resp, start=1):
                pos.append(pl + np.arange(rl))
                br.append(np.full(rl, b_id))
        return np.concatenate(pos), np.concatenate(seg), np.concatenate(br)

    rows = [row([(100, [50, 60]), (46, [])]), row([(30, [20, 40]), (90, [36, 40])])]
    return TokenInfo(*(jnp.asarray(np.stack([r[i] for r in rows]), jnp.int32) for i in range(3)))


def _splash_out_and_grads(q, k, v, info, w):
    def loss(q, k, v):
        out = splash.attention(q, k, v, info, info, scale=SCALE, block_size=128)
        return jnp.sum(out * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    return np.asarray(out), [np.asarray(g) for g in grads]


def _check(got, want):
    (out, grads), (ref_out, ref_grads) = got, want
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


def test_shared_prefix_two_pass_matches_reference():
    info = _shared_prefix_info()
    splash.check_layout(info)
    q, k, v, w = _inputs(2)
    _check(_splash_out_and_grads(q, k, v, info, w), _dense64_loss_and_out(q, k, v, info, w))


def test_packed_segments_without_branches():
    lens = [70, 90, 60, 36]
    pos = np.concatenate([np.arange(n) for n in lens])[None]
    seg = np.concatenate([np.full(n, i) for i, n in enumerate(lens)])[None]  # segment 0 = padding-like
    info = TokenInfo.build(1, S, positions=pos, segment_ids=seg)
    q, k, v, w = _inputs(1, seed=1)
    _check(_splash_out_and_grads(q, k, v, info, w), _dense64_loss_and_out(q, k, v, info, w))


def test_layout_check_accepts_packed_rows_and_rejects_zigzag_order():
    from lr_jax.data.packing import layout

    # The data pipeline's own layout (last prompt token repeated at each branch start), padding at the end.
    a = layout(np.arange(1, 13), [np.arange(5), np.arange(7)], pad_id=0)
    row = lambda x, n: np.concatenate([x, np.zeros(n, np.int32)])[None]
    pad = 4
    seg = row(np.ones(len(a.tokens), np.int32), pad)
    splash.check_layout(TokenInfo(row(a.positions, pad), seg, row(a.branch_ids, pad)))
    info = _shared_prefix_info()
    splash.check_layout(info)
    with pytest.raises(splash.SplashLayoutError, match="batch row 0"):
        splash.check_layout(to_ring_order(info, 2))
    swapped = TokenInfo(info.positions, info.segment_ids, info.branch_ids.at[0, 120].set(0))  # prompt after c
    with pytest.raises(splash.SplashLayoutError, match="before a shared"):
        splash.check_layout(swapped)


def test_not_available_off_tpu():
    ok, reason = splash.is_available()
    assert ok == (jax.default_backend() == "tpu")
    if not ok:
        assert "TPU" in reason


def test_under_a_mesh_batch_and_heads_are_split_with_shard_map():
    from jax.sharding import Mesh


    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 1, 2, 1), ("data", "fsdp", "tensor", "sequence"))
    info = _shared_prefix_info()
    q, k, v, w = _inputs(2, seed=2)
    with ambient(mesh):
        jaxpr = str(jax.make_jaxpr(lambda q: splash.attention(q, k, v, info, info, scale=SCALE,
                                                               block_size=128))(q))
        got = _splash_out_and_grads(q, k, v, info, w)
    assert "shard_map" in jaxpr
    _check(got, _dense64_loss_and_out(q, k, v, info, w))


def test_sequence_axis_is_rejected():

    mesh = jax.make_mesh((1, 1, 1, 2), ("data", "fsdp", "tensor", "sequence"), devices=jax.devices()[:2])
    q, k, v, _ = _inputs(1)
    with ambient(mesh), pytest.raises(splash.SplashLayoutError, match="ring"):
        splash.attention(q, k, v, TokenInfo.causal(1, S), TokenInfo.causal(1, S), scale=SCALE)

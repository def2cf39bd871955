"""Blockwise (flash-style) attention in pure JAX on one device: online softmax over KV tiles, O(seq) memory.

The per-tile work is online_softmax.py's (the same code ring.py runs per device): the forward walks
`[block_q, block_k]` tiles keeping fp32 running max, normaliser and accumulator, so one score tile per head
is live at a time. A `custom_vjp` saves just `q, k, v, out` and the per-row log-sum-exp, and the backward
recomputes score tiles (FlashAttention-2's recipe), so neither pass stores `[Sq, Sk]`. Tiles whose mask is
empty (e.g. above the causal diagonal) are skipped with `lax.cond`. Works on any XLA backend; sequence
lengths are padded up to a multiple of the block size with ids that nothing attends, and rows that attend
nothing come out as zeros.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lr_jax.model.attention import online_softmax as osm
from lr_jax.model.attention.mask import TokenInfo

# Segment ids for padding rows/columns: negative, so they never equal a real segment (>= 0) or each other.
_PAD_Q_SEG = -2
_PAD_KV_SEG = -1


def _pad_seq(x: jax.Array, target: int, value: int | float = 0) -> jax.Array:
    """Pad axis 1 of `x` up to `target`."""
    extra = target - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _pad_info(info: TokenInfo, target: int, pad_seg: int) -> TokenInfo:
    return TokenInfo(
        _pad_seq(info.positions, target),
        _pad_seq(info.segment_ids, target, pad_seg),
        _pad_seq(info.branch_ids, target),
    )


def _forward(q, k, v, qi, ki, scale: float, block: int) -> tuple[jax.Array, jax.Array]:
    """q `[B, Sq, Hq, D]`, k/v `[B, Sk, Hkv, D]` (lengths multiples of the tile sizes), ids `[B, S]`.

    Returns out `[B, Sq, Hq, D]` (q dtype) and lse `[B, Hkv, G, Sq]` (fp32; -inf for rows attending nothing).
    """
    q, k, v, qi, ki = osm.tie(q, k, v, qi, ki)
    qg = osm.group_heads(q, k.shape[2])
    state = osm.forward_update(osm.init_state(qg), qg, k, v, qi, ki, scale=scale, block_size=block)
    out, lse = osm.finalize(state, q.dtype)
    return out.reshape(q.shape), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, qi, ki, scale: float, block: int) -> jax.Array:
    return _forward(q, k, v, qi, ki, scale, block)[0]


def _flash_fwd(q, k, v, qi, ki, scale: float, block: int):
    out, lse = _forward(q, k, v, qi, ki, scale, block)
    return out, (q, k, v, qi, ki, out, lse)


def _flash_bwd(scale: float, block: int, res: tuple, dout: jax.Array):
    """Gradients for q, k, v; recomputes each score tile, never stores `[Sq, Sk]`. Ids get no cotangent."""
    q, k, v, qi, ki, out, lse = res
    q, k, v, qi, ki = osm.tie(q, k, v, qi, ki)
    hkv = k.shape[2]
    qg, dog, og = (osm.group_heads(x, hkv) for x in (q, dout, out))
    delta = osm.row_delta(og, dog)
    dq, dk, dv = osm.backward_block(qg, k, v, qi, ki, dog, lse, delta, scale=scale, block_size=block)
    return dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_info: TokenInfo,
    kv_info: TokenInfo,
    *,
    scale: float,
    block_size: int = 512,
) -> jax.Array:
    """Memory-efficient attention with the shared mask rule.

    Args: q `[batch, q_seq, q_heads, head_dim]`, k/v `[batch, kv_seq, kv_heads, head_dim]`, infos
    `[batch, seq]`, block_size: tile edge for both queries and keys (clipped to the sequence lengths).
    Returns `[batch, q_seq, q_heads, head_dim]` in q's dtype; rows that attend nothing are zeros.
    """
    sq, sk = q.shape[1], k.shape[1]
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"q heads ({q.shape[2]}) must be a multiple of kv heads ({k.shape[2]})")
    # Pad each length to a multiple of its tile (min(block, len)); online_softmax then tiles by exactly
    # that size, since it picks the largest divisor of the length that is <= block_size.
    bq, bk = min(block_size, sq), min(block_size, sk)
    sq_pad, sk_pad = -(-sq // bq) * bq, -(-sk // bk) * bk
    qi = _pad_info(q_info, sq_pad, _PAD_Q_SEG)
    ki = _pad_info(kv_info, sk_pad, _PAD_KV_SEG)
    out = _flash(
        _pad_seq(q, sq_pad), _pad_seq(k, sk_pad), _pad_seq(v, sk_pad), qi, ki, float(scale), int(block_size)
    )
    return out[:, :sq]

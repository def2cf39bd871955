"""Chunked flash-attention primitives shared by the ring backend (and usable by any blockwise backend).

Two pure functions do the per-device work; ring.py only adds the ring of K/V blocks around them:

* :func:`forward_update` folds one K/V block into running online-softmax statistics
  ``State(m, l, acc)`` (all fp32) for a query block — the forward of flash attention.
* :func:`backward_block` returns the contributions of one K/V block to ``dq, dk, dv`` given the saved
  log-sum-exp ``lse`` and ``delta = rowsum(dO * O)`` — the backward of flash attention, which re-computes
  the probabilities instead of storing them (so memory stays O(seq), not O(seq²)).

Both walk the block in ``[block_q, block_k]`` tiles (``lax.map`` over query tiles, ``lax.scan`` over key
tiles) so only one ``[batch, heads, block_q, block_k]`` score tile is alive at a time, and skip a tile with
``lax.cond`` when the mask rule (mask.py) makes it empty. The emptiness test is conservative: it only looks at
min/max of positions, segment ids and branch ids per tile, so it never skips a tile that has an allowed pair.

Layout: queries are grouped for GQA as ``[batch, seq, kv_heads, group, head_dim]``; per-row statistics are
``[batch, kv_heads, group, seq]``. Fully-masked rows keep ``l == 0`` and finish as zeros with ``lse = -inf``;
their gradients are exactly zero.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lr_jax.model.attention.mask import TokenInfo, allowed


class State(NamedTuple):
    """Online-softmax accumulators for a query block (fp32).

    m: running row max `[batch, kv_heads, group, q_seq]`; l: running row sum of ``exp(s - m)``, same shape;
    acc: un-normalised output `[batch, q_seq, kv_heads, group, head_dim]`.
    """

    m: jax.Array
    l: jax.Array  # noqa: E741 (the flash-attention paper's name)
    acc: jax.Array


def chunk_size(length: int, block: int) -> int:
    """Largest tile size <= `block` that divides `length` (tiles must tile the block exactly)."""
    size = max(1, min(block, length))
    while length % size:
        size -= 1
    return size


def group_heads(q: jax.Array, kv_heads: int) -> jax.Array:
    """`[b, s, hq, d]` -> `[b, s, kv_heads, hq // kv_heads, d]` (GQA: query heads sharing one K/V head)."""
    b, s, hq, d = q.shape
    if hq % kv_heads:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({kv_heads})")
    return q.reshape(b, s, kv_heads, hq // kv_heads, d)


def init_state(qg: jax.Array) -> State:
    """Empty accumulators for grouped queries `qg` `[b, s, hkv, g, d]`."""
    b, s, h, g, d = qg.shape
    return State(
        m=jnp.full((b, h, g, s), -jnp.inf, jnp.float32),
        l=jnp.zeros((b, h, g, s), jnp.float32),
        acc=jnp.zeros((b, s, h, g, d), jnp.float32),
    )


def finalize(state: State, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    """Normalise: (out `[b, s, hkv, g, d]` in `dtype`, lse `[b, hkv, g, s]` fp32; -inf for empty rows)."""
    safe_l = jnp.where(state.l > 0, state.l, 1.0)
    out = state.acc / jnp.moveaxis(safe_l, -1, 1)[..., None]
    lse = jnp.where(state.l > 0, state.m + jnp.log(safe_l), -jnp.inf)
    return out.astype(dtype), lse


def may_attend(q: TokenInfo, k: TokenInfo) -> jax.Array:
    """Scalar bool: False only if `allowed(q, k)` is certainly all-False (cheap min/max test per batch row).

    Causal: every key position is after every query position. Segments: the id ranges do not overlap.
    Branches: all keys are in response branches and the branch-id ranges do not overlap.
    """
    mn = lambda x: x.min(axis=1)
    mx = lambda x: x.max(axis=1)
    causal = mx(q.positions) >= mn(k.positions)
    seg = (mx(q.segment_ids) >= mn(k.segment_ids)) & (mn(q.segment_ids) <= mx(k.segment_ids))
    branch = (mn(k.branch_ids) == 0) | (
        (mx(q.branch_ids) >= mn(k.branch_ids)) & (mn(q.branch_ids) <= mx(k.branch_ids))
    )
    return jnp.any(causal & seg & branch)


def _tiles(x: jax.Array, size: int) -> jax.Array:
    """Split axis 1 into tiles and bring the tile index to the front: `[b, s, ...]` -> `[n, b, size, ...]`."""
    b, s = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, s // size, size, *x.shape[2:]), 1, 0)


def _untile(x: jax.Array) -> jax.Array:
    """Inverse of `_tiles`: `[n, b, size, ...]` -> `[b, n * size, ...]`."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _row_tiles(x: jax.Array, size: int) -> jax.Array:
    """Row statistics `[b, h, g, s]` -> `[n, b, h, g, size]`."""
    b, h, g, s = x.shape
    return jnp.moveaxis(x.reshape(b, h, g, s // size, size), 3, 0)


def _row_untile(x: jax.Array) -> jax.Array:
    """Inverse of `_row_tiles`."""
    x = jnp.moveaxis(x, 0, 3)
    return x.reshape(*x.shape[:3], x.shape[3] * x.shape[4])


def _tile_info(info: TokenInfo, size: int) -> TokenInfo:
    return jax.tree.map(lambda a: _tiles(a, size), info)


def _scores(qg: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """`[b, bq, h, g, d] x [b, bk, h, d]` -> fp32 scores `[b, h, g, bq, bk]`."""
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    return s * scale


def _tile_forward(
    st: State, qg: jax.Array, k: jax.Array, v: jax.Array, qi: TokenInfo, ki: TokenInfo, scale: float
) -> State:
    """Fold one `[bq, bk]` tile into the statistics."""
    mask = allowed(qi, ki)[:, None, None]  # [b, 1, 1, bq, bk]
    s = jnp.where(mask, _scores(qg, k, scale), -jnp.inf)
    m_new = jnp.maximum(st.m, s.max(axis=-1))
    # A row that has seen nothing yet keeps m = -inf; use 0 there so exp() below never sees inf - inf.
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.where(mask, jnp.exp(s - m_safe[..., None]), 0.0)
    corr = jnp.exp(jnp.where(jnp.isfinite(st.m), st.m, m_safe) - m_safe)
    l_new = st.l * corr + p.sum(axis=-1)
    pv = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    acc = st.acc * jnp.moveaxis(corr, -1, 1)[..., None] + pv
    return State(m_new, l_new, acc)


def forward_update(
    state: State,
    qg: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_info: TokenInfo,
    kv_info: TokenInfo,
    *,
    scale: float,
    block_size: int,
) -> State:
    """Fold K/V block `k, v` `[b, sk, hkv, d]` into `state` for grouped queries `qg` `[b, sq, hkv, g, d]`."""
    bq = chunk_size(qg.shape[1], block_size)
    bk = chunk_size(k.shape[1], block_size)
    k_t, v_t, ki_t = _tiles(k, bk), _tiles(v, bk), _tile_info(kv_info, bk)

    def per_q_tile(args: tuple) -> State:
        q_c, qi_c, st_c = args

        def per_k_tile(st: State, kv: tuple) -> tuple[State, None]:
            k_c, v_c, ki_c = kv
            st = jax.lax.cond(
                may_attend(qi_c, ki_c),
                lambda s_: _tile_forward(s_, q_c, k_c, v_c, qi_c, ki_c, scale),
                lambda s_: s_,
                st,
            )
            return st, None

        st_c, _ = jax.lax.scan(per_k_tile, st_c, (k_t, v_t, ki_t))
        return st_c

    st_t = State(_row_tiles(state.m, bq), _row_tiles(state.l, bq), _tiles(state.acc, bq))
    out = jax.lax.map(per_q_tile, (_tiles(qg, bq), _tile_info(q_info, bq), st_t))
    return State(_row_untile(out.m), _row_untile(out.l), _untile(out.acc))


def backward_block(
    qg: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_info: TokenInfo,
    kv_info: TokenInfo,
    dog: jax.Array,
    lse: jax.Array,
    delta: jax.Array,
    *,
    scale: float,
    block_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Contributions of K/V block `k, v` `[b, sk, hkv, d]` to the gradients (all fp32).

    qg, dog: grouped queries / output cotangent `[b, sq, hkv, g, d]`; lse, delta: `[b, hkv, g, sq]` fp32.
    Returns dq `[b, sq, hkv, g, d]`, dk and dv `[b, sk, hkv, d]`.
    """
    bq = chunk_size(qg.shape[1], block_size)
    bk = chunk_size(k.shape[1], block_size)
    q_t, do_t, qi_t = _tiles(qg, bq), _tiles(dog, bq), _tile_info(q_info, bq)
    lse_t, delta_t = _row_tiles(lse, bq), _row_tiles(delta, bq)

    def tile_grads(q_c, do_c, qi_c, lse_c, delta_c, k_c, v_c, ki_c):
        mask = allowed(qi_c, ki_c)[:, None, None]
        s = _scores(q_c, k_c, scale)
        lse_safe = jnp.where(jnp.isfinite(lse_c), lse_c, 0.0)
        p = jnp.where(mask, jnp.exp(s - lse_safe[..., None]), 0.0)
        dv = jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(do_c.dtype), do_c, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bqhgd,bkhd->bhgqk", do_c, v_c, preferred_element_type=jnp.float32)
        ds = (p * (dp - delta_c[..., None]) * scale).astype(q_c.dtype)
        dq = jnp.einsum("bhgqk,bkhd->bqhgd", ds, k_c, preferred_element_type=jnp.float32)
        dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds, q_c, preferred_element_type=jnp.float32)
        return dq, dk, dv

    def per_k_tile(dq_all: jax.Array, kv: tuple) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        k_c, v_c, ki_c = kv

        def per_q_tile(dkv: tuple, qs: tuple) -> tuple[tuple, jax.Array]:
            q_c, do_c, qi_c, lse_c, delta_c = qs
            zeros = (
                jnp.zeros(q_c.shape, jnp.float32),
                jnp.zeros(k_c.shape, jnp.float32),
                jnp.zeros(v_c.shape, jnp.float32),
            )
            dq, dk, dv = jax.lax.cond(
                may_attend(qi_c, ki_c),
                lambda: tile_grads(q_c, do_c, qi_c, lse_c, delta_c, k_c, v_c, ki_c),
                lambda: zeros,
            )
            return (dkv[0] + dk, dkv[1] + dv), dq

        init = (jnp.zeros(k_c.shape, jnp.float32), jnp.zeros(v_c.shape, jnp.float32))
        (dk_c, dv_c), dq_t = jax.lax.scan(per_q_tile, init, (q_t, do_t, qi_t, lse_t, delta_t))
        return dq_all + dq_t, (dk_c, dv_c)

    dq0 = jnp.zeros(q_t.shape, jnp.float32)
    kv_t = (_tiles(k, bk), _tiles(v, bk), _tile_info(kv_info, bk))
    dq_t, (dk_t, dv_t) = jax.lax.scan(per_k_tile, dq0, kv_t)
    return _untile(dq_t), _untile(dk_t), _untile(dv_t)


def tie(*xs: Any) -> Any:
    """Tie the mask ids to the activations with an optimization barrier; returns `xs` unchanged.

    Inside the model the `TokenInfo` is loop-invariant across the layer scan, so without this XLA hoists every
    tile's mask out of the layer loop and materialises all tiles at once: O(seq²) memory (about 3 GB of
    temporaries for the CPU DPO model's gradient at 8k tokens). After the barrier the masks depend on q.
    """
    return jax.lax.optimization_barrier(xs)


def row_delta(og: jax.Array, dog: jax.Array) -> jax.Array:
    """delta = rowsum(dO * O), the softmax-Jacobian term of the backward: og/dog `[b, sq, hkv, g, d]` ->
    `[b, hkv, g, sq]` fp32 (laid out like lse)."""
    return jnp.moveaxis(jnp.sum(og.astype(jnp.float32) * dog.astype(jnp.float32), axis=-1), 1, -1)

"""Naive attention: materialises the full `[B, H, Sq, Sk]` score matrix; the ground truth for the others."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lr_jax.model.attention.mask import NEG, TokenInfo, allowed


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
    """Softmax attention with the shared mask rule.

    Args: q `[batch, q_seq, q_heads, head_dim]`, k/v `[batch, kv_seq, kv_heads, head_dim]`; block_size unused.
    Returns `[batch, q_seq, q_heads, head_dim]` in q's dtype; rows that attend nothing are zeros.
    """
    del block_size
    b, sq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, sq, hkv, hq // hkv, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32) * scale
    mask = allowed(q_info, kv_info)[:, None, None]  # [B, 1, 1, Sq, Sk]
    s = jnp.where(mask, s, NEG)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.where(mask, jnp.exp(s - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, sq, hq, d).astype(q.dtype)

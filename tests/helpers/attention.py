"""The float64 attention oracle and the mask rule, written once for every attention test.

Both are independent of `lr_jax.model.attention` (no mask.py, no online softmax): the mask is DESIGN.md's
rule written out with NumPy broadcasting, the attention a dense softmax in float64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def ids(info: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, segment_ids, branch_ids) of a `TokenInfo` as NumPy `[batch, seq]`."""
    return tuple(np.asarray(x) for x in (info.positions, info.segment_ids, info.branch_ids))


def mask_rule(pos: np.ndarray, seg: np.ndarray, br: np.ndarray, kpos: np.ndarray | None = None,
              kseg: np.ndarray | None = None, kbr: np.ndarray | None = None) -> np.ndarray:
    """Query i may see key j: same segment, key position <= query position, and the key is prompt (branch
    0) or the query's own branch. Inputs `[batch, seq]` (keys default to the queries) -> `[batch, sq, sk]`."""
    kpos = pos if kpos is None else kpos
    kseg = seg if kseg is None else kseg
    kbr = br if kbr is None else kbr
    return ((seg[:, :, None] == kseg[:, None, :]) & (kpos[:, None, :] <= pos[:, :, None])
            & ((kbr[:, None, :] == 0) | (kbr[:, None, :] == br[:, :, None])))


def dense64(q: Any, k: Any, v: Any, mask: Any, scale: float) -> jax.Array:
    """Masked softmax attention with GQA, in float64 (call under `jax.enable_x64`); rows that may see
    nothing are zero. q `[b, sq, hq, d]`, k/v `[b, sk, hkv, d]`, mask `[b, sq, sk]` -> `[b, sq, hq, d]`."""
    b, sq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, sq, hkv, hq // hkv, d)
    m = jnp.asarray(mask)[:, None, None]
    s = jnp.where(m, jnp.einsum("bqhgd,bkhd->bhgqk", qg, k) * scale, -1e300)
    p = jnp.exp(s - s.max(-1, keepdims=True)) * m
    den = p.sum(-1, keepdims=True)
    p = p / jnp.where(den > 0, den, 1.0)
    return jnp.einsum("bhgqk,bkhd->bqhgd", p, v).reshape(q.shape)


def out_and_grads64(q: Any, k: Any, v: Any, mask: Any, scale: float,
                    cot: Any | None = None) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """`dense64` output and, given a cotangent `cot` (`[b, sq, hq, d]`), the gradients of sum(out * cot)
    with respect to q, k, v; all float64 NumPy."""
    with jax.enable_x64(True):
        args = [np.asarray(x, np.float64) for x in (q, k, v)]
        out = np.asarray(dense64(*args, mask, scale))
        if cot is None:
            return out, None
        w = np.asarray(cot, np.float64)
        grads = jax.grad(lambda *a: jnp.sum(dense64(*a, mask, scale) * w), (0, 1, 2))(*args)
    return out, [np.asarray(g) for g in grads]

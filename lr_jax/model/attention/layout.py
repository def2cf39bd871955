"""Zig-zag token order: load-balances causal ring attention over `n` sequence shards.

With contiguous shards, device ``n - 1`` holds the last tokens and attends to everything while device 0
attends to almost nothing. Split the sequence into ``2n`` chunks and give device ``i`` chunks ``i`` and
``2n - 1 - i``: every device then holds one early and one late chunk and does the same causal work.

The permutation is applied to *tokens* (ids, targets, loss weights and the `TokenInfo` ids together), so the
mask stays right with no extra index: causality is decided by the position ids carried with each token
(mask.py). Compute next-token targets BEFORE permuting; a summed per-token loss is permutation invariant.

`to_ring_order(x, n)` / `from_ring_order(x, n)` accept NumPy or JAX arrays or any pytree of them (e.g. a
`TokenInfo` or a batch dict), permuting axis `axis` (default 1, the sequence axis of `[batch, seq, ...]`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.errors import LrJaxError


class LayoutError(LrJaxError, ValueError):
    """The sequence length cannot be split into 2n equal zig-zag chunks."""


def ring_permutation(seq_len: int, n: int) -> np.ndarray:
    """Indices `perm` `[seq_len]` with ``ring_ordered = natural[perm]`` (chunks 0, 2n-1, 1, 2n-2, ...)."""
    if n < 1 or seq_len % (2 * n):
        raise LayoutError(f"zig-zag ring order needs seq_len ({seq_len}) divisible by 2 * n ({2 * n})")
    c = seq_len // (2 * n)
    chunks = np.arange(seq_len).reshape(2 * n, c)
    order = [j for i in range(n) for j in (i, 2 * n - 1 - i)]
    return chunks[order].reshape(-1)


def _take(x: Any, idx: np.ndarray, axis: int) -> Any:
    if isinstance(x, np.ndarray):
        return np.take(x, idx, axis=axis)
    return jnp.take(x, jnp.asarray(idx), axis=axis)


def to_ring_order(tree: Any, n: int, axis: int = 1) -> Any:
    """Permute every leaf's `axis` from natural to zig-zag ring order for `n` sequence shards."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return tree
    perm = ring_permutation(leaves[0].shape[axis], n)
    return jax.tree.map(lambda x: _take(x, perm, axis), tree)


def from_ring_order(tree: Any, n: int, axis: int = 1) -> Any:
    """Inverse of `to_ring_order`."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return tree
    inv = np.argsort(ring_permutation(leaves[0].shape[axis], n))
    return jax.tree.map(lambda x: _take(x, inv, axis), tree)

"""Who may attend to whom: the one mask rule every attention backend implements.

Each token carries three int32 ids, `TokenInfo` (all `[batch, seq]`):

* ``positions``   — RoPE position; also the causal order. Positions restart for each response of a
  shared-prefix row, so ordering by position (not by index in the row) is what makes
  ``[prompt | chosen | rejected]`` work, and it survives any permutation of tokens (ring attention's
  zig-zag layout) because the ids travel with the tokens.
* ``segment_ids`` — packed example a token belongs to; tokens attend only within their segment.
  Padding uses segment 0 and is masked out of every loss.
* ``branch_ids``  — 0 for shared tokens (the prompt), ``b > 0`` for response ``b`` of a shared-prefix row.
  A token of branch ``b`` sees branch 0 and branch ``b``, never another response.

Rule: ``q`` attends ``k`` iff ``seg_q == seg_k  and  pos_k <= pos_q  and  (br_k == 0 or br_k == br_q)``.
A plain causal LM is ``positions = arange(seq)``, ``segment_ids = 1``, ``branch_ids = 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

# The score of a masked-out key (also of a filtered-out token in sampling): a large finite negative instead
# of -inf keeps every exp / grad finite, even for fully masked rows.
NEG = -1e30


@struct.dataclass
class TokenInfo:
    """Per-token mask ids; each field `[batch, seq]` int32."""

    positions: jax.Array
    segment_ids: jax.Array
    branch_ids: jax.Array

    @classmethod
    def causal(cls, batch: int, seq: int) -> TokenInfo:
        """A plain causal row: positions 0..seq-1, one segment, no branches."""
        pos = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        return cls(pos, jnp.ones((batch, seq), jnp.int32), jnp.zeros((batch, seq), jnp.int32))

    @classmethod
    def build(
        cls,
        batch: int,
        seq: int,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        branch_ids: jax.Array | None = None,
    ) -> TokenInfo:
        """Fill unspecified fields with the plain-causal defaults."""
        default = cls.causal(batch, seq)
        as_i32 = lambda x, d: d if x is None else jnp.asarray(x, jnp.int32)
        return cls(
            as_i32(positions, default.positions),
            as_i32(segment_ids, default.segment_ids),
            as_i32(branch_ids, default.branch_ids),
        )


def allowed(q: TokenInfo, k: TokenInfo) -> jax.Array:
    """Boolean mask `[batch, q_seq, k_seq]`: True where query token may attend key token."""
    same_seg = q.segment_ids[:, :, None] == k.segment_ids[:, None, :]
    causal = k.positions[:, None, :] <= q.positions[:, :, None]
    kb = k.branch_ids[:, None, :]
    branch_ok = (kb == 0) | (kb == q.branch_ids[:, :, None])
    return same_seg & causal & branch_ok

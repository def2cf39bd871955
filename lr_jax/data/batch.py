"""The typed training batch: what the jitted step functions take (host batches are dicts of NumPy arrays).

The data layer builds rows as dicts keyed by `TOKEN_FIELDS` (plus host-only bookkeeping such as
``example_ids``); `Batch.of` keeps the fields the step reads. A `Batch` is a pytree (`flax.struct`), so the
same class carries arrays, `jax.ShapeDtypeStruct`s or `NamedSharding`s; fields left None are absent leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax import struct

# `[batch, seq]` int32 arrays, in this order everywhere (packing, ring order, reference-cache keys).
TOKEN_FIELDS = ("tokens", "targets", "loss_mask", "positions", "segment_ids", "branch_ids")
PAIR_FIELDS = ("pair_valid",)  # `[batch, P]` int32: 1 where a pair slot holds a real pair
REF_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")  # `[batch, P]` float32: precomputed reference


@struct.dataclass
class Batch:
    """Rows of packed sequences. Token fields `[batch, seq]` int32: `tokens`, `targets` (next token),
    `loss_mask` (1 where the target is scored), `positions`, `segment_ids` (0 = padding; one id per packed
    example), `branch_ids` (0 prompt, 1 chosen, 2 rejected). Optional `[batch, P]` fields (P = pairs per row):
    `pair_valid`, and the precomputed reference log-probs `ref_chosen_logps` / `ref_rejected_logps`."""

    tokens: Any
    targets: Any
    loss_mask: Any
    positions: Any
    segment_ids: Any
    branch_ids: Any
    pair_valid: Any = None
    ref_chosen_logps: Any = None
    ref_rejected_logps: Any = None

    @classmethod
    def of(cls, arrays: Mapping[str, Any]) -> Batch:
        """The step's fields of a host batch dict (others, e.g. ``example_ids``, are dropped)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: arrays[k] for k in names if k in arrays})

    def present(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

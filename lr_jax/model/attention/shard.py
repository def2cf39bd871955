"""Where per-device attention kernels (ring's `shard_map`, splash under a mesh) get their mesh and specs.

The mesh is the ambient one (`jax.set_mesh(mesh)`); how batch, sequence and heads split over it comes from
the logical-axis rules (`lr_jax.parallel.rules`), the same rules that place the activations around the call.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType

from lr_jax.parallel.rules import LOGICAL_RULES, logical_to_spec

# The mesh axis the "seq" logical axis maps to: the ring runs over it (ppermute, axis_index).
SEQUENCE_AXIS: str = (LOGICAL_RULES["seq"] or ("sequence",))[0]


def current_mesh() -> Any:
    """The ambient mesh (`jax.set_mesh`), or None outside one."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def sequence_shards(mesh: Any) -> int:
    """Size of the sequence axis of `mesh` (1 without a mesh or without the axis)."""
    return 1 if mesh is None else dict(mesh.shape).get(SEQUENCE_AXIS, 1)


def shard_axes(mesh: Any, batch: int, kv_heads: int) -> tuple[tuple[str, ...] | None, str | None]:
    """Mesh axes that split the batch (logical "batch", when they divide it) and the heads (logical
    "act_kv_heads", when they divide the K/V heads) inside the kernel; None = replicated."""
    batch_spec, heads_spec = logical_to_spec(("batch", "act_kv_heads"), mesh, (batch, kv_heads))
    if isinstance(batch_spec, str):
        batch_spec = (batch_spec,)
    if isinstance(heads_spec, tuple):  # one mesh axis per dim is all the kernels take
        heads_spec = heads_spec[0] if len(heads_spec) == 1 else None
    return batch_spec, heads_spec


def has_explicit_axes(mesh: Any) -> bool:
    """Whether `mesh` has Explicit axes (then shard_map inputs must be resharded to its in_specs first)."""
    return any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))

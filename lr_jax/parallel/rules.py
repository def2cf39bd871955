"""Logical-axis rules: the model names array dims logically ("batch", "seq", "embed", "heads", ...); the
rules map each name onto the mesh axes (`mesh.MESH_AXES`) it is split over. Nothing here knows the model:
callers pass trees of logical names (e.g. `lr_jax.model.param_logical_axes`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lr_jax.parallel.mesh import ShardingError

# Logical axis name -> mesh axes it is split over (None: replicated).
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "seq": ("sequence",),
    "act_embed": None,
    "act_mlp": ("tensor",),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_vocab": ("tensor",),
    # parameters
    "layers": None,
    # ZeRO over the context axis (as MaxText shards params over its context axis): parameters, gradients and
    # AdamW moments are split over fsdp x sequence, not fsdp alone. Ring attention already splits activations
    # over `sequence`; without this every sequence shard held a full fsdp-shard of the state (on 4 chips as
    # fsdp 1 x sequence 4, 4x the state of fsdp 4). `lr_jax.plan` measured it: docs/plan.md.
    "embed": ("fsdp", "sequence"),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "norm": None,
}


def _mesh_sizes(mesh: Mesh | jax.sharding.AbstractMesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))


def logical_to_spec(
    names: Sequence[str | None],
    mesh: Mesh | jax.sharding.AbstractMesh,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Partition spec for an array whose dims have logical `names`.

    A dim stays replicated when its rule is None, when the mesh axes are all size 1, when the mesh lacks the
    axis, or when an earlier dim already uses that mesh axis. Given `shape`, a dim split over several mesh
    axes keeps the longest leading run of them whose product divides its size (none: replicated).
    """
    sizes = _mesh_sizes(mesh)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_RULES:
            raise ShardingError(f"unknown logical axis {name!r}; known: {sorted(LOGICAL_RULES)}")
        axes = tuple(a for a in (LOGICAL_RULES[name] or ()) if a in sizes and sizes[a] > 1 and a not in used)
        while shape is not None and axes and shape[i] % math.prod(sizes[a] for a in axes):
            axes = axes[:-1]
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Hint the sharding of activation `x` by logical names; a no-op when no mesh is set (`jax.set_mesh`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, mesh, x.shape))


def tree_shardings(mesh: Mesh, logical_axes: Any, shapes: Any) -> Any:
    """`NamedSharding` for every leaf of `shapes` (arrays or `jax.eval_shape` structs), from the matching
    leaf of `logical_axes`: a tuple of logical names per array (same tree structure)."""
    return jax.tree.map(
        lambda names, p: NamedSharding(mesh, logical_to_spec(names, mesh, tuple(p.shape))),
        logical_axes,
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for `[batch, seq]` token / id arrays: batch over (data, fsdp), seq over sequence."""
    return NamedSharding(mesh, logical_to_spec(("batch", "seq"), mesh))

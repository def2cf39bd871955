"""Device mesh, logical-axis rules and partition specs.

The model only names axes logically ("batch", "seq", "embed", "heads", ...); this module maps those names onto
the four mesh axes ``("data", "fsdp", "tensor", "sequence")``.

Axis types: meshes are built with ``AxisType.Auto`` on every axis (jax 0.10's `jax.make_mesh` defaults to
Explicit). The model is written in the GSPMD style: parameters and batches are placed with `NamedSharding`s,
`jit` gets explicit in/out shardings, activations carry `with_sharding_constraint` hints, and XLA propagates
everything else. Explicit ("sharding in types") mode would instead demand an `out_sharding` at every einsum
that contracts an fsdp-sharded dimension and at every reshape of a sharded dimension (GQA head grouping),
which would leak mesh knowledge into the model. `shard_map` (ring attention) works on Auto meshes too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:  # the model imports this module (for `constrain`); avoid the cycle at run time
    from lr_jax.model.config import ModelConfig

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor", "sequence")

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
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "norm": None,
}


class ShardingError(ValueError):
    """Mesh shape does not fit the devices, or an unknown logical axis name."""


def make_mesh(
    data: int = 1,
    fsdp: int = 1,
    tensor: int = 1,
    sequence: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh with axes ("data", "fsdp", "tensor", "sequence"), all `AxisType.Auto` (see module docstring)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = (data, fsdp, tensor, sequence)
    if any(s < 1 for s in shape):
        raise ShardingError(
            f"mesh axis sizes must be >= 1, got data={data} fsdp={fsdp} tensor={tensor} sequence={sequence}"
        )
    if math.prod(shape) != len(devices):
        raise ShardingError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} x sequence={sequence} = {math.prod(shape)} "
            f"devices, but {len(devices)} are available"
        )
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 4, devices=devices)


def _mesh_sizes(mesh: Mesh | jax.sharding.AbstractMesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))


def logical_to_spec(
    names: Sequence[str | None],
    mesh: Mesh | jax.sharding.AbstractMesh,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Partition spec for an array whose dims have logical `names`.

    A dim stays replicated when its rule is None, when the mesh axes are all size 1, when the mesh lacks the
    axis, when an earlier dim already uses that mesh axis, or (given `shape`) when the size is not divisible.
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
        if shape is not None and axes and shape[i] % math.prod(sizes[a] for a in axes):
            axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Hint the sharding of activation `x` by logical names; a no-op when no mesh is set (`jax.set_mesh`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, mesh, x.shape))


def param_shardings(cfg: ModelConfig, mesh: Mesh, params_shape: dict[str, Any]) -> dict[str, Any]:
    """NamedSharding for every parameter; `params_shape` is the params tree or its `jax.eval_shape`."""
    from lr_jax.model.transformer import param_logical_axes  # lazy: transformer imports this module

    axes = param_logical_axes(cfg, params_shape)
    return jax.tree.map(
        lambda names, p: NamedSharding(mesh, logical_to_spec(names, mesh, tuple(p.shape))),
        axes,
        params_shape,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for `[batch, seq]` token / id arrays: batch over (data, fsdp), seq over sequence."""
    return NamedSharding(mesh, logical_to_spec(("batch", "seq"), mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, small state)."""
    return NamedSharding(mesh, PartitionSpec())

"""The device mesh: four named axes ``("data", "fsdp", "tensor", "sequence")`` and the shardings of batches.

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

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lr_jax.errors import LrJaxError

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor", "sequence")


class ShardingError(LrJaxError, ValueError):
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


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, small state)."""
    return NamedSharding(mesh, PartitionSpec())

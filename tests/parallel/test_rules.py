"""Mesh construction, logical-axis rules, and a sharded forward equal to the single-device forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lr_jax.model import ModelConfig, forward, init_params, param_shardings
from lr_jax.parallel.mesh import ShardingError, make_mesh
from lr_jax.parallel.rules import batch_sharding, constrain, logical_to_spec

CFG = ModelConfig.tiny(qkv_bias=True, post_norms=True, attention_block_size=8)


def test_make_mesh_checks_device_count() -> None:
    assert len(jax.devices()) == 8, "conftest should simulate 8 CPU devices"
    mesh = make_mesh(data=2, fsdp=2, sequence=2)
    assert mesh.axis_names == ("data", "fsdp", "tensor", "sequence")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1, "sequence": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ShardingError, match=r"= 4 devices, but 8 are available"):
        make_mesh(data=2, fsdp=2)


def test_logical_rules() -> None:
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert logical_to_spec(("batch", "seq"), mesh) == PartitionSpec(("data", "fsdp"), None)
    assert logical_to_spec(("vocab", "embed"), mesh) == PartitionSpec("tensor", "fsdp")
    # kv_heads=1 cannot be split over tensor=2: replicated instead of an error.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), mesh, (64, 1, 16)) == PartitionSpec(
        "fsdp", None, None
    )
    # Several mesh axes: the longest leading run that divides the size (6 over fsdp 2 x seq 4: fsdp only).
    seq_mesh = make_mesh(fsdp=2, sequence=4)
    assert logical_to_spec(("embed",), seq_mesh, (64,)) == PartitionSpec(("fsdp", "sequence"))
    assert logical_to_spec(("embed",), seq_mesh, (6,)) == PartitionSpec("fsdp")
    with pytest.raises(ShardingError, match="unknown logical axis 'heds'"):
        logical_to_spec(("heds",), mesh)
    x = jnp.ones((4, 4))
    assert constrain(x, ("batch", "seq")) is x  # no mesh set: no-op


@pytest.mark.parametrize(
    "axes", [dict(data=2, fsdp=2, tensor=1, sequence=2), dict(data=1, fsdp=2, tensor=2, sequence=2)]
)
def test_sharded_forward_equals_single_device(axes: dict[str, int]) -> None:
    params = init_params(CFG, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (4, 32)), jnp.int32)
    segments = jnp.asarray(np.repeat([[1] * 20 + [2] * 12], 4, axis=0), jnp.int32)
    positions = jnp.asarray(np.repeat([list(range(20)) + list(range(12))], 4, axis=0), jnp.int32)
    expected = jax.jit(forward, static_argnums=0)(CFG, params, tokens, positions, segments)

    mesh = make_mesh(**axes)
    p_shard = param_shardings(CFG, mesh, jax.eval_shape(lambda: params))
    b_shard = batch_sharding(mesh)
    out_shard = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), "sequence", None))
    sharded_params = jax.device_put(params, p_shard)
    # ZeRO over the context axis: the embed dim is split over fsdp x sequence.
    assert sharded_params["embed"]["embedding"].sharding.spec == PartitionSpec(
        "tensor" if axes["tensor"] > 1 else None, ("fsdp", "sequence")
    )
    step = jax.jit(
        lambda p, t, pos, seg: forward(CFG, p, t, pos, seg),
        in_shardings=(p_shard, b_shard, b_shard, b_shard),
        out_shardings=out_shard,
    )
    with jax.set_mesh(mesh):
        got = step(sharded_params, *(jax.device_put(x, b_shard) for x in (tokens, positions, segments)))
    assert got.sharding == out_shard
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5)

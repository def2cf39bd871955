"""Ring attention (lr_jax/model/attention/ring.py) vs an independent float64 dense reference.

One batch holds every mask kind, one per row: plain causal, packed segments with padding, and two
shared-prefix rows `[prompt | chosen | rejected]` whose prompt boundary falls inside a shard. Values and
gradients are checked on 8 simulated CPU devices, sequence axes of 2, 4 and 8, natural and zig-zag order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from lr_jax.model.attention import ring, shard
from lr_jax.model.attention.layout import from_ring_order, ring_permutation, to_ring_order
from lr_jax.model.attention.mask import TokenInfo
from tests.helpers import attention as oracle
from tests.helpers.mesh import ambient

B, S, HQ, HKV, D = 4, 32, 4, 2, 8
SCALE = D**-0.5
BLOCK = 4


def _rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    causal = (np.arange(S), np.ones(S), np.zeros(S))
    # Packed: segments of 11, 9 and 8 tokens, then 4 padding tokens (segment 0).
    lens = [11, 9, 8]
    packed = (
        np.concatenate([np.arange(n) for n in lens] + [np.zeros(4)]),
        np.concatenate([np.full(n, i + 1) for i, n in enumerate(lens)] + [np.zeros(4)]),
        np.zeros(S),
    )
    # Shared prefix: prompt 13 (boundary inside a shard for n = 2, 4, 8), chosen 7, rejected 12.
    p, c, r = 13, 7, 12
    shared = (
        np.concatenate([np.arange(p), p + np.arange(c), p + np.arange(r)]),
        np.ones(S),
        np.concatenate([np.zeros(p), np.ones(c), np.full(r, 2)]),
    )
    # Two packed shared-prefix pairs: [p5 c4 r3 | p9 c6 r5].
    pieces_pos, pieces_seg, pieces_br = [], [], []
    for seg, (pl, cl, rl) in enumerate([(5, 4, 3), (9, 6, 5)], start=1):
        pieces_pos += [np.arange(pl), pl + np.arange(cl), pl + np.arange(rl)]
        pieces_seg += [np.full(pl + cl + rl, seg)]
        pieces_br += [np.zeros(pl), np.ones(cl), np.full(rl, 2)]
    packed_shared = (np.concatenate(pieces_pos), np.concatenate(pieces_seg), np.concatenate(pieces_br))
    rows = [causal, packed, shared, packed_shared]
    return tuple(np.stack([r[i] for r in rows]).astype(np.int32) for i in range(3))


@pytest.fixture(scope="module")
def problem():
    pos, seg, br = _rows()
    info = TokenInfo(jnp.asarray(pos), jnp.asarray(seg), jnp.asarray(br))
    masks = oracle.mask_rule(pos, seg, br)
    rng = np.random.default_rng(0)
    q64 = rng.normal(size=(B, S, HQ, D))
    k64, v64 = rng.normal(size=(B, S, HKV, D)), rng.normal(size=(B, S, HKV, D))
    w64 = rng.normal(size=(B, S, HQ, D))
    out, grads = oracle.out_and_grads64(q64, k64, v64, masks, SCALE, w64)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return dict(info=info, q=f32(q64), k=f32(k64), v=f32(v64), w=f32(w64), out=out, grads=grads)


def _run(problem, zigzag_n: int | None):
    """Jitted (out, grads) of ring attention; inputs permuted to zig-zag order when zigzag_n is set."""
    q, k, v, info, w = (problem[x] for x in ("q", "k", "v", "info", "w"))
    if zigzag_n:
        q, k, v, info, w = to_ring_order((q, k, v, info, w), zigzag_n)

    def loss(q, k, v):
        out = ring.attention(q, k, v, info, info, scale=SCALE, block_size=BLOCK)
        return jnp.sum(out * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    out, grads = np.asarray(out), [np.asarray(g) for g in grads]
    if zigzag_n:  # un-permute on the host, as the data pipeline / analysis code would
        out, grads = from_ring_order((out, grads), zigzag_n)
    return out, grads


def _check(problem, out, grads):
    np.testing.assert_allclose(out, problem["out"], atol=1e-5, rtol=1e-5)
    for name, got, want in zip("qkv", grads, problem["grads"], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


def test_local_fallback_without_mesh(problem):
    assert shard.current_mesh() is None
    _check(problem, *_run(problem, None))


MESHES = {
    "data4_seq2": ((4, 1, 1, 2), 8),
    "data2_seq4": ((2, 1, 1, 4), 8),
    "tensor2_seq4": ((1, 1, 2, 4), 8),  # heads split over "tensor" too
    "seq8": ((1, 1, 1, 8), 8),
    "seq2_two_devices": ((1, 1, 1, 2), 2),  # explicit device list, Auto axes
}


def _mesh(shape: tuple[int, ...], n_devices: int):
    names = ("data", "fsdp", "tensor", "sequence")
    if n_devices == len(jax.devices()):
        return jax.make_mesh(shape, names)  # Explicit axis types (jax.make_mesh's default)
    return Mesh(np.array(jax.devices()[:n_devices]).reshape(shape), names)


@pytest.mark.parametrize("zigzag", [False, True], ids=["natural", "zigzag"])
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_ring_matches_dense_reference(problem, mesh_name, zigzag):
    shape, n_dev = MESHES[mesh_name]
    mesh = _mesh(shape, n_dev)
    n = shape[-1]
    with ambient(mesh):
        # The ring really runs: K/V move with ppermute.
        jaxpr = jax.make_jaxpr(lambda q: ring.attention(q, problem["k"], problem["v"], problem["info"],
                                                        problem["info"], scale=SCALE))(problem["q"])
        assert "ppermute" in str(jaxpr)
        _check(problem, *_run(problem, n if zigzag else None))


def test_ambient_mesh_from_jax_set_mesh(problem):
    mesh = jax.make_mesh((2, 1, 1, 4), ("data", "fsdp", "tensor", "sequence"))
    with jax.set_mesh(mesh):
        assert shard.current_mesh() is not None
        _check(problem, *_run(problem, 4))


def test_fully_masked_rows_are_zero_with_finite_grads():
    # Keys all belong to segment 2; queries of segment 1 may attend nothing.
    q = jnp.ones((1, 8, 2, 4))
    k = v = jnp.ones((1, 8, 1, 4))
    qi = TokenInfo.build(1, 8, segment_ids=jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2]]))
    ki = TokenInfo.build(1, 8, segment_ids=jnp.full((1, 8), 2))
    mesh = jax.make_mesh((1, 1, 1, 2), ("data", "fsdp", "tensor", "sequence"), devices=jax.devices()[:2])
    for m in (None, mesh):
        with ambient(m):
            f = lambda q: ring.attention(q, k, v, qi, ki, scale=0.5, block_size=2)
            out = np.asarray(jax.jit(f)(q))
            g = np.asarray(jax.jit(jax.grad(lambda q, f=f: f(q).sum()))(q))
        assert np.all(out[0, :4] == 0) and np.allclose(out[0, 4:], 1.0)
        assert np.all(np.isfinite(g)) and np.all(g[0, :4] == 0)


def test_zigzag_layout_roundtrip_and_balance():
    n, s = 4, 32
    x = np.arange(2 * s).reshape(2, s)
    y = to_ring_order(x, n)
    assert np.array_equal(from_ring_order(y, n), x)
    assert sorted(ring_permutation(s, n)) == list(range(s))
    # Causal work per shard (pairs k <= q) is equal in zig-zag order, unequal in natural order.
    pos = y[0]
    work = lambda p: [int(np.sum(p[i * s // n:(i + 1) * s // n, None] >= p[None, :])) for i in range(n)]
    assert len(set(work(pos))) == 1
    assert len(set(work(np.arange(s)))) == n
    with pytest.raises(ValueError, match="divisible"):
        to_ring_order(np.zeros((1, 30)), n)


def test_indivisible_sequence_is_a_clear_error():
    mesh = jax.make_mesh((1, 1, 1, 8), ("data", "fsdp", "tensor", "sequence"))
    x = jnp.zeros((1, 12, 2, 4))
    with ambient(mesh), pytest.raises(ring.RingAttentionError, match="not divisible"):
        ring.attention(x, x, x, TokenInfo.causal(1, 12), TokenInfo.causal(1, 12), scale=1.0)


def test_backward_memory_stays_linear_inside_a_layer_scan():
    """Regression: with TokenInfo loop-invariant across a layer scan (as in the model), the per-tile masks
    must not be hoisted out of the loop and materialised for all tiles at once (O(seq²) memory)."""
    s, block = 4096, 256
    q = jax.ShapeDtypeStruct((1, s, 2, 8), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, s, 1, 8), jnp.float32)

    def loss(q, k, v):
        info = TokenInfo.causal(1, s)

        def layer(x, w):
            return ring.attention(x * w, k, v, info, info, scale=0.3, block_size=block), None

        return jax.lax.scan(layer, q, jnp.ones(2))[0].sum()

    temp = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes
    # Linear: a few tiles plus O(seq) accumulators (~3 MB). Hoisted masks alone would be seq² bytes = 16 MB.
    assert temp < 8e6, f"{temp / 1e6:.1f} MB of temporaries: tile masks were hoisted out of the layer scan"


def test_bfloat16_inputs(problem):
    """bf16 activations (the model's usual dtype): fp32 accumulators keep the result at bf16 precision."""
    mesh = jax.make_mesh((4, 1, 1, 2), ("data", "fsdp", "tensor", "sequence"))
    q, k, v = (problem[x].astype(jnp.bfloat16) for x in "qkv")
    with ambient(mesh):
        info = problem["info"]
        f = lambda q, k, v: ring.attention(q, k, v, info, info, scale=SCALE, block_size=BLOCK)
        out = jax.jit(f)(q, k, v)
        grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * problem["w"]),
                                 (0, 1, 2)))(q, k, v)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(np.asarray(out, np.float32), problem["out"], atol=3e-2, rtol=3e-2)
    for g, want in zip(grads, problem["grads"], strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), want, atol=6e-2, rtol=6e-2)

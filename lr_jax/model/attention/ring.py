"""Ring attention: the sequence axis sharded over the mesh's ``"sequence"`` axis.

Each device keeps its query shard; the K/V shards (with their `TokenInfo` ids) travel around the ring with
`jax.lax.ppermute`, and every visit is folded into fp32 online-softmax statistics (online_softmax.py, tiled
by `block_size`, tiles the mask makes empty are skipped with `lax.cond`). After ``n`` steps every query has
seen every key, and no device ever holds more than two K/V shards.

Backward (`jax.custom_vjp`, as in the ring-attention paper): only q, k, v, the output and the per-row
log-sum-exp are saved — O(seq / n) per device. The backward pass runs the ring again: K/V shards travel
together with their fp32 ``dk, dv`` accumulators, each device adds its contribution, and after ``n`` hops
the accumulators are back home. The custom_vjp sits *outside* `jax.shard_map` (forward and backward are two
separate shard_maps), so JAX never differentiates through the collectives and ``check_vma`` can be off.

Which mesh: the ambient one of ``jax.set_mesh(mesh)`` (shard.py). No mesh, no ``"sequence"`` axis or an
axis of size 1 → the same flash computation runs locally (a blockwise backend with O(seq) backward memory).
Inside the ring, batch and heads are split as the logical-axis rules split "batch" and "act_kv_heads"
(`lr_jax.parallel.rules`) when they divide.

Load balance for causal masks: feed tokens in zig-zag order (layout.py). Natural order is also correct,
just unbalanced. Sequence lengths must be divisible by the ``"sequence"`` axis size.

Per-block kernel (`block_kernel`, `ModelConfig.ring_block_kernel`; ring_kernels.py): ``"jax"`` (default,
online_softmax.py's tiles), ``"splash"`` (TPU Pallas; needs the zig-zag order and the data pipeline's
layout, checked) or ``"cudnn"`` (GPU forward). The ring, the fp32 merge and the custom VJP are the same.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lr_jax.errors import LrJaxError
from lr_jax.model.attention import online_softmax as osm
from lr_jax.model.attention import ring_kernels
from lr_jax.model.attention.mask import TokenInfo
from lr_jax.model.attention.shard import SEQUENCE_AXIS, current_mesh, has_explicit_axes, shard_axes


class RingAttentionError(LrJaxError, ValueError):
    """Shapes that cannot be split over the ring."""


def is_available() -> tuple[bool, str]:
    """Pure JAX (shard_map + ppermute): runs on every platform."""
    return True, "pure JAX; runs on CPU, GPU and TPU"


def config_problem(cfg: Any, seq_len: int, sequence: int) -> tuple[str, str] | None:
    """Registry hook: (field, message) for rows of `seq_len` over `sequence` shards that the ring cannot run
    with `cfg.ring_block_kernel` here; field "seq_len" means the caller's row length."""
    if seq_len % (2 * sequence):
        return "seq_len", (f"{seq_len} must be divisible by 2 * mesh.sequence = {2 * sequence} (ring "
                           "attention's zig-zag token order)")
    name = cfg.ring_block_kernel
    if name == "jax":
        return None
    ok, why = ring_kernels.is_available(name)
    if not ok:
        return "ring_block_kernel", f"{name!r} is not available here: {why}"
    problem = ring_kernels.shape_problem(name, seq_len, sequence, cfg.attention_block_size, cfg.dtype)
    return ("ring_block_kernel", problem) if problem else None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static (hashable) description of one call: how to shard and how to tile."""

    scale: float
    block_size: int
    mesh: Any = None  # None: run locally, no ring
    n: int = 1
    batch: Any = None  # mesh axes for the batch dim (tuple) or None
    heads: Any = None  # mesh axis for the heads dim or None
    kernel: str = "jax"  # ring_kernels name: what computes one (query block x K/V block) step


def _plan(q: jax.Array, k: jax.Array, scale: float, block_size: int, kernel: str = "jax") -> _Plan:
    mesh = current_mesh()
    sizes = dict(mesh.shape) if mesh is not None else {}
    n = sizes.get(SEQUENCE_AXIS, 1)
    if kernel not in ring_kernels.KERNELS:
        raise RingAttentionError(f"ring attention: unknown block kernel {kernel!r}; "
                                 f"one of {ring_kernels.KERNELS}")
    if kernel == "splash":
        if q.shape[1] != k.shape[1]:
            raise RingAttentionError("ring attention with the splash block kernel: self-attention only "
                                     f"(query length {q.shape[1]} != key/value length {k.shape[1]})")
        problem = ring_kernels.shape_problem(kernel, q.shape[1], n, block_size)
        if problem:
            raise RingAttentionError(f"ring attention: {problem}")
    if n == 1:
        return _Plan(scale, block_size, kernel=kernel)
    for name, length in (("query", q.shape[1]), ("key/value", k.shape[1])):
        if length % n:
            raise RingAttentionError(
                f"ring attention: {name} length {length} is not divisible by the "
                f"'{SEQUENCE_AXIS}' mesh axis ({n})"
            )
    batch, heads = shard_axes(mesh, q.shape[0], k.shape[2])
    return _Plan(scale, block_size, mesh, n, batch, heads, kernel)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_info: TokenInfo,
    kv_info: TokenInfo,
    *,
    scale: float,
    block_size: int = 512,
    block_kernel: str = "jax",
) -> jax.Array:
    """Masked GQA attention, ring-parallel over the ``"sequence"`` mesh axis.

    q `[batch, q_seq, q_heads, head_dim]`, k/v `[batch, kv_seq, kv_heads, head_dim]`, infos `[batch, seq]`
    → `[batch, q_seq, q_heads, head_dim]`. Mask: mask.allowed; fully-masked rows give zeros.
    `block_kernel`: one of ring_kernels.KERNELS. With ``"splash"``, tokens must be in zig-zag order for the
    ring size and laid out as ring_kernels.layout_violations allows: concrete ids are checked on the host
    (`SplashRingLayoutError`); under jit, rows that fail the same check come out as NaN, never as a silently
    different mask (call `ring_kernels.check_layout` on the host batch for the clear error).
    """
    plan = _plan(q, k, scale, block_size, block_kernel)
    row_ok = _splash_guard(plan, q_info, kv_info) if block_kernel == "splash" else None
    if plan.mesh is not None and has_explicit_axes(plan.mesh):
        # Explicit-axis meshes (jax.make_mesh's default) type arrays by their sharding: shard_map demands
        # inputs already laid out as in_specs, so reshard outside the custom_vjp (its transpose maps the
        # cotangents back to the caller's layout).
        tok, info, _ = _specs(plan)
        put = lambda tree, spec: jax.tree.map(
            lambda x: jax.sharding.reshard(x, NamedSharding(plan.mesh, spec)), tree
        )
        q, k, v = put((q, k, v), tok)
        q_info, kv_info = put((q_info, kv_info), info)
    out = _flash(q, k, v, q_info, kv_info, plan)
    if row_ok is not None:
        out = jnp.where(row_ok[:, None, None, None], out, jnp.asarray(jnp.nan, out.dtype))
    return out


def _splash_guard(plan: _Plan, q_info: TokenInfo, kv_info: TokenInfo) -> jax.Array | None:
    """Layout check for the splash block kernel: raises on concrete ids, else per-row ok flags `[b]`."""
    leaves = jax.tree.leaves((q_info, kv_info))
    concrete = not any(isinstance(x, jax.core.Tracer) for x in leaves)
    same = lambda: all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(q_info), jax.tree.leaves(kv_info),
                                                             strict=True))
    if kv_info is not q_info and not (concrete and same()):
        raise RingAttentionError("ring attention with the splash block kernel: self-attention only (pass the "
                                 "same TokenInfo for queries and keys)")
    if concrete:
        ring_kernels.check_layout(q_info, plan.n)
        return None
    if plan.mesh is not None and has_explicit_axes(plan.mesh):
        # The check un-permutes the zig-zag order (a gather along the sequence): gather the int ids first.
        spec = NamedSharding(plan.mesh, P(plan.batch, None))
        q_info = jax.tree.map(lambda x: jax.sharding.reshard(x, spec), q_info)
    return ring_kernels.layout_ok(q_info, plan.n)


# ---------------------------------------------------------------------------------------------- per device


def _send(tree: Any, n: int) -> Any:
    """Pass every leaf one step along the ring (device i -> i + 1)."""
    perm = [(i, (i + 1) % n) for i in range(n)]
    return jax.tree.map(lambda x: jax.lax.ppermute(x, SEQUENCE_AXIS, perm), tree)


def _ring_step(plan: _Plan, i: Any) -> ring_kernels.Step:
    """Step `i` on this device: the visiting K/V block came from device (r - i) mod n."""
    if plan.n == 1:
        return ring_kernels.Step(jnp.int32(0), jnp.int32(0), 1)
    r = jax.lax.axis_index(SEQUENCE_AXIS)
    return ring_kernels.Step(r, (r - i) % plan.n, plan.n)


def _local_fwd(plan: _Plan, q, k, v, qi, ki) -> tuple[jax.Array, jax.Array]:
    """Forward on one device's shards. Returns out `[b, sq, hq, d]` and lse `[b, hkv, g, sq]` fp32."""
    q, k, v, qi, ki = osm.tie(q, k, v, qi, ki)
    qg = osm.group_heads(q, k.shape[2])
    kern = ring_kernels.get(plan.kernel)
    update = lambda st, blk, i: jax.lax.cond(
        osm.may_attend(qi, blk[2]),
        lambda s: kern.fold(s, _ring_step(plan, i), qg, blk[0], blk[1], qi, blk[2], scale=plan.scale,
                            block_size=plan.block_size),
        lambda s: s,
        st,
    )
    state, blk = osm.init_state(qg), (k, v, ki)
    if plan.n > 1:

        def step(i: int, carry: tuple) -> tuple:
            st, b = carry
            nxt = _send(b, plan.n)  # issued before the compute so XLA can overlap the transfer
            return update(st, b, i), nxt

        state, blk = jax.lax.fori_loop(0, plan.n - 1, step, (state, blk))
    out, lse = osm.finalize(update(state, blk, plan.n - 1), q.dtype)
    return out.reshape(q.shape), lse


def _local_bwd(plan: _Plan, q, k, v, qi, ki, out, lse, do) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Backward on one device's shards; K/V travel with their dk/dv accumulators."""
    q, k, v, qi, ki = osm.tie(q, k, v, qi, ki)
    hkv = k.shape[2]
    qg, dog = osm.group_heads(q, hkv), osm.group_heads(do, hkv)
    og = osm.group_heads(out, hkv)
    delta = osm.row_delta(og, dog)
    kern = ring_kernels.get(plan.kernel)

    def contrib(kk, vv, kki, i):
        zeros = lambda: (
            jnp.zeros(qg.shape, jnp.float32),
            jnp.zeros(kk.shape, jnp.float32),
            jnp.zeros(vv.shape, jnp.float32),
        )
        return jax.lax.cond(
            osm.may_attend(qi, kki),
            lambda: kern.backward(
                _ring_step(plan, i), qg, kk, vv, qi, kki, og, dog, lse, delta, scale=plan.scale,
                block_size=plan.block_size,
            ),
            zeros,
        )

    if plan.n == 1:
        dq, dk, dv = contrib(k, v, ki, 0)
    else:

        def step(i: int, carry: tuple) -> tuple:
            dq, (kk, vv, kki, dk, dv) = carry
            c_dq, c_dk, c_dv = contrib(kk, vv, kki, i)
            return dq + c_dq, _send((kk, vv, kki, dk + c_dk, dv + c_dv), plan.n)

        init = (
            jnp.zeros(qg.shape, jnp.float32),
            (k, v, ki, jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)),
        )
        # n hops: every dk/dv accumulator has visited every query shard and is back on its owner.
        dq, (_, _, _, dk, dv) = jax.lax.fori_loop(0, plan.n, step, init)
    return dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


# ---------------------------------------------------------------------------------------------- global


def _specs(plan: _Plan) -> tuple[P, P, P]:
    """(token arrays `[b, s, h, d]`, TokenInfo fields `[b, s]`, lse `[b, hkv, g, s]`)."""
    return (
        P(plan.batch, SEQUENCE_AXIS, plan.heads, None),
        P(plan.batch, SEQUENCE_AXIS),
        P(plan.batch, plan.heads, None, SEQUENCE_AXIS),
    )


def _sharded(plan: _Plan, fn, in_specs: tuple, out_specs: Any):
    if plan.mesh is None:
        return fn
    return jax.shard_map(fn, mesh=plan.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _fwd_impl(q, k, v, qi, ki, plan: _Plan) -> tuple[jax.Array, jax.Array]:
    tok, info, row = _specs(plan)
    fn = _sharded(plan, functools.partial(_local_fwd, plan), (tok, tok, tok, info, info), (tok, row))
    return fn(q, k, v, qi, ki)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, qi, ki, plan: _Plan) -> jax.Array:
    return _fwd_impl(q, k, v, qi, ki, plan)[0]


def _flash_fwd(q, k, v, qi, ki, plan: _Plan):
    out, lse = _fwd_impl(q, k, v, qi, ki, plan)
    return out, (q, k, v, qi, ki, out, lse)


def _flash_bwd(plan: _Plan, res: tuple, do: jax.Array):
    q, k, v, qi, ki, out, lse = res
    tok, info, row = _specs(plan)
    fn = _sharded(
        plan, functools.partial(_local_bwd, plan), (tok, tok, tok, info, info, tok, row, tok), (tok, tok, tok)
    )
    dq, dk, dv = fn(q, k, v, qi, ki, out, lse, do)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)

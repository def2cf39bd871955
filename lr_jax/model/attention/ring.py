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

Which mesh: the one given to `set_mesh` / `use_mesh` in this module if any, else the ambient mesh of
``jax.set_mesh(mesh)`` (`jax.sharding.get_abstract_mesh()`). No mesh, no ``"sequence"`` axis or an axis of
size 1 → the same flash computation runs locally (a blockwise backend with O(seq) backward memory).
Inside the ring, batch is split over ``"data"``/``"fsdp"`` and heads over ``"tensor"`` when they divide.

Load balance for causal masks: feed tokens in zig-zag order (layout.py). Natural order is also correct,
just unbalanced. Sequence lengths must be divisible by the ``"sequence"`` axis size.

Per-block kernel (`block_kernel`, `ModelConfig.ring_block_kernel`; ring_kernels.py): ``"jax"`` (default,
online_softmax.py's tiles), ``"splash"`` (TPU Pallas; needs the zig-zag order and the data pipeline's
layout, checked) or ``"cudnn"`` (GPU forward). The ring, the fp32 merge and the custom VJP are the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from lr_jax.model.attention import online_softmax as osm
from lr_jax.model.attention import ring_kernels
from lr_jax.model.attention.mask import TokenInfo

SEQUENCE_AXIS = "sequence"
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"

_MESH: Any = None


class RingAttentionError(ValueError):
    """Shapes that cannot be split over the ring."""


def is_available() -> tuple[bool, str]:
    """Pure JAX (shard_map + ppermute): runs on every platform."""
    return True, "pure JAX; runs on CPU, GPU and TPU"


def set_mesh(mesh: Any) -> None:
    """Use `mesh` (a `jax.sharding.Mesh`) for ring attention; `None` falls back to the ambient mesh."""
    global _MESH
    _MESH = mesh


@contextlib.contextmanager
def use_mesh(mesh: Any) -> Iterator[None]:
    """Context manager form of `set_mesh` (restores the previous mesh on exit)."""
    prev = _MESH
    set_mesh(mesh)
    try:
        yield
    finally:
        set_mesh(prev)


def current_mesh() -> Any:
    """The mesh ring attention will use: `set_mesh`'s, else the ambient `jax.set_mesh` one, else None."""
    if _MESH is not None:
        return _MESH
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


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


def shard_axes(mesh: Any, batch: int, kv_heads: int) -> tuple[tuple[str, ...] | None, str | None]:
    """Mesh axes to split the batch over (``data``/``fsdp`` if they divide it) and the heads over
    (``tensor`` if it divides the K/V heads); None = replicated. Shared with splash.py."""
    sizes = dict(mesh.shape)
    batch_axes = tuple(a for a in BATCH_AXES if sizes.get(a, 1) > 1)
    n_batch = 1
    for a in batch_axes:
        n_batch *= sizes[a]
    batch_spec = batch_axes if batch_axes and batch % n_batch == 0 else None
    t = sizes.get(HEAD_AXIS, 1)
    return batch_spec, (HEAD_AXIS if t > 1 and kv_heads % t == 0 else None)


def has_explicit_axes(mesh: Any) -> bool:
    """Whether `mesh` has Explicit axes (then shard_map inputs must be resharded to its in_specs first)."""
    return any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))


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

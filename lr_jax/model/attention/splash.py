"""TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) with the shared-prefix mask.

The kernel knows two mask mechanisms: a static block-sparse mask over token *indices* (we use causal) and
segment ids (query and key attend iff their ids are equal). Equality alone cannot express the shared-prefix
rule — the prompt must be visible to both responses while the responses stay invisible to each other — so
the rule is split over the keys into two kernel passes whose results are merged exactly by log-sum-exp:

* pass A, keys of the shared part (branch 0): q id ``seg``, kv id ``seg`` if ``branch == 0`` else ``-1``;
* pass B, keys of the responses (branch > 0): q id ``seg * K + branch``, kv id ``seg * K + branch`` if
  ``branch > 0`` else ``-1`` (``K = max branch + 1``), so a response sees only its own branch.

Both passes use the causal mask by index. Merged: ``out = (e^{lse_A} o_A + e^{lse_B} o_B) / e^{lse}``,
``lse = logaddexp(lse_A, lse_B)``. The backward (a `jax.custom_vjp` here) feeds the kernel's own backward
with the *merged* out and lse: then each pass yields exactly the gradient contributions of its keys for the
combined softmax, and dq/dk/dv are sums of the two. Pass B is skipped (`lax.cond`) when a batch has no
branches (SFT, plain packing), so those cost one kernel call.

Supported subset (what the data pipeline produces; `check_layout` verifies a batch on the host):
self-attention (``q_info == kv_info``) in natural token order, where index order agrees with the mask's
position order for every allowed pair: within a segment the prompt comes first, each response is contiguous
and positions increase along the prompt and along each response. Not for zig-zag (ring) order.
The kernel has no softmax-scale argument, so the query is pre-scaled. Sequence length must be a multiple of
the block size (`min(block_size, seq)`; on TPU a multiple of 128). Off TPU the kernel runs in Pallas interpret
mode (slow; for tests only) and `is_available()` says so.

`block_forward` / `block_backward` serve ring attention (ring_kernels.py): one (query chunk × key chunk)
block with a static full or causal index mask, returning (out, lse) and taking the global out/lse back.
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
from lr_jax.model.attention import shard
from lr_jax.model.attention.mask import TokenInfo
from lr_jax.model.attention.platform import target_platform

try:  # the Pallas TPU ops import fine on CPU; guard anyway so a stripped install fails with a reason
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as _sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as _sm

    _IMPORT_ERROR = ""
except ImportError as exc:  # pragma: no cover - depends on the jax build
    _sk = _sm = None
    _IMPORT_ERROR = str(exc)


class SplashLayoutError(LrJaxError, ValueError):
    """A batch whose token order the two-pass splash encoding cannot represent."""


def is_available() -> tuple[bool, str]:
    """True only for a TPU program (the kernel is a Mosaic TPU kernel): on a TPU, or built for TPU devices
    under `registry.building_for("tpu")` (compile-only planning on any host)."""
    if _sk is None:
        return False, f"splash attention kernel not importable: {_IMPORT_ERROR}"
    platform = target_platform()
    if platform != "tpu":
        return False, (
            f"splash is a TPU Pallas kernel; the program would run on {platform!r} (use ring or blockwise)"
        )
    return True, "TPU Pallas splash attention"


def _interpret() -> bool:
    """Pallas interpret mode unless the program is built for a TPU (on one, or compile-only for one)."""
    return target_platform() != "tpu"


def _block_sizes(seq: int, block_size: int) -> _sk.BlockSizes:
    b = min(block_size, seq)
    if seq % b:
        raise SplashLayoutError(f"splash attention: sequence length {seq} is no multiple of block size {b}")
    return _sk.BlockSizes(
        block_q=b,
        block_kv=b,
        block_kv_compute=b,
        block_q_dkv=b,
        block_kv_dkv=b,
        block_kv_dkv_compute=b,
        block_q_dq=b,
        block_kv_dq=b,
    )


def _kernel(group: int, seq: int, block_size: int, causal: bool = True):
    """One MQA kernel: `group` query heads sharing a K/V head, causal (or, for ring's off-diagonal blocks,
    full) mask by index over a `[seq, seq]` block.

    Built at trace time on every call (not cached: the kernel holds arrays, which would leak tracers).
    """
    one = _sm.CausalMask((seq, seq)) if causal else _sm.FullMask((seq, seq))
    mask = _sm.MultiHeadMask([one] * group)
    return _sk.make_splash_mqa_single_device(
        mask, block_sizes=_block_sizes(seq, block_size), save_residuals=True, interpret=_interpret()
    )


def _pass_ids(
    info: TokenInfo, kv_info: TokenInfo | None = None
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """Segment ids `[b, s]` (q, kv) for pass A (shared keys) and pass B (response keys).

    `kv_info` (default: `info`, self-attention) gives the keys' ids when they are another block of the same
    row (ring attention's visiting K/V block)."""
    kv_info = info if kv_info is None else kv_info
    seg, br = info.segment_ids, info.branch_ids
    kseg, kbr = kv_info.segment_ids, kv_info.branch_ids
    k_mult = jnp.maximum(jnp.max(br), jnp.max(kbr)) + 1
    a = (seg, jnp.where(kbr == 0, kseg, -1))
    b = (seg * k_mult + br, jnp.where(kbr > 0, kseg * k_mult + kbr, -1))
    return a, b


def _call(kern, q, k, v, q_ids, kv_ids):
    """Kernel on one (batch row, kv head): q `[g, s, d]`, k/v `[s, d]`, ids `[s]` -> (o, lse `[g, s]`)."""
    o, (lse,) = kern(q, k, v, _sk.SegmentIds(q=q_ids, kv=kv_ids))
    return o, lse


def _kernel_bwd(kern, q, k, v, q_ids, kv_ids, o, lse, do):
    """The kernel's own backward on one (batch row, kv head), fed with the merged out / lse."""
    collapse = lambda mi: (
        mi
        if mi is None or mi.partial_mask_blocks is None
        else mi._replace(
            partial_mask_blocks=mi.partial_mask_blocks.reshape(-1, *mi.partial_mask_blocks.shape[-2:])
        )
    )
    kw = kern.kwargs
    res = (
        q,
        k,
        v,
        _sk.SegmentIds(q=q_ids, kv=kv_ids),
        None,
        o,
        lse,
        collapse(kern.dq_mask_info),
        collapse(kern.dkv_mask_info),
    )
    grads = _sk._splash_attention_bwd(  # private, but the public kernel cannot take a merged lse
        False,
        kw["mask_value"],
        True,
        kw["block_sizes"],
        kw["residual_checkpoint_name"],
        kw["mask_function"],
        kw["attn_logits_soft_cap"],
        kw["interpret"],
        res,
        do,
    )
    return grads[3], grads[4], grads[5]


def _to_kernel_layout(qg: jax.Array) -> jax.Array:
    """`[b, s, h, g, d]` -> `[b, h, g, s, d]`."""
    return jnp.transpose(qg, (0, 2, 3, 1, 4))


def _from_kernel_layout(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2, 4))


def _forward(q, k, v, info: TokenInfo, block_size: int):
    """Pre-scaled q `[b, s, hq, d]` → merged (o `[b, h, g, s, d]` fp32, lse `[b, h, g, s]`), kernel layout."""
    b, s, hq, d = q.shape
    h = k.shape[2]
    kern = _kernel(hq // h, s, block_size)
    qk = _to_kernel_layout(q.reshape(b, s, h, hq // h, d))
    kk, vk = jnp.moveaxis(k, 2, 1), jnp.moveaxis(v, 2, 1)  # [b, h, s, d]
    (a_q, a_kv), (b_q, b_kv) = _pass_ids(info)
    run = lambda ids_q, ids_kv: jax.vmap(
        jax.vmap(lambda q_, k_, v_, iq, ik: _call(kern, q_, k_, v_, iq, ik), in_axes=(0, 0, 0, None, None)),
        in_axes=(0, 0, 0, 0, 0),
    )(qk, kk, vk, ids_q, ids_kv)
    o_a, lse_a = run(a_q, a_kv)
    has_branches = jnp.any(info.branch_ids > 0)

    def merge(_):
        o_b, lse_b = run(b_q, b_kv)
        lse = jnp.logaddexp(lse_a, lse_b)
        o = (
            o_a.astype(jnp.float32) * jnp.exp(lse_a - lse)[..., None]
            + o_b.astype(jnp.float32) * jnp.exp(lse_b - lse)[..., None]
        )
        return o, lse

    return jax.lax.cond(has_branches, merge, lambda _: (o_a.astype(jnp.float32), lse_a), None), kern


def _empty_rows(lse: jax.Array, kern) -> jax.Array:
    """Rows with no allowed key: the kernel's lse sits at its mask value there."""
    return lse < 0.5 * kern.kwargs["mask_value"]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of one call: tiling and how to split over the mesh (None: no mesh)."""

    block_size: int
    mesh: Any = None
    batch: Any = None  # mesh axes of the batch dim, or None
    heads: Any = None  # mesh axis of the heads dim, or None

    def specs(self) -> tuple[P, P, P, P]:
        """(q/k/v/out `[b, s, h, d]`, ids `[b, s]`, o `[b, h, g, s, d]`, lse `[b, h, g, s]`)."""
        return (P(self.batch, None, self.heads, None), P(self.batch, None),
                P(self.batch, self.heads, None, None, None), P(self.batch, self.heads, None, None))

    def wrap(self, fn, in_specs: tuple, out_specs: Any):
        """`fn` per device under shard_map over batch/heads (the Pallas call cannot be auto-partitioned)."""
        if self.mesh is None:
            return fn
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _local_fwd(plan: _Plan, q, k, v, info):
    (o, lse), kern = _forward(q, k, v, info, plan.block_size)
    o = jnp.where(_empty_rows(lse, kern)[..., None], 0.0, o).astype(q.dtype)
    b, s, hq, d = q.shape
    return _from_kernel_layout(o).reshape(b, s, hq, d), o, lse


def _local_bwd(plan: _Plan, q, k, v, info, o, lse, dout):
    b, s, hq, d = q.shape
    h = k.shape[2]
    kern = _kernel(hq // h, s, plan.block_size)
    do = _to_kernel_layout(dout.reshape(b, s, h, hq // h, d)).astype(o.dtype)
    do = jnp.where(_empty_rows(lse, kern)[..., None], 0, do)
    qk = _to_kernel_layout(q.reshape(b, s, h, hq // h, d))
    kk, vk = jnp.moveaxis(k, 2, 1), jnp.moveaxis(v, 2, 1)
    (a_q, a_kv), (b_q, b_kv) = _pass_ids(info)
    bwd = lambda ids_q, ids_kv: jax.vmap(
        jax.vmap(
            lambda q_, k_, v_, o_, l_, do_, iq, ik: _kernel_bwd(kern, q_, k_, v_, iq, ik, o_, l_, do_),
            in_axes=(0, 0, 0, 0, 0, 0, None, None),
        ),
    )(qk, kk, vk, o, lse, do, ids_q, ids_kv)
    dq, dk, dv = bwd(a_q, a_kv)
    dq, dk, dv = jax.lax.cond(
        jnp.any(info.branch_ids > 0),
        lambda g: jax.tree.map(jnp.add, g, bwd(b_q, b_kv)),
        lambda g: g,
        (dq, dk, dv),
    )
    dq = _from_kernel_layout(dq).reshape(b, s, hq, d)
    return dq, jnp.moveaxis(dk, 1, 2), jnp.moveaxis(dv, 1, 2)


def _fwd_impl(q, k, v, info, plan: _Plan):
    tok, ids, o_spec, lse_spec = plan.specs()
    return plan.wrap(functools.partial(_local_fwd, plan), (tok, tok, tok, ids), (tok, o_spec, lse_spec))(
        q, k, v, info)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _splash(q, k, v, info: TokenInfo, plan: _Plan) -> jax.Array:
    return _fwd_impl(q, k, v, info, plan)[0]


def _splash_fwd(q, k, v, info, plan: _Plan):
    out, o, lse = _fwd_impl(q, k, v, info, plan)
    return out, (q, k, v, info, o, lse)


def _splash_bwd(plan: _Plan, res, dout):
    tok, ids, o_spec, lse_spec = plan.specs()
    fn = plan.wrap(functools.partial(_local_bwd, plan), (tok, tok, tok, ids, o_spec, lse_spec, tok),
                   (tok, tok, tok))
    dq, dk, dv = fn(*res, dout)
    return dq, dk, dv, None


_splash.defvjp(_splash_fwd, _splash_bwd)


def _plan(q: jax.Array, k: jax.Array, block_size: int) -> _Plan:
    mesh = shard.current_mesh()
    if mesh is None:
        return _Plan(block_size)
    if shard.sequence_shards(mesh) > 1:
        raise SplashLayoutError("splash attention does not split the sequence; with mesh.sequence > 1 use "
                                "attention_backend='ring'")
    batch, heads = shard.shard_axes(mesh, q.shape[0], k.shape[2])
    if batch is None and heads is None:
        return _Plan(block_size)
    return _Plan(block_size, mesh, batch, heads)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_info: TokenInfo,
    kv_info: TokenInfo,
    *,
    scale: float,
    block_size: int = 512,
) -> jax.Array:
    """Masked GQA self-attention with the splash kernel.

    q `[batch, seq, q_heads, head_dim]`, k/v `[batch, seq, kv_heads, head_dim]`, infos `[batch, seq]` (must be
    the same object or equal: self-attention) → `[batch, seq, q_heads, head_dim]`. Under a mesh
    (`jax.set_mesh`) the kernel runs per device under shard_map, batch over data/fsdp and heads
    over tensor; a sequence axis > 1 is rejected.
    """
    if _sk is None:
        raise SplashLayoutError(is_available()[1])
    if q.shape[1] != k.shape[1]:
        raise SplashLayoutError("splash attention here supports self-attention only (q_seq == kv_seq)")
    del kv_info  # == q_info by the supported subset (check_layout on the host verifies the token order)
    plan = _plan(q, k, block_size)
    # Pre-scale in fp32 then cast back: the kernel has no softmax-scale argument.
    qs = (q.astype(jnp.float32) * scale).astype(q.dtype)
    if plan.mesh is not None and shard.has_explicit_axes(plan.mesh):
        tok, ids, _, _ = plan.specs()
        put = lambda x, spec: jax.sharding.reshard(x, NamedSharding(plan.mesh, spec))
        qs, k, v = (put(x, tok) for x in (qs, k, v))
        q_info = jax.tree.map(lambda x: put(x, ids), q_info)
    return _splash(qs, k, v, q_info, plan)


def check_layout(info: TokenInfo) -> None:
    """Host-side check (NumPy, O(seq log seq) per row) that `info`'s token order suits the two-pass encoding.

    Per segment (padding, segment 0, is exempt: its outputs never reach a loss): positions strictly increase
    along the index within the shared part and within each response, and every shared token comes before every
    response token both in index and in position. Then the index-causal kernel mask agrees with the position
    rule of mask.py for every pair. Raises `SplashLayoutError` naming the row and token.
    """
    pos, seg, br = (np.asarray(x) for x in (info.positions, info.segment_ids, info.branch_ids))
    fail = lambda row, i, why: SplashLayoutError(
        f"splash attention: batch row {row}, token {i}: {why} (needs natural order: prompt first, "
        "contiguous responses, increasing positions; zig-zag/ring order is not supported)")
    for row in range(pos.shape[0]):
        p, sg, b = pos[row], seg[row], br[row]
        idx = np.nonzero(sg != 0)[0]
        order = idx[np.lexsort((idx, b[idx], sg[idx]))]  # grouped by (segment, branch), index order inside
        same = (sg[order][1:] == sg[order][:-1]) & (b[order][1:] == b[order][:-1])
        bad = np.nonzero(same & (p[order][1:] <= p[order][:-1]))[0]
        if len(bad):
            raise fail(row, int(order[bad[0] + 1]), "position does not increase within its segment/branch")
        for s_id in np.unique(sg[idx]):
            in_seg = sg == s_id
            shared, resp = np.nonzero(in_seg & (b == 0))[0], np.nonzero(in_seg & (b > 0))[0]
            if len(shared) and len(resp):
                if shared.max() > resp.min():
                    raise fail(row, int(resp.min()), "a response token comes before a shared (prompt) token")
                if p[shared].max() >= p[resp].min():
                    raise fail(row, int(resp[np.argmin(p[resp])]), "response position not after the prompt's")


# ---------------------------------------------------------------------------------- ring's per-block kernel


def block_forward(
    qs: jax.Array, k: jax.Array, v: jax.Array, q_info: TokenInfo, kv_info: TokenInfo, *, causal: bool,
    block_size: int,
) -> tuple[jax.Array, jax.Array]:
    """One (query chunk × key chunk) block for ring attention, with a static index mask and the two-pass rule.

    qs: pre-scaled queries `[b, s, hq, d]`; k, v `[b, s, hkv, d]`; infos `[b, s]` of the query / key chunk.
    `causal`: index-causal (the chunk on the diagonal) or full (a key chunk entirely before the query chunk).
    Returns o `[b, s, hkv, g, d]` fp32 and lse `[b, hkv, g, s]` fp32; rows with no allowed key give o = 0 and
    lse = -inf, so blocks merge exactly by log-sum-exp.
    """
    b, s, hq, d = qs.shape
    h = k.shape[2]
    kern = _kernel(hq // h, s, block_size, causal)
    qk = _to_kernel_layout(qs.reshape(b, s, h, hq // h, d))
    kk, vk = jnp.moveaxis(k, 2, 1), jnp.moveaxis(v, 2, 1)
    (a_q, a_kv), (b_q, b_kv) = _pass_ids(q_info, kv_info)
    run = lambda ids_q, ids_kv: jax.vmap(
        jax.vmap(lambda q_, k_, v_, iq, ik: _call(kern, q_, k_, v_, iq, ik), in_axes=(0, 0, 0, None, None)),
    )(qk, kk, vk, ids_q, ids_kv)
    o_a, lse_a = run(a_q, a_kv)

    def merge(_):
        o_b, lse_b = run(b_q, b_kv)
        lse = jnp.logaddexp(lse_a, lse_b)
        o = (o_a.astype(jnp.float32) * jnp.exp(lse_a - lse)[..., None]
             + o_b.astype(jnp.float32) * jnp.exp(lse_b - lse)[..., None])
        return o, lse

    # Pass B only matters when some key of this chunk is a response token.
    o, lse = jax.lax.cond(jnp.any(kv_info.branch_ids > 0), merge,
                          lambda _: (o_a.astype(jnp.float32), lse_a), None)
    empty = _empty_rows(lse, kern)
    o = jnp.where(empty[..., None], 0.0, o)
    return _from_kernel_layout(o), jnp.where(empty, -jnp.inf, lse)


def block_backward(
    qs: jax.Array, k: jax.Array, v: jax.Array, q_info: TokenInfo, kv_info: TokenInfo, o: jax.Array,
    lse: jax.Array, do: jax.Array, *, causal: bool, block_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The kernel's backward for one ring block, fed with the GLOBAL (all-blocks) output and lse.

    qs, k, v, infos as in `block_forward`; o, do `[b, s, hkv, g, d]`; lse `[b, hkv, g, s]` fp32 (-inf on rows
    with no key anywhere: their cotangent is zeroed, so they contribute nothing). Returns fp32 dqs (w.r.t. the
    pre-scaled queries) `[b, s, hkv, g, d]`, dk and dv `[b, s, hkv, d]`: this block's share of the gradients.
    """
    b, s, hq, d = qs.shape
    h = k.shape[2]
    kern = _kernel(hq // h, s, block_size, causal)
    has_key = jnp.isfinite(lse)
    lse = jnp.where(has_key, lse, 0.0)
    do = jnp.where(has_key[..., None], _to_kernel_layout(do).astype(jnp.float32), 0.0)
    o = _to_kernel_layout(o).astype(jnp.float32)
    qk = _to_kernel_layout(qs.reshape(b, s, h, hq // h, d))
    kk, vk = jnp.moveaxis(k, 2, 1), jnp.moveaxis(v, 2, 1)
    (a_q, a_kv), (b_q, b_kv) = _pass_ids(q_info, kv_info)
    bwd = lambda ids_q, ids_kv: jax.vmap(
        jax.vmap(
            lambda q_, k_, v_, o_, l_, do_, iq, ik: _kernel_bwd(kern, q_, k_, v_, iq, ik, o_, l_, do_),
            in_axes=(0, 0, 0, 0, 0, 0, None, None),
        ),
    )(qk, kk, vk, o, lse, do, ids_q, ids_kv)
    f32 = lambda g: jax.tree.map(lambda x: x.astype(jnp.float32), g)
    dq, dk, dv = jax.lax.cond(
        jnp.any(kv_info.branch_ids > 0),
        lambda g: jax.tree.map(jnp.add, g, f32(bwd(b_q, b_kv))),
        lambda g: g,
        f32(bwd(a_q, a_kv)),
    )
    return _from_kernel_layout(dq), jnp.moveaxis(dk, 1, 2), jnp.moveaxis(dv, 1, 2)

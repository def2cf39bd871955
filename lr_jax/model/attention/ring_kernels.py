"""Per-block kernels for ring attention: what computes one (query block × visiting K/V block) ring step.

ring.py owns the ring (shard_map, ppermute, the fp32 online-softmax state and the custom VJP); a kernel here
owns one block. Per ring step on device ``r`` whose visiting K/V block came from device ``src``:

* forward: `BlockKernel.fold(state, step, ...)` folds the block into the running `online_softmax.State`.
  A kernel that returns a block's (out, lse) — flash kernels do — folds it with `merge_block`, exact by
  log-sum-exp.
* backward: `BlockKernel.backward(step, ...)` gets the GLOBAL out and lse (and dout, delta) and returns the
  block's dq, dk, dv, exactly what flash-style backward kernels compute from saved softmax statistics.

Kernels (`ModelConfig.ring_block_kernel`):

* ``"jax"`` (default): online_softmax.py's tiles, forward and backward; any platform, any token order.
* ``"splash"``: the TPU Pallas splash kernel (splash.py; Pallas interpret mode off TPU — slow, for tests).
  Splash masks are static, but the mask between a device's query chunks and a visiting key chunk changes
  with device and step. In zig-zag order (layout.py: device ``r`` holds natural chunks ``r`` and
  ``2n-1-r``, each ``c = seq / 2n`` tokens) each (query chunk, key chunk) pair is, *by index*, fully visible
  (key chunk earlier), causal-diagonal (same chunk) or empty (key chunk later); a `lax.switch` per pair
  picks a full-mask kernel, a causal-mask kernel or nothing, so every kernel stays static. Segment and
  branch ids go in through splash's two-pass encoding (splash.py). Index-causal + segment + branch equals
  mask.py's position rule only for rows laid out like the data pipeline builds them (see
  `layout_violations`); ``ring.attention`` refuses other layouts (host check when the ids are concrete,
  NaN rows when they are traced), needs the zig-zag token order, self-attention and
  ``c`` a multiple of 128 (`shape_problem`). The first chunk pair of every step is always empty and the
  (late query chunk, early key chunk) pair always full, so at most 3 of the 4 pairs are computed.
* ``"cudnn"``: cuDNN flash attention (cudnn.py, GPU) for the block forward with the block's dense boolean
  mask (`[seq/n, seq/n]` per device and step), any token order. Its backward is the ``"jax"`` tiles fed with
  the global lse — numerically the same gradient. cuDNN's own backward primitive does accept external
  output and softmax statistics (``_dot_product_attention_bwd_p`` in jax 0.10.2's private
  ``jax/_src/cudnn/fused_attention_stablehlo.py``), but wiring it needs a GPU to verify and none was
  available; see README.
* ``"cudnn_xla"``: the ``"cudnn"`` code path with XLA's implementation of `jax.nn.dot_product_attention`
  (any platform; tests the plumbing on CPU). Not a config choice.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.errors import LrJaxError
from lr_jax.model.attention import online_softmax as osm
from lr_jax.model.attention.layout import from_ring_order
from lr_jax.model.attention.mask import TokenInfo, allowed
from lr_jax.model.attention.registry import RING_BLOCK_KERNELS

CONFIG_KERNELS = RING_BLOCK_KERNELS  # the config choices (registry); "cudnn_xla" is for tests only
KERNELS = (*CONFIG_KERNELS, "cudnn_xla")
SPLASH_LANES = 128  # splash tiles are multiples of the TPU lane width (also checked in interpret mode)

# Pair kinds for splash (index order of natural chunks): `lax.switch` branch numbers.
_EMPTY, _CAUSAL, _FULL = 0, 1, 2


class Step(NamedTuple):
    """Where a ring step is: query block of device `q_index`, visiting K/V block of device `kv_index`
    (int32 scalars, traced inside shard_map), `n` devices on the ring (static)."""

    q_index: Any
    kv_index: Any
    n: int


# ------------------------------------------------------------------------------------------------- merging


def combine(o1: jax.Array, lse1: jax.Array, o2: jax.Array, lse2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Softmax over the union of two disjoint key sets: o `[b, s, hkv, g, d]` fp32, lse `[b, hkv, g, s]` fp32
    (-inf for rows without keys; those stay o = 0, lse = -inf)."""
    lse = jnp.logaddexp(lse1, lse2)
    safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    w = lambda x: jnp.moveaxis(jnp.exp(x - safe), -1, 1)[..., None]  # 0 where x = -inf
    return o1 * w(lse1) + o2 * w(lse2), lse


def merge_block(st: osm.State, o: jax.Array, lse: jax.Array) -> osm.State:
    """Fold a block's normalised output o `[b, s, hkv, g, d]` and lse `[b, hkv, g, s]` (fp32) into `st`:
    the block is a single "tile" with running max lse and sum 1."""
    m_new = jnp.maximum(st.m, lse)
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    c_old = jnp.exp(jnp.where(jnp.isfinite(st.m), st.m - m_safe, -jnp.inf))
    c_blk = jnp.exp(jnp.where(jnp.isfinite(lse), lse - m_safe, -jnp.inf))
    col = lambda x: jnp.moveaxis(x, -1, 1)[..., None]
    return osm.State(m_new, st.l * c_old + c_blk, st.acc * col(c_old) + o * col(c_blk))


# ------------------------------------------------------------------------------------------------- kernels


class BlockKernel:
    """One ring step's block. Shapes: qg/og/dog `[b, sq, hkv, g, d]`, k/v `[b, sk, hkv, d]`, infos
    `[b, s]`, lse/delta `[b, hkv, g, sq]` fp32. Subclasses give `block_forward` or override `fold`."""

    name = "base"

    def block_forward(self, step: Step, qg, k, v, qi, ki, *, scale: float, block_size: int):
        """(o `[b, sq, hkv, g, d]`, lse `[b, hkv, g, sq]`), fp32; o = 0, lse = -inf on rows with no key."""
        raise NotImplementedError

    def fold(self, st: osm.State, step: Step, qg, k, v, qi, ki, *, scale: float, block_size: int):
        """`st` with this block folded in (default: `merge_block` of `block_forward`)."""
        o, lse = self.block_forward(step, qg, k, v, qi, ki, scale=scale, block_size=block_size)
        return merge_block(st, o, lse)

    def backward(self, step: Step, qg, k, v, qi, ki, og, dog, lse, delta, *, scale: float, block_size: int):
        """This block's fp32 dq `[b, sq, hkv, g, d]`, dk, dv `[b, sk, hkv, d]` from the global lse, delta."""
        del step, og
        return osm.backward_block(qg, k, v, qi, ki, dog, lse, delta, scale=scale, block_size=block_size)


class JaxKernel(BlockKernel):
    """online_softmax.py's tiles, folded straight into the running state (ring's numerics before kernels)."""

    name = "jax"

    def fold(self, st, step, qg, k, v, qi, ki, *, scale, block_size):
        del step
        return osm.forward_update(st, qg, k, v, qi, ki, scale=scale, block_size=block_size)

    def block_forward(self, step, qg, k, v, qi, ki, *, scale, block_size):
        st = self.fold(osm.init_state(qg), step, qg, k, v, qi, ki, scale=scale, block_size=block_size)
        out, lse = osm.finalize(st, jnp.float32)
        return out, lse


class CudnnKernel(BlockKernel):
    """cuDNN (or, for tests, XLA) `dot_product_attention` on the block, with the block's dense mask;
    backward: the inherited jax tiles with the global lse."""

    def __init__(self, implementation: str) -> None:
        self.implementation = implementation
        self.name = "cudnn" if implementation == "cudnn" else "cudnn_xla"

    def block_forward(self, step, qg, k, v, qi, ki, *, scale, block_size):
        from lr_jax.model.attention import cudnn

        del step, block_size
        b, s, h, g, d = qg.shape
        o, lse = cudnn.block_forward(qg.reshape(b, s, h * g, d), k, v, qi, ki, scale=scale,
                                     implementation=self.implementation)
        return o.reshape(qg.shape), lse.reshape(b, h, g, s)


def _kind(q_chunk: jax.Array, kv_chunk: jax.Array) -> jax.Array:
    """Index relation of two natural chunks: key chunk earlier → full, same → causal, later → empty."""
    return jnp.where(kv_chunk < q_chunk, _FULL, jnp.where(kv_chunk == q_chunk, _CAUSAL, _EMPTY))


def _halves(tree: Any, axis: int = 1) -> tuple[Any, Any]:
    """Split every leaf's `axis` into the block's two zig-zag chunks (early, late)."""
    c = jax.tree.leaves(tree)[0].shape[axis] // 2
    first = jax.tree.map(lambda x: jax.lax.slice_in_dim(x, 0, c, axis=axis), tree)
    second = jax.tree.map(lambda x: jax.lax.slice_in_dim(x, c, 2 * c, axis=axis), tree)
    return first, second


class SplashKernel(BlockKernel):
    """splash.py's kernels per (query chunk, key chunk) pair of the zig-zag layout (module docstring)."""

    name = "splash"

    @staticmethod
    def _prescale(qg: jax.Array, scale: float) -> jax.Array:
        b, s, h, g, d = qg.shape  # the kernel has no softmax-scale argument
        return (qg.astype(jnp.float32) * scale).astype(qg.dtype).reshape(b, s, h * g, d)

    @staticmethod
    def _late_kind(step: Step) -> jax.Array:
        """Kind of (late query chunk 2n-1-r, late key chunk 2n-1-src)."""
        late = lambda i: 2 * step.n - 1 - i
        return _kind(late(step.q_index), late(step.kv_index))

    def block_forward(self, step, qg, k, v, qi, ki, *, scale, block_size):
        from lr_jax.model.attention import splash

        b, s, h, g, d = qg.shape
        (q0, qi0), (q1, qi1) = _halves((self._prescale(qg, scale), qi))
        (k0, v0, ki0), (k1, v1, ki1) = _halves((k, v, ki))
        fwd = lambda causal: functools.partial(splash.block_forward, causal=causal, block_size=block_size)
        empty = lambda *_: (jnp.zeros((b, s // 2, h, g, d), jnp.float32),
                            jnp.full((b, h, g, s // 2), -jnp.inf, jnp.float32))
        pair = lambda kind, *args: jax.lax.switch(kind, [empty, fwd(True), fwd(False)], *args)
        # Early query chunk r: key chunk src decides; key chunk 2n-1-src >= n > r is always later (empty).
        o0, l0 = pair(_kind(step.q_index, step.kv_index), q0, k0, v0, qi0, ki0)
        # Late query chunk 2n-1-r: key chunk src <= n-1 is always earlier (full); 2n-1-src decides.
        o1, l1 = combine(*fwd(False)(q1, k0, v0, qi1, ki0),
                         *pair(self._late_kind(step), q1, k1, v1, qi1, ki1))
        return jnp.concatenate([o0, o1], axis=1), jnp.concatenate([l0, l1], axis=-1)

    def backward(self, step, qg, k, v, qi, ki, og, dog, lse, delta, *, scale, block_size):
        from lr_jax.model.attention import splash

        del delta  # the kernel recomputes rowsum(dO * O) from og, dog
        (q0, qi0, o0, do0), (q1, qi1, o1, do1) = _halves((self._prescale(qg, scale), qi, og, dog))
        l0, l1 = _halves(lse, axis=-1)
        (k0, v0, ki0), (k1, v1, ki1) = _halves((k, v, ki))
        bwd = lambda causal: functools.partial(splash.block_backward, causal=causal, block_size=block_size)
        zeros = lambda q, k_, *_: (jnp.zeros(q.shape[:2] + k_.shape[2:3] + (q.shape[2] // k_.shape[2],)
                                             + q.shape[3:], jnp.float32),
                                   jnp.zeros(k_.shape, jnp.float32), jnp.zeros(k_.shape, jnp.float32))
        pair = lambda kind, *args: jax.lax.switch(kind, [zeros, bwd(True), bwd(False)], *args)
        dq0, dk0, dv0 = pair(_kind(step.q_index, step.kv_index), q0, k0, v0, qi0, ki0, o0, l0, do0)
        dq1a, dk0b, dv0b = bwd(False)(q1, k0, v0, qi1, ki0, o1, l1, do1)
        dq1b, dk1, dv1 = pair(self._late_kind(step), q1, k1, v1, qi1, ki1, o1, l1, do1)
        dq = jnp.concatenate([dq0, dq1a + dq1b], axis=1) * scale  # d/dq = scale * d/d(pre-scaled q)
        return dq, jnp.concatenate([dk0 + dk0b, dk1], axis=1), jnp.concatenate([dv0 + dv0b, dv1], axis=1)


def get(name: str) -> BlockKernel:
    """The kernel object for `name` (one of `KERNELS`)."""
    if name == "jax":
        return JaxKernel()
    if name == "splash":
        return SplashKernel()
    if name in ("cudnn", "cudnn_xla"):
        return CudnnKernel("cudnn" if name == "cudnn" else "xla")
    raise ValueError(f"unknown ring block kernel {name!r}; choose one of {KERNELS}")


def is_available(name: str) -> tuple[bool, str]:
    """Whether `name` can run as ring's block kernel on this platform (for config validation)."""
    if name in ("jax", "cudnn_xla"):
        return True, "pure JAX"
    if name == "splash":
        from lr_jax.model.attention import splash

        return splash.is_available()
    if name == "cudnn":
        from lr_jax.model.attention import cudnn

        return cudnn.block_available()
    return False, f"unknown ring block kernel {name!r}; choose one of {CONFIG_KERNELS}"


def shape_problem(name: str, seq_len: int, n: int, block_size: int, dtype: str | None = None) -> str:
    """Why `name` cannot tile a `seq_len` row over `n` ring devices ('' if it can). Shared by ring.py's
    trace-time check and the config validation."""
    if name == "splash":
        if seq_len % (2 * n):
            return f"seq_len {seq_len} must be divisible by 2 * sequence = {2 * n} (zig-zag chunks)"
        c = seq_len // (2 * n)
        b = min(block_size, c)
        if c % SPLASH_LANES:
            return (f"the splash kernel needs seq_len / (2 * sequence) = {seq_len} / {2 * n} = {c} to be a "
                    f"multiple of {SPLASH_LANES}")
        if c % b or b % SPLASH_LANES:
            return (f"attention_block_size {block_size} must give a splash tile min({block_size}, {c}) that "
                    f"divides the zig-zag chunk of {c} tokens and is a multiple of {SPLASH_LANES}")
    if name == "cudnn" and dtype is not None and dtype not in ("bfloat16", "float16"):
        return f"cuDNN flash attention takes bfloat16 or float16 activations, not dtype {dtype!r}"
    return ""


# ------------------------------------------------------------------------------- splash layout validation


def layout_violations(info: TokenInfo) -> jax.Array:
    """Tokens (bool `[b, s]`, True = violation) of a NATURAL-order row where the index-causal splash encoding
    could differ from mask.py's position rule. jnp, O(s); works on NumPy or traced ids.

    Allowed (what lr_jax/data/packing.py builds): each segment contiguous with segment ids increasing along
    the row; inside a segment the shared part (branch 0) first, then each response contiguous with increasing
    branch ids; positions strictly increasing within the shared part and within each response; every response
    position after the segment's last shared position. Padding (segment 0) is exempt anywhere: only padding
    queries see padding keys, and their outputs reach no loss. Under these rules, for every query/key pair
    of the same segment with the key visible by branch, ``idx_k <= idx_q`` iff ``pos_k <= pos_q``.
    """
    pos, seg, br = (jnp.asarray(x) for x in (info.positions, info.segment_ids, info.branch_ids))
    s = seg.shape[1]
    idx = jnp.broadcast_to(jnp.arange(s), seg.shape)
    real = seg != 0
    last_real = jax.lax.cummax(jnp.where(real, idx, -1), axis=1)
    prev = jnp.concatenate([jnp.full_like(last_real[:, :1], -1), last_real[:, :-1]], axis=1)  # previous real
    at = lambda x, i: jnp.take_along_axis(x, jnp.maximum(i, 0), axis=1)
    has_prev = prev >= 0
    same_seg = has_prev & (at(seg, prev) == seg)
    seg_bad = has_prev & (seg < at(seg, prev))
    same_br = same_seg & (at(br, prev) == br)
    pos_bad = same_br & (pos <= at(pos, prev))
    br_bad = same_seg & (br < at(br, prev))
    last_shared = jax.lax.cummax(jnp.where(real & (br == 0), idx, -1), axis=1)
    resp_bad = (br > 0) & (last_shared >= 0) & (at(seg, last_shared) == seg) & (pos <= at(pos, last_shared))
    return real & (seg_bad | pos_bad | br_bad | resp_bad)


def layout_ok(info: TokenInfo, n: int) -> jax.Array:
    """Per row (bool `[b]`): `info`, in zig-zag order for `n` ring devices, passes `layout_violations`."""
    return ~jnp.any(layout_violations(from_ring_order(info, n)), axis=1)


class SplashRingLayoutError(LrJaxError, ValueError):
    """A batch the ring + splash kernel cannot compute exactly (token order or shared-prefix layout)."""


def check_layout(info: TokenInfo, n: int) -> None:
    """Host-side check of a concrete zig-zag-ordered batch for ring + splash; raises `SplashRingLayoutError`
    naming the first bad row and token (token index in natural order)."""
    bad = np.asarray(layout_violations(from_ring_order(jax.tree.map(np.asarray, info), n)))
    if bad.any():
        row, tok = (int(x[0]) for x in np.nonzero(bad))
        raise SplashRingLayoutError(
            f"ring attention with the splash block kernel: batch row {row}, token {tok} (natural order): the "
            "layout breaks the index-causal encoding (needs zig-zag token order for sequence = "
            f"{n}, contiguous segments, prompt before contiguous responses, increasing positions); use "
            "ring_block_kernel='jax' for other layouts")


def index_rule(info: TokenInfo) -> jax.Array:
    """The mask splash computes for a natural-order row (`[b, s, s]`): index-causal, same segment, key branch
    0 or the query's. Equals `mask.allowed(info, info)` on non-padding queries when `layout_violations` is
    all False (tests check it)."""
    s = info.segment_ids.shape[1]
    idx = jnp.arange(s)
    by_index = TokenInfo(jnp.broadcast_to(idx, info.segment_ids.shape), info.segment_ids, info.branch_ids)
    return allowed(by_index, by_index)

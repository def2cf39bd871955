"""GPU backend: cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

The shared-prefix/packing rule (mask.py) goes in as the boolean ``mask`` argument `[batch, 1, q_seq, kv_seq]`
(broadcast over heads; GQA is native to the API). That is exact for every mask this project builds, but the
mask itself is dense — O(batch · q_seq · kv_seq) bytes — so this backend is meant for moderate lengths
(≈16k per sequence on one GPU). For longer contexts on GPU use ``ring`` (sharded) or ``blockwise``.
Rows that may attend nothing come back as zeros (cuDNN leaves them undefined).

`block_forward` is ring attention's cuDNN block kernel (ring_kernels.py): one ring step's (out, fp32 lse)
with that block's dense mask, `[seq/n, seq/n]` per device instead of `[seq, seq]`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from lr_jax.model.attention.mask import TokenInfo, allowed
from lr_jax.model.attention.platform import target_platform

try:
    # Private (read from jax 0.10.2, jax/_src/cudnn/fused_attention_stablehlo.py): the public
    # jax.nn.dot_product_attention casts cuDNN's fp32 softmax statistics to the output dtype (bf16), too
    # coarse to merge ring blocks by log-sum-exp (an lse of ~10 loses ~0.03). This returns them in fp32.
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as _cudnn_sdpa

    _PRIVATE_ERROR = ""
except ImportError as exc:  # pragma: no cover - depends on the jax version
    _cudnn_sdpa = None
    _PRIVATE_ERROR = f"jax._src.cudnn.fused_attention_stablehlo.dot_product_attention not importable: {exc}"


def is_available() -> tuple[bool, str]:
    """True on an NVIDIA GPU backend (cuDNN flash attention needs CUDA, fp16/bf16 inputs)."""
    backend = target_platform()
    if backend != "gpu":
        return False, f"cudnn attention needs an NVIDIA GPU; the program would run on {backend!r}"
    if jax.default_backend() != "gpu":  # built for GPU devices elsewhere (building_for): nothing to inspect
        return True, "cuDNN flash attention (built for a GPU)"
    platform = jax.devices()[0].client.platform_version.lower()
    if "rocm" in platform:
        return False, f"cudnn attention needs CUDA; this GPU runtime is {platform!r}"
    return True, f"cuDNN flash attention on {jax.devices()[0].device_kind}"


def _attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_info: TokenInfo,
    kv_info: TokenInfo,
    *,
    scale: float,
    implementation: Literal["cudnn", "xla"] | None,
) -> jax.Array:
    """`attention` with a selectable implementation ("xla" lets CPU tests check the mask plumbing)."""
    mask = allowed(q_info, kv_info)[:, None]  # [b, 1, sq, sk]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)
    has_key = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # [b, sq, 1, 1]
    return jnp.where(has_key, out, jnp.zeros((), out.dtype))


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
    """Masked GQA attention with cuDNN: q `[b, sq, hq, d]`, k/v `[b, sk, hkv, d]` → `[b, sq, hq, d]`.

    `block_size` is unused (cuDNN picks its own tiles). cuDNN accepts fp16/bf16 only.
    """
    del block_size
    return _attention(q, k, v, q_info, kv_info, scale=scale, implementation="cudnn")


def block_available() -> tuple[bool, str]:
    """Whether ring attention can use cuDNN as its per-block kernel (`block_forward` with "cudnn")."""
    ok, why = is_available()
    if ok and _cudnn_sdpa is None:
        return False, _PRIVATE_ERROR
    return ok, why


def block_forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_info: TokenInfo,
    kv_info: TokenInfo,
    *,
    scale: float,
    implementation: Literal["cudnn", "xla"] = "cudnn",
) -> tuple[jax.Array, jax.Array]:
    """One ring block: q `[b, sq, hq, d]`, k/v `[b, sk, hkv, d]` → o `[b, sq, hq, d]`, lse `[b, hq, sq]` fp32.

    The block's boolean mask `allowed(q_info, kv_info)` is dense: `[b, 1, sq, sk]` bytes per ring step
    (sq = sk = seq / n per device). Rows with no allowed key in this block give o = 0, lse = -inf (the kernel
    itself returns a large negative lse and an average of V there). "xla" runs the same plumbing through
    XLA's implementation of the public API on any platform (for CPU tests).
    """
    mask = allowed(q_info, kv_info)[:, None]  # [b, 1, sq, sk]
    if implementation == "cudnn":
        if _cudnn_sdpa is None:
            raise RuntimeError(_PRIVATE_ERROR)
        out, lse = _cudnn_sdpa(q, k, v, mask=mask, scale=scale, return_residual=True)  # lse [b, hq, sq] fp32
    else:
        out, lse = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                                implementation=implementation, return_residual=True)
        lse = jnp.swapaxes(lse, 1, 2)  # the public API returns [b, sq, hq]
    has_key = jnp.any(mask, axis=-1)  # [b, 1, sq]
    out = jnp.where(jnp.moveaxis(has_key, 1, -1)[..., None], out.astype(jnp.float32), 0.0)
    return out, jnp.where(has_key, lse.astype(jnp.float32), -jnp.inf)

"""GPU backend: cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

The shared-prefix/packing rule (mask.py) goes in as the boolean ``mask`` argument `[batch, 1, q_seq, kv_seq]`
(broadcast over heads; GQA is native to the API). That is exact for every mask this project builds, but the
mask itself is dense — O(batch · q_seq · kv_seq) bytes — so this backend is meant for moderate lengths
(≈16k per sequence on one GPU). For longer contexts on GPU use ``ring`` (sharded) or ``blockwise``.
Rows that may attend nothing come back as zeros (cuDNN leaves them undefined).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from lr_jax.model.attention.mask import TokenInfo, allowed


def is_available() -> tuple[bool, str]:
    """True on an NVIDIA GPU backend (cuDNN flash attention needs CUDA, fp16/bf16 inputs)."""
    backend = jax.default_backend()
    if backend != "gpu":
        return False, f"cudnn attention needs an NVIDIA GPU; the default backend is {backend!r}"
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

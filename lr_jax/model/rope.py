"""Rotary position embeddings: Llama/Qwen "half" layout, GLM "interleaved" partial rotary, Llama-3.1 scaling.

Frequencies are computed in float32 NumPy exactly as transformers does (so converted checkpoints match its
logits), then applied in float32 whatever the compute dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.model.config import ModelConfig, RopeScaling


def _llama3_scale(inv_freq: np.ndarray, rs: RopeScaling) -> np.ndarray:
    """Llama-3.1 frequency scaling (transformers `_compute_llama3_parameters`)."""
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """`[rotary_dim // 2]` float32 inverse frequencies."""
    dim = cfg.rotary_dim
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(cfg.rope_theta) ** exponent)).astype(np.float32)
    if cfg.rope_scaling is not None:
        inv_freq = _llama3_scale(inv_freq, cfg.rope_scaling)
    return inv_freq


def apply_rope(cfg: ModelConfig, x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotate the first `rotary_dim` dims of each head.

    x `[batch, seq, heads, head_dim]`, positions `[batch, seq]` int -> same shape and dtype as x.
    """
    inv_freq = jnp.asarray(inverse_frequencies(cfg))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, rd/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    rd = cfg.rotary_dim
    xf = x.astype(jnp.float32)
    rot, rest = xf[..., :rd], xf[..., rd:]
    if cfg.rotary_style == "half":
        x1, x2 = rot[..., : rd // 2], rot[..., rd // 2 :]
        rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    else:  # interleaved pairs (2i, 2i + 1), as GLM's apply_rotary_pos_emb
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
    return jnp.concatenate([rotated, rest], axis=-1).astype(x.dtype)

"""Attention backends behind one signature, chosen by name (`ModelConfig.attention_backend`).

Every backend is a module ``lr_jax.model.attention.<name>`` with a function::

    attention(q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, D],
              q_info: TokenInfo, kv_info: TokenInfo, *, scale: float, block_size: int = 512) -> [B, Sq, Hq, D]

GQA (Hq a multiple of Hkv) is handled inside; the mask is `mask.allowed(q_info, kv_info)`; query rows that may
attend nothing (padding) return zeros with finite gradients. Modules are imported lazily so a TPU-only or
GPU-only backend never loads on the wrong machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from lr_jax.model.attention.mask import TokenInfo, allowed

BACKENDS: dict[str, str] = {
    "reference": "lr_jax.model.attention.reference",
    "blockwise": "lr_jax.model.attention.blockwise",
    "ring": "lr_jax.model.attention.ring",
    "splash": "lr_jax.model.attention.splash",
    "cudnn": "lr_jax.model.attention.cudnn",
}

AttentionFn = Callable[..., object]


def get_attention(name: str) -> AttentionFn:
    """Resolve a backend name to its `attention` function; unknown names raise ValueError listing choices."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    return module.attention


__all__ = ["BACKENDS", "TokenInfo", "allowed", "get_attention"]

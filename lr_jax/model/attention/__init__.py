"""Attention backends behind one signature, chosen by `ModelConfig.attention_backend`; see registry.py.

GQA (Hq a multiple of Hkv) is handled inside each backend; the mask is `mask.allowed(q_info, kv_info)`; query
rows that may attend nothing (padding) return zeros with finite gradients.
"""

from lr_jax.model.attention.mask import TokenInfo, allowed
from lr_jax.model.attention.registry import (
    BACKENDS,
    DEFAULT_BACKEND,
    Backend,
    backend,
    bind,
    config_problem,
    get_attention,
    sequence_order_shards,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Backend",
    "TokenInfo",
    "allowed",
    "backend",
    "bind",
    "config_problem",
    "get_attention",
    "sequence_order_shards",
]

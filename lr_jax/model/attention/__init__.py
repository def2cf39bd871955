"""Attention backends behind one signature, chosen by `ModelConfig.attention_backend`; see registry.py.

GQA (Hq a multiple of Hkv) is handled inside each backend; the mask is `mask.allowed(q_info, kv_info)`; query
rows that may attend nothing (padding) return zeros with finite gradients.
"""

from lr_jax.model.attention.mask import TokenInfo, allowed
from lr_jax.model.attention.platform import building_for, target_platform
from lr_jax.model.attention.registry import (
    BACKENDS,
    DEFAULT_BACKEND,
    Backend,
    Kernel,
    backend,
    bind,
    config_problem,
    get_attention,
    kernel,
    sequence_order_shards,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Backend",
    "Kernel",
    "TokenInfo",
    "allowed",
    "backend",
    "bind",
    "building_for",
    "config_problem",
    "get_attention",
    "kernel",
    "sequence_order_shards",
    "target_platform",
]

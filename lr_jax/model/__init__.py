"""Flax/JAX long-context decoder (Llama, Qwen2, GLM-4 families) as pure functions over a dict param tree."""

from lr_jax.model.config import ConfigError, ModelConfig, RopeScaling
from lr_jax.model.transformer import (
    Params,
    forward,
    hidden_states,
    init_params,
    param_logical_axes,
    param_shapes,
    param_shardings,
    unembed,
)

__all__ = [
    "ConfigError",
    "ModelConfig",
    "Params",
    "RopeScaling",
    "forward",
    "hidden_states",
    "init_params",
    "param_logical_axes",
    "param_shapes",
    "param_shardings",
    "unembed",
]

"""Flax/JAX long-context decoder (Llama, Qwen2, GLM-4 families): `flax.nnx` modules (`Decoder`) and the
functional API over their parameter tree (`forward(cfg, params, tokens)`, ...)."""

from lr_jax.model.config import ConfigError, LoRAConfig, ModelConfig, RopeScaling
from lr_jax.model.decoder import AbstractModel, Decoder
from lr_jax.model.layers import LoRAParam
from lr_jax.model.transformer import (
    Params,
    forward,
    hidden_states,
    init,
    init_params,
    param_logical_axes,
    param_shapes,
    param_shardings,
    unembed,
)

__all__ = [
    "AbstractModel",
    "ConfigError",
    "Decoder",
    "LoRAConfig",
    "LoRAParam",
    "ModelConfig",
    "Params",
    "RopeScaling",
    "forward",
    "hidden_states",
    "init",
    "init_params",
    "param_logical_axes",
    "param_shapes",
    "param_shardings",
    "unembed",
]

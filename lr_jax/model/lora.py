"""LoRA on the decoder's projections (`ModelConfig.lora`): which parameters are adapters, switching them off,
and merging them into the base weights.

The adapters are the model's `LoRAParam`s (``lora_a [L, *in, r]``, ``lora_b [L, r, *out]`` beside each
targeted ``kernel``). Everything here works on the pure-dict parameter tree, split by the variable type of
the abstract NNX model (``nnx.split(model, LoRAParam, nnx.Param)``): `partition` gives (adapters, base), and
the base tree alone is exactly the parameter tree of `base_config(cfg)`, the same model with its adapters
switched off. That is the in-step DPO reference: the policy's own base weights, no second copy.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lr_jax.model.config import ModelConfig
from lr_jax.model.decoder import AbstractModel

Params = dict[str, Any]


def base_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` without adapters (itself when it has none)."""
    return cfg if cfg.lora is None else cfg.replace(lora=None)


def base_model(model: AbstractModel) -> AbstractModel:
    """`model` with its adapters switched off: the abstract model of `base_config(model.cfg)`."""
    return model if model.cfg.lora is None else AbstractModel.of(base_config(model.cfg))


def _split(tree: Params, paths: frozenset[tuple[str, ...]], prefix: tuple[str, ...] = ()) -> tuple[Any, Any]:
    inside: Params = {}
    outside: Params = {}
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            a, b = _split(value, paths, path)
            if a:
                inside[key] = a
            if b:
                outside[key] = b
        elif path in paths:
            inside[key] = value
        else:
            outside[key] = value
    return inside, outside


def partition(model: AbstractModel, params: Params) -> tuple[Params, Params]:
    """(adapters, base): the `LoRAParam` leaves of `params` and the rest, as two pure dicts (no copies)."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    return _split(params, model.adapter_paths)


def combine(a: Params, b: Params) -> Params:
    """Inverse of `partition`: the union of two disjoint nested dicts."""
    out = dict(b)
    for key, value in a.items():
        out[key] = combine(value, out[key]) if isinstance(value, dict) and key in out else value
    return out


def with_adapters(model: AbstractModel, base: Params, rng: jax.Array) -> Params:
    """`base` (the tree of `base_config(cfg)`) plus fresh adapters from ``fold_in(rng, 1)``, each from its
    initialiser (B at zero: the model is unchanged)."""
    shapes, _ = partition(model, model.shapes)
    return combine(model.init_tree(shapes, jax.random.fold_in(rng, 1)), base)


def _fold(kernel: Any, a: Any, b: Any, scale: float) -> Any:
    """kernel `[L, *in, *out]` + scale · a `[L, *in, r]` · b `[L, r, *out]`, in float32, kernel's dtype."""
    L, r = a.shape[0], a.shape[-1]
    a2 = jnp.asarray(a, jnp.float32).reshape(L, -1, r)
    b2 = jnp.asarray(b, jnp.float32).reshape(L, r, -1)
    delta = jnp.einsum("lir,lro->lio", a2, b2).reshape(kernel.shape)
    return (jnp.asarray(kernel, jnp.float32) + scale * delta).astype(jnp.asarray(kernel).dtype)


def merge_adapters(cfg: ModelConfig, params: Params) -> tuple[ModelConfig, Params]:
    """(base config, params with every adapter folded into its kernel): a plain model that computes the same
    function, e.g. for exporting a LoRA run to HF safetensors. Identity when `cfg.lora` is None."""
    if cfg.lora is None:
        return cfg, params
    adapters, base = partition(AbstractModel.of(cfg), params)
    scale = cfg.lora.scale

    def walk(ad: Params, bs: Params) -> Params:
        out = dict(bs)
        for key, sub in ad.items():
            if "lora_a" in sub:
                kernel = _fold(bs[key]["kernel"], sub["lora_a"], sub["lora_b"], scale)
                out[key] = {**bs[key], "kernel": kernel}
            else:
                out[key] = walk(sub, bs[key])
        return out

    return base_config(cfg), walk(adapters, base)

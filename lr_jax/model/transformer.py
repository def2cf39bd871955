"""The functional API of the decoder: pure functions over its parameter tree, for scripts and notebooks.

The model itself is the `flax.nnx` module `lr_jax.model.decoder.Decoder`; each function here is
``nnx.merge(graphdef(cfg), params)`` of it, with `params` its pure-dict parameter tree (the layout that
`lr_jax.model.decoder` documents: `embed`, stacked `layers` `[L, ...]`, `final_norm`, `lm_head`) or an
`nnx.State`.

Logical axis names come from each parameter's NNX sharding metadata (`param_logical_axes`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lr_jax.model import decoder, lora
from lr_jax.model.config import ModelConfig
from lr_jax.parallel.rules import tree_shardings

Params = dict[str, Any]


def _pure(params: Any) -> Any:
    return nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params


@functools.lru_cache(maxsize=64)
def _flat_metadata(cfg: ModelConfig) -> dict[tuple[str, ...], nnx.Variable]:
    """Path -> abstract `nnx.Variable` (shape, dtype, metadata) of every parameter of `Decoder(cfg)`."""
    _, state = decoder.abstract(cfg)
    return {tuple(str(k) for k in path): var for path, var in state.flat_state()}


def param_shapes(cfg: ModelConfig) -> Params:
    """Nested dict of parameter shapes (tuples) for `cfg` (adapters included when `cfg.lora`)."""
    return decoder.param_shapes(cfg)


def _path(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_logical_axes(cfg: ModelConfig, params: Params) -> Params:
    """Same tree as `params` (any sub-tree of the model's; arrays, shape structs or shape tuples) with a tuple
    of logical axis names at each leaf, read from the parameters' NNX `out_sharding` metadata (mapped to the
    mesh by `lr_jax.parallel`)."""
    meta = _flat_metadata(cfg)

    def names(path: tuple[Any, ...], p: Any) -> tuple[str | None, ...]:
        key = _path(path)
        if key not in meta:
            raise KeyError(f"no logical axes known for parameter {'.'.join(key)}")
        out = tuple(meta[key].get_metadata("out_sharding"))
        shape = p if isinstance(p, tuple) else p.shape
        assert len(out) == len(shape), (key, out, shape)
        return out

    return jax.tree_util.tree_map_with_path(names, _pure(params), is_leaf=lambda x: isinstance(x, tuple))


def param_shardings(cfg: ModelConfig, mesh: Mesh, params_shape: Params) -> Params:
    """`NamedSharding` of every parameter from its logical axes; `params_shape`: params or their shapes."""
    params_shape = _pure(params_shape)
    return tree_shardings(mesh, param_logical_axes(cfg, params_shape), params_shape)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters: normal(0.02) matrices, zero biases, unit norm scales; dtype `cfg.param_dtype`.

    The pure-dict state of `Decoder(cfg)`. With `cfg.lora` the base weights are those of the same config
    without LoRA (same `rng`) and the adapters come from ``fold_in(rng, 1)``, B at zero.
    """
    cfg.validate()
    base = decoder.init_tree(param_shapes(lora.base_config(cfg)), rng, jnp.dtype(cfg.param_dtype))
    return base if cfg.lora is None else lora.with_adapters(cfg, base, rng)


def hidden_states(
    cfg: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    branch_ids: jax.Array | None = None,
) -> jax.Array:
    """Final-norm hidden states `[batch, seq, hidden]` in `cfg.dtype`.

    tokens/positions/segment_ids/branch_ids `[batch, seq]` int; defaults: arange, 1, 0 (plain causal).
    """
    return decoder.merge(cfg, params)(tokens, positions, segment_ids, branch_ids)


def unembed(cfg: ModelConfig, params: Params) -> jax.Array:
    """Output projection `[hidden, vocab]` (the transposed embedding when tied)."""
    if cfg.tie_embeddings:
        return _pure(params)["embed"]["embedding"].T
    return _pure(params)["lm_head"]["kernel"]


def forward(
    cfg: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    branch_ids: jax.Array | None = None,
) -> jax.Array:
    """Logits `[batch, seq, vocab]` float32. Materialises all logits: long sequences use `hidden_states`."""
    return decoder.merge(cfg, params).logits(tokens, positions, segment_ids, branch_ids)

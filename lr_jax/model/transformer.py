"""The functional API of the decoder: pure functions of a `ModelConfig` and its parameter tree, for scripts,
notebooks and the samplers.

The model itself is the `flax.nnx` module `lr_jax.model.decoder.Decoder`; each function here asks the config's
`AbstractModel` (made once per config) for it, ``AbstractModel.of(cfg).merge(params)``, with `params` its
pure-dict parameter tree (the layout that `lr_jax.model.decoder` documents: `embed`, stacked `layers`
`[L, ...]`, `final_norm`, `lm_head`) or an `nnx.State`. Code that holds an `AbstractModel` (the training
program) calls its methods directly.

Logical axis names come from each parameter's NNX sharding metadata (`param_logical_axes`).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from lr_jax.model import lora
from lr_jax.model.config import ModelConfig
from lr_jax.model.decoder import AbstractModel, param_shapes

Params = dict[str, Any]
__all__ = ["Params", "forward", "hidden_states", "init", "init_params", "param_logical_axes", "param_shapes",
           "param_shardings", "unembed"]


def _pure(params: Any) -> Any:
    return nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params


def param_logical_axes(cfg: ModelConfig, params: Params) -> Params:
    """Same tree as `params` (any sub-tree of the model's; arrays, shape structs or shape tuples) with a tuple
    of logical axis names at each leaf, read from the parameters' NNX `out_sharding` metadata (mapped to the
    mesh by `lr_jax.parallel`)."""
    return AbstractModel.of(cfg).logical_axes(params)


def param_shardings(cfg: ModelConfig, mesh: Mesh, params_shape: Params) -> Params:
    """`NamedSharding` of every parameter from its logical axes; `params_shape`: params or their shapes."""
    return AbstractModel.of(cfg).shardings(mesh, params_shape)


def init(model: AbstractModel, rng: jax.Array) -> Params:
    """Random parameters of `model`, each from its own initialiser (normal(0.02) matrices, zero biases, unit
    norm scales), dtype `cfg.param_dtype`: the pure-dict state of `Decoder(cfg)`.

    The base weights do not depend on `cfg.lora` (same `rng`, same numbers); the adapters come from
    ``fold_in(rng, 1)`` (`lora.with_adapters`), B at zero.
    """
    base = model.init_tree(lora.partition(model, model.shapes)[1], rng)
    return base if model.cfg.lora is None else lora.with_adapters(model, base, rng)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """`init` of `cfg`'s model (see there)."""
    cfg.validate()
    return init(AbstractModel.of(cfg), rng)


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
    return AbstractModel.of(cfg).merge(params)(tokens, positions, segment_ids, branch_ids)


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
    return AbstractModel.of(cfg).merge(params).logits(tokens, positions, segment_ids, branch_ids)

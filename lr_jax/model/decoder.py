"""The decoder (Llama / Qwen2 / GLM-4 through one `ModelConfig`) as one `flax.nnx` module.

``nnx.state(Decoder(cfg, rngs=...), nnx.Param)`` as a pure dict is the parameter tree the whole project uses
(checkpoints, converters, reference caches), layers stacked on a leading `[L]` axis:

    embed.embedding [V, D]
    layers.attn_norm.scale [L, D]
    layers.attn.{q,k,v}.kernel [L, D, H(kv), hd]   (+ .bias [L, H(kv), hd] when qkv_bias)
    layers.attn.o.kernel [L, Hq, hd, D]
    layers.mlp_norm.scale [L, D]
    layers.mlp.{gate,up}.kernel [L, D, F];  layers.mlp.down.kernel [L, F, D]
    layers.post_attn_norm.scale, layers.post_mlp_norm.scale [L, D]   (post_norms only)
    final_norm.scale [D]
    lm_head.kernel [D, V]   (absent when tie_embeddings)

With `cfg.lora`, each targeted projection also holds ``lora_a [L, *in, r]`` and ``lora_b [L, r, *out]``
(`LoRAParam`s). The stacked layers are made by `nnx.vmap` (which puts "layers" first in each parameter's
logical axes) and run by `jax.lax.scan` over their split state, under `jax.checkpoint` with
`cfg.remat_policy`, exactly as the functional decoder did.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lr_jax.model.attention.mask import TokenInfo
from lr_jax.model.config import ModelConfig
from lr_jax.model.layers import ACT, DecoderLayer, Embed, RMSNorm, _normal, _param
from lr_jax.parallel.rules import constrain

REMAT = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LMHead(nnx.Module):
    """Output projection kernel `[hidden, vocab]` (logical "embed", "vocab")."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        self.kernel = _param(nnx.Param, rngs, _normal(0.02), (cfg.hidden_size, cfg.vocab_size),
                             ("embed", "vocab"), cfg.param_dtype)


def stacked_layers(cfg: ModelConfig, rngs: nnx.Rngs | None) -> DecoderLayer:
    """`cfg.num_layers` decoder layers as one module whose parameters have a leading `[L]` axis."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(cfg, rngs=rngs)

    return make(rngs)


class Decoder(nnx.Module):
    """Embedding, `num_layers` stacked `DecoderLayer`s, final RMSNorm, LM head (or the tied embedding)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        cfg.validate()
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                           rngs=rngs)
        self.layers = stacked_layers(cfg, rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
        self.lm_head = LMHead(cfg, rngs=rngs) if not cfg.tie_embeddings else None

    def embed_tokens(self, tokens: jax.Array, names: tuple[str | None, ...] = ACT) -> jax.Array:
        """tokens `[batch, seq]` -> `[batch, seq, hidden]` in `cfg.dtype`, hinted with logical `names`."""
        return constrain(self.embed(tokens), names)

    def unembed(self) -> jax.Array:
        """Output projection `[hidden, vocab]` (the transposed embedding when tied)."""
        if self.lm_head is None:
            return self.embed.embedding[...].T
        return self.lm_head.kernel[...]

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, branch_ids: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Final-norm hidden states `[batch, seq, hidden]` in `cfg.dtype`.

        tokens/positions/segment_ids/branch_ids `[batch, seq]` int; defaults: arange, 1, 0 (plain causal).
        `dropout_key`: LoRA dropout (`cfg.lora.dropout`, training only; a key per layer is split from it).
        """
        cfg = self.cfg
        batch, seq = tokens.shape
        info = TokenInfo.build(batch, seq, positions, segment_ids, branch_ids)
        x = self.embed_tokens(tokens)
        graphdef, state = nnx.split(self.layers)

        keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.num_layers)

        def body(x: jax.Array, layer: tuple[Any, jax.Array | None]) -> tuple[jax.Array, None]:
            layer_state, key = layer
            return nnx.merge(graphdef, layer_state)(x, info, key), None

        if cfg.remat_policy != "none":
            body = jax.checkpoint(body, policy=REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x, _ = jax.lax.scan(body, x, (state, keys))
        else:
            for i in range(cfg.num_layers):
                x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], (state, keys)))
        return self.final_norm(x)

    def logits(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, branch_ids: jax.Array | None = None) -> jax.Array:
        """Logits `[batch, seq, vocab]` float32 (materialises all of them: long sequences use `__call__`)."""
        h = self(tokens, positions, segment_ids, branch_ids)
        logits = jnp.einsum("bsd,dv->bsv", h, self.unembed().astype(h.dtype),
                            preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "seq", "act_vocab"))


@functools.lru_cache(maxsize=64)
def abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract param state) of `Decoder(cfg)`: shapes, dtypes and logical axes, no arrays.

    `jax.eval_shape` rather than `nnx.eval_shape`: under a mesh context the latter reads the params'
    `out_sharding` as mesh axes, and ours are logical names (the mesh is the parallel layer's business).
    """
    box: dict[str, nnx.GraphDef] = {}

    def create() -> nnx.State:
        graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
        box["graphdef"] = graphdef
        return state

    state = jax.eval_shape(create)
    return box["graphdef"], state


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """Nested dict of parameter shapes (tuples) of `Decoder(cfg)` (adapters included when `cfg.lora`)."""
    return jax.tree.map(lambda s: tuple(s.shape), nnx.to_pure_dict(abstract(cfg)[1]))


def init_tree(shapes: dict[str, Any], rng: jax.Array, dtype: jnp.dtype) -> dict[str, Any]:
    """normal(0.02) matrices, zero biases, unit norm scales, one key per leaf in flattening order; LoRA's A
    is normal(1 / sqrt(fan_in)) and B zero."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(rng, len(leaves))
    out = []
    for (path, shape), key in zip(leaves, keys, strict=True):
        leaf = path[-1].key
        if leaf == "scale":
            out.append(jnp.ones(shape, dtype))
        elif leaf in ("bias", "lora_b"):
            out.append(jnp.zeros(shape, dtype))
        elif leaf == "lora_a":
            fan_in = 1
            for d in shape[1:-1]:
                fan_in *= d
            out.append((fan_in**-0.5 * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
        else:
            out.append((0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    """The static structure of `Decoder(cfg)`; ``nnx.merge(graphdef(cfg), params)`` is the model."""
    return abstract(cfg)[0]


def merge(cfg: ModelConfig, params: Any) -> Decoder:
    """The `Decoder` of `cfg` holding `params` (its pure-dict parameter tree or an `nnx.State`)."""
    return nnx.merge(graphdef(cfg), params)

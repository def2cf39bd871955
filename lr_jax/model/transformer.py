"""The decoder as pure functions over a plain nested-dict parameter tree.

Param tree (layers stacked on a leading `[L]` axis so `lax.scan` can run them):

    embed.embedding [V, D]
    layers.attn_norm.scale [L, D]
    layers.attn.{q,k,v}.kernel [L, D, H(kv), hd]   (+ .bias [L, H(kv), hd] when qkv_bias)
    layers.attn.o.kernel [L, Hq, hd, D]
    layers.mlp_norm.scale [L, D]
    layers.mlp.{gate,up}.kernel [L, D, F];  layers.mlp.down.kernel [L, F, D]
    layers.post_attn_norm.scale, layers.post_mlp_norm.scale [L, D]   (post_norms only)
    final_norm.scale [D]
    lm_head.kernel [D, V]   (absent when tie_embeddings)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lr_jax.model import attention
from lr_jax.model.attention.mask import TokenInfo
from lr_jax.model.config import ModelConfig
from lr_jax.model.rope import apply_rope
from lr_jax.parallel.rules import constrain, tree_shardings

Params = dict[str, Any]

_REMAT = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def param_shapes(cfg: ModelConfig) -> Params:
    """Nested dict of parameter shapes (tuples) for `cfg`."""
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hq, hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn: dict[str, Any] = {
        "q": {"kernel": (L, D, hq, hd)},
        "k": {"kernel": (L, D, hkv, hd)},
        "v": {"kernel": (L, D, hkv, hd)},
        "o": {"kernel": (L, hq, hd, D)},
    }
    if cfg.qkv_bias:
        attn["q"]["bias"] = (L, hq, hd)
        attn["k"]["bias"] = (L, hkv, hd)
        attn["v"]["bias"] = (L, hkv, hd)
    layers: dict[str, Any] = {
        "attn_norm": {"scale": (L, D)},
        "attn": attn,
        "mlp_norm": {"scale": (L, D)},
        "mlp": {"gate": {"kernel": (L, D, F)}, "up": {"kernel": (L, D, F)}, "down": {"kernel": (L, F, D)}},
    }
    if cfg.post_norms:
        layers["post_attn_norm"] = {"scale": (L, D)}
        layers["post_mlp_norm"] = {"scale": (L, D)}
    shapes: Params = {"embed": {"embedding": (V, D)}, "layers": layers, "final_norm": {"scale": (D,)}}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = {"kernel": (D, V)}
    return shapes


def _logical_names(path: tuple[str, ...], ndim: int) -> tuple[str | None, ...]:
    """Logical axis names of one parameter, from its path in the tree."""
    leaf, parent = path[-1], path[-2]
    stacked = path[0] == "layers"
    if leaf == "scale":
        names: tuple[str | None, ...] = ("norm",)
    elif path[0] == "embed":
        return ("vocab", "embed")
    elif path[0] == "lm_head":
        return ("embed", "vocab")
    elif parent in ("q", "k", "v"):
        heads = "heads" if parent == "q" else "kv_heads"
        names = ("embed", heads, "head_dim") if leaf == "kernel" else (heads, "head_dim")
    elif parent == "o":
        names = ("heads", "head_dim", "embed")
    elif parent in ("gate", "up"):
        names = ("embed", "mlp")
    elif parent == "down":
        names = ("mlp", "embed")
    else:
        raise KeyError(f"no logical axes known for parameter {'.'.join(path)}")
    names = ("layers", *names) if stacked else names
    assert len(names) == ndim, (path, names, ndim)
    return names


def param_logical_axes(cfg: ModelConfig, params: Params) -> Params:
    """Same tree as `params` with a tuple of logical axis names at each leaf (mapped by `lr_jax.parallel`)."""
    del cfg
    return jax.tree_util.tree_map_with_path(
        lambda path, p: _logical_names(tuple(k.key for k in path), len(p.shape)), params
    )


def param_shardings(cfg: ModelConfig, mesh: Mesh, params_shape: Params) -> Params:
    """`NamedSharding` of every parameter from its logical axes; `params_shape`: params or their shapes."""
    return tree_shardings(mesh, param_logical_axes(cfg, params_shape), params_shape)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters: normal(0.02) matrices, zero biases, unit norm scales; dtype `cfg.param_dtype`."""
    cfg.validate()
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(rng, len(leaves))
    dtype = jnp.dtype(cfg.param_dtype)
    out = []
    for (path, shape), key in zip(leaves, keys, strict=True):
        leaf = path[-1].key
        if leaf == "scale":
            out.append(jnp.ones(shape, dtype))
        elif leaf == "bias":
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, statistics in float32 (as transformers), output in x's dtype."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def _dense(x: jax.Array, kernel: jax.Array, spec: str) -> jax.Array:
    return jnp.einsum(spec, x, kernel.astype(x.dtype))


def _attention_block(cfg: ModelConfig, p: Params, x: jax.Array, info: TokenInfo) -> jax.Array:
    """x `[B, S, D]` (already normed) -> attention output `[B, S, D]`."""

    def proj(name: str, heads: str) -> jax.Array:
        y = _dense(x, p[name]["kernel"], "bsd,dhk->bshk")
        if "bias" in p[name]:
            y = y + p[name]["bias"].astype(y.dtype)
        return constrain(y, ("batch", "seq", heads, None))

    q = apply_rope(cfg, proj("q", "act_heads"), info.positions)
    k = apply_rope(cfg, proj("k", "act_kv_heads"), info.positions)
    v = proj("v", "act_kv_heads")
    out = attention.bind(cfg)(q, k, v, info, info)
    out = constrain(out, ("batch", "seq", "act_heads", None))
    return _dense(out, p["o"]["kernel"], "bshk,hkd->bsd")


def _mlp_block(p: Params, x: jax.Array) -> jax.Array:
    """SwiGLU: down(silu(gate(x)) * up(x)); x `[B, S, D]`."""
    gate = _dense(x, p["gate"]["kernel"], "bsd,df->bsf")
    up = _dense(x, p["up"]["kernel"], "bsd,df->bsf")
    h = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "act_mlp"))
    return _dense(h, p["down"]["kernel"], "bsf,fd->bsd")


def _layer(cfg: ModelConfig, x: jax.Array, p: Params, info: TokenInfo) -> jax.Array:
    """One pre-norm decoder layer; x `[B, S, D]`, p is one layer's slice of `params["layers"]`."""
    eps = cfg.rms_norm_eps
    h = _attention_block(cfg, p["attn"], rms_norm(x, p["attn_norm"]["scale"], eps), info)
    if cfg.post_norms:
        h = rms_norm(h, p["post_attn_norm"]["scale"], eps)
    x = constrain(x + h, ("batch", "seq", "act_embed"))
    h = _mlp_block(p["mlp"], rms_norm(x, p["mlp_norm"]["scale"], eps))
    if cfg.post_norms:
        h = rms_norm(h, p["post_mlp_norm"]["scale"], eps)
    return constrain(x + h, ("batch", "seq", "act_embed"))


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
    batch, seq = tokens.shape
    info = TokenInfo.build(batch, seq, positions, segment_ids, branch_ids)
    dtype = jnp.dtype(cfg.dtype)
    x = jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(dtype)
    x = constrain(x, ("batch", "seq", "act_embed"))

    def body(x: jax.Array, layer_params: Params) -> tuple[jax.Array, None]:
        return _layer(cfg, x, layer_params, info), None

    if cfg.remat_policy != "none":
        body = jax.checkpoint(body, policy=_REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        x, _ = jax.lax.scan(body, x, params["layers"])
    else:
        for i in range(cfg.num_layers):
            x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], params["layers"]))
    return rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps)


def unembed(cfg: ModelConfig, params: Params) -> jax.Array:
    """Output projection `[hidden, vocab]` (the transposed embedding when tied)."""
    if cfg.tie_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def forward(
    cfg: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    branch_ids: jax.Array | None = None,
) -> jax.Array:
    """Logits `[batch, seq, vocab]` float32. Materialises all logits: long sequences use `hidden_states`."""
    h = hidden_states(cfg, params, tokens, positions, segment_ids, branch_ids)
    logits = jnp.einsum(
        "bsd,dv->bsv", h, unembed(cfg, params).astype(h.dtype), preferred_element_type=jnp.float32
    )
    return constrain(logits, ("batch", "seq", "act_vocab"))

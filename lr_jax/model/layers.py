"""The decoder's building blocks as `flax.nnx` modules: RMSNorm, embedding, projections (with optional LoRA),
RoPE attention with GQA through the attention registry, the SwiGLU MLP, one pre-norm decoder layer.

Every parameter is made by `param`: an `nnx.Param` (adapters: `LoRAParam`, a subclass) whose metadata holds
its initialiser (``initializer``: `Normal` or `Constant`, the one source of random params) and, in
``out_sharding``, its *logical* axis names (``("embed", "heads", "head_dim")``, ...): the single source of
truth that `AbstractModel.logical_axes` reads and `lr_jax.parallel.rules` maps to the mesh. The names are not
mesh axes, so every parameter is created with ``eager_sharding=False``: the model knows no mesh.

Activations are annotated by `constrain` with the same logical names as before (no-ops without a mesh).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lr_jax.model import attention
from lr_jax.model.attention.mask import TokenInfo
from lr_jax.model.config import LoRAConfig, ModelConfig
from lr_jax.model.rope import apply_rope
from lr_jax.parallel.rules import constrain

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]
ACT = ("batch", "seq", "act_embed")  # the residual stream `[batch, seq, hidden]`


class LoRAParam(nnx.Param):
    """A LoRA adapter weight: trained (and given optimizer state) when the base `nnx.Param`s are frozen."""


@dataclasses.dataclass(frozen=True)
class Normal:
    """normal(0, stddev), drawn in float32 then cast, so every param dtype gets the same numbers."""

    stddev: float

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        return (self.stddev * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Constant:
    """Every entry `value` (norm scales 1, biases and LoRA's B 0); the key is unused."""

    value: float

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        del key
        return jnp.full(shape, self.value, dtype)


def param(kind: type[nnx.Param], rngs: nnx.Rngs | None, init: Initializer, shape: Sequence[int],
          names: Sequence[str | None], dtype: str) -> nnx.Param:
    """A parameter of `kind` with value ``init(key, shape, dtype)``, its logical axis `names` (metadata
    ``out_sharding``) and its initialiser (metadata ``initializer``: what `AbstractModel.init_tree` draws
    from, so random params need no model instance). Without `rngs` the key is ``key(0)`` (abstract use)."""
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return kind(init(key, tuple(shape), jnp.dtype(dtype)), out_sharding=tuple(names), eager_sharding=False,
                initializer=init)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, statistics in float32 (as transformers), output in x's dtype.

    scale `[dim]` (logical "norm").
    """

    def __init__(self, dim: int, eps: float, *, param_dtype: str = "float32", rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = param(nnx.Param, rngs, Constant(1.0), (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class Embed(nnx.Module):
    """Token embedding: embedding `[vocab, hidden]` (logical "vocab", "embed")."""

    def __init__(self, vocab: int, dim: int, *, dtype: str, param_dtype: str, rngs: nnx.Rngs | None = None):
        self.dtype = dtype
        self.embedding = param(nnx.Param, rngs, Normal(0.02), (vocab, dim), ("vocab", "embed"), param_dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens `[batch, seq]` int -> `[batch, seq, hidden]` in the compute dtype."""
        return jnp.take(self.embedding[...], tokens, axis=0).astype(jnp.dtype(self.dtype))


class Linear(nnx.Module):
    """A projection contracting x's trailing input dims with ``kernel [*in_shape, *out_shape]``.

    `spec` is its einsum (``"bsd,dhk->bshk"`` for q); optional bias `[*out_shape]`. With `lora`, adapters
    ``lora_a [*in_shape, rank]`` (random) and ``lora_b [rank, *out_shape]`` (zero) add
    ``(alpha / rank) · (x · lora_a) · lora_b``. With `lora.dropout` p > 0 and a `dropout_key`, the
    adapters' input is inverted dropout of x (kept with probability 1 - p, scaled by 1 / (1 - p)); the base
    path always sees x. No key (eval, reference, decoding): no dropout.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_names: Sequence[str | None],
                 out_names: Sequence[str | None], *, spec: str, use_bias: bool = False,
                 lora: LoRAConfig | None = None, param_dtype: str = "float32", rngs: nnx.Rngs | None = None):
        self.spec = spec
        self.n_in = len(in_shape)
        self.kernel = param(nnx.Param, rngs, Normal(0.02), (*in_shape, *out_shape), (*in_names, *out_names),
                            param_dtype)
        self.bias = (param(nnx.Param, rngs, Constant(0.0), out_shape, out_names, param_dtype)
                     if use_bias else None)
        self.lora_scale = None
        self.lora_dropout = 0.0
        if lora is not None:
            self.lora_dropout = float(lora.dropout)
            fan_in = 1
            for d in in_shape:
                fan_in *= d
            self.lora_scale = lora.scale
            self.lora_a = param(LoRAParam, rngs, Normal(fan_in**-0.5), (*in_shape, lora.rank),
                                (*in_names, None), param_dtype)
            self.lora_b = param(LoRAParam, rngs, Constant(0.0), (lora.rank, *out_shape), (None, *out_names),
                                param_dtype)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        y = jnp.einsum(self.spec, x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        if self.lora_scale is not None:
            xa = x
            if self.lora_dropout > 0 and dropout_key is not None:
                keep = 1.0 - self.lora_dropout
                mask = jax.random.bernoulli(dropout_key, keep, x.shape)
                xa = jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
            contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
            a = jax.lax.dot_general(xa, self.lora_a[...].astype(x.dtype), (contract, ((), ())))
            b = jnp.tensordot(a, self.lora_b[...].astype(x.dtype), axes=1)
            y = y + (self.lora_scale * b).astype(y.dtype)
        return y


def _lora_for(cfg: ModelConfig, name: str) -> LoRAConfig | None:
    return cfg.lora if cfg.lora is not None and name in cfg.lora.targets else None


class Attention(nnx.Module):
    """RoPE self-attention with GQA; the attention itself is `cfg.attention_backend` (the registry).

    q `[hidden, heads, head_dim]`, k / v `[hidden, kv_heads, head_dim]` (+ biases with `qkv_bias`),
    o `[heads, head_dim, hidden]`.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        D, hq, hkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        common = dict(use_bias=cfg.qkv_bias, param_dtype=cfg.param_dtype, rngs=rngs)
        qkv = "bsd,dhk->bshk"
        self.q = Linear((D,), (hq, hd), ("embed",), ("heads", "head_dim"), spec=qkv,
                        lora=_lora_for(cfg, "q"), **common)
        self.k = Linear((D,), (hkv, hd), ("embed",), ("kv_heads", "head_dim"), spec=qkv,
                        lora=_lora_for(cfg, "k"), **common)
        self.v = Linear((D,), (hkv, hd), ("embed",), ("kv_heads", "head_dim"), spec=qkv,
                        lora=_lora_for(cfg, "v"), **common)
        self.o = Linear((hq, hd), (D,), ("heads", "head_dim"), ("embed",), spec="bshk,hkd->bsd",
                        lora=_lora_for(cfg, "o"), param_dtype=cfg.param_dtype, rngs=rngs)

    def qkv(self, x: jax.Array, positions: jax.Array, *, annotate: bool = True,
            dropout_keys: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x `[batch, seq, hidden]` (normed), positions `[batch, seq]` -> RoPE'd q `[batch, seq, heads,
        head_dim]`, k and v `[batch, seq, kv_heads, head_dim]`. `annotate`: hint the heads' sharding;
        `dropout_keys` `[3]` keys: LoRA dropout of q, k, v (training only)."""

        def proj(layer: Linear, heads: str, i: int) -> jax.Array:
            y = layer(x, None if dropout_keys is None else dropout_keys[i])
            return constrain(y, ("batch", "seq", heads, None)) if annotate else y

        q = apply_rope(self.cfg, proj(self.q, "act_heads", 0), positions)
        k = apply_rope(self.cfg, proj(self.k, "act_kv_heads", 1), positions)
        return q, k, proj(self.v, "act_kv_heads", 2)

    def __call__(self, x: jax.Array, info: TokenInfo, dropout_keys: jax.Array | None = None) -> jax.Array:
        """x `[batch, seq, hidden]` (normed) -> attention output before the o-projection `[batch, seq,
        heads, head_dim]`."""
        q, k, v = self.qkv(x, info.positions, dropout_keys=dropout_keys)
        out = attention.bind(self.cfg)(q, k, v, info, info)
        return constrain(out, ("batch", "seq", "act_heads", None))


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate / up `[hidden, mlp]`, down `[mlp, hidden]`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        D, F, pd = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.gate = Linear((D,), (F,), ("embed",), ("mlp",), spec="bsd,df->bsf", lora=_lora_for(cfg, "gate"),
                           param_dtype=pd, rngs=rngs)
        self.up = Linear((D,), (F,), ("embed",), ("mlp",), spec="bsd,df->bsf", lora=_lora_for(cfg, "up"),
                         param_dtype=pd, rngs=rngs)
        self.down = Linear((F,), (D,), ("mlp",), ("embed",), spec="bsf,fd->bsd", lora=_lora_for(cfg, "down"),
                           param_dtype=pd, rngs=rngs)

    def __call__(self, x: jax.Array, dropout_keys: jax.Array | None = None) -> jax.Array:
        """x `[batch, seq, hidden]` -> `[batch, seq, hidden]`; `dropout_keys` `[3]`: LoRA dropout of gate,
        up, down (training only)."""
        k = (lambda i: None) if dropout_keys is None else (lambda i: dropout_keys[i])
        h = constrain(jax.nn.silu(self.gate(x, k(0))) * self.up(x, k(1)), ("batch", "seq", "act_mlp"))
        return self.down(h, k(2))


class DecoderLayer(nnx.Module):
    """One pre-norm decoder layer (GLM-4: plus RMSNorms on the attention and MLP outputs, `post_norms`)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        D, eps, pd = cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype
        self.post_norms = cfg.post_norms
        self.attn_norm = RMSNorm(D, eps, param_dtype=pd, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(D, eps, param_dtype=pd, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        if cfg.post_norms:
            self.post_attn_norm = RMSNorm(D, eps, param_dtype=pd, rngs=rngs)
            self.post_mlp_norm = RMSNorm(D, eps, param_dtype=pd, rngs=rngs)

    def __call__(self, x: jax.Array, info: TokenInfo, dropout_key: jax.Array | None = None) -> jax.Array:
        """x `[batch, seq, hidden]` -> `[batch, seq, hidden]`; `dropout_key`: LoRA dropout (training only)."""
        keys = None if dropout_key is None else jax.random.split(dropout_key, 7)  # q k v | o | gate up down
        attn = self.attn(self.attn_norm(x), info, None if keys is None else keys[:3])
        return self.after_attention(x, attn, ACT, None if keys is None else keys[3:])

    def after_attention(self, x: jax.Array, attn_out: jax.Array, names: tuple[str | None, ...] | None,
                        dropout_keys: jax.Array | None = None) -> jax.Array:
        """The layer after attention: o-projection, (post-norm), residual, MLP block, residual.

        x `[batch, seq, hidden]` (the layer's input), attn_out `[batch, seq, heads, head_dim]`; `names`: the
        residual stream's logical axes to hint after each add (None: no hint, as decoding does);
        `dropout_keys` `[4]`: LoRA dropout of o, gate, up, down (training only).
        """
        hint = (lambda y: constrain(y, names)) if names is not None else (lambda y: y)
        h = self.attn.o(attn_out, None if dropout_keys is None else dropout_keys[0])
        if self.post_norms:
            h = self.post_attn_norm(h)
        x = hint(x + h)
        h = self.mlp(self.mlp_norm(x), None if dropout_keys is None else dropout_keys[1:])
        if self.post_norms:
            h = self.post_mlp_norm(h)
        return hint(x + h)

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

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lr_jax.model.attention.mask import TokenInfo
from lr_jax.model.config import ModelConfig
from lr_jax.model.layers import ACT, DecoderLayer, Embed, LoRAParam, Normal, RMSNorm, param
from lr_jax.parallel.rules import constrain, tree_shardings

REMAT = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LMHead(nnx.Module):
    """Output projection kernel `[hidden, vocab]` (logical "embed", "vocab")."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        self.kernel = param(nnx.Param, rngs, Normal(0.02), (cfg.hidden_size, cfg.vocab_size),
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


def _path(path: tuple[Any, ...]) -> tuple[str, ...]:
    """A jax tree path or an `nnx.State` path as a tuple of strings."""
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


@dataclasses.dataclass(frozen=True, eq=False)
class AbstractModel:
    """`Decoder(cfg)` without arrays: its graphdef and abstract param state (shapes, dtypes, and on each
    parameter its logical axes and initialiser). Made once per config by `of`; a program holds one and
    passes it to what needs the model's structure (the step, LoRA's partition, shardings, init) instead of
    each rebuilding it from the config.

    `merge` is the one way to get the model from params: ``model.merge(params)`` is the `Decoder` holding
    `params` (its pure-dict parameter tree or an `nnx.State`).
    """

    cfg: ModelConfig
    graphdef: nnx.GraphDef
    state: nnx.State  # nnx.Param variables holding jax.ShapeDtypeStructs

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(cfg: ModelConfig) -> AbstractModel:
        """The abstract `Decoder(cfg)` (cached: equal configs give the same object).

        `jax.eval_shape` rather than `nnx.eval_shape`: under a mesh context the latter reads the params'
        `out_sharding` as mesh axes, and ours are logical names (the mesh is the parallel layer's business).
        """
        box: dict[str, nnx.GraphDef] = {}

        def create() -> nnx.State:
            graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
            box["graphdef"] = graphdef
            return state

        state = jax.eval_shape(create)
        return AbstractModel(cfg, box["graphdef"], state)

    def merge(self, params: Any) -> Decoder:
        """The `Decoder` holding `params` (pure dict or `nnx.State`)."""
        return nnx.merge(self.graphdef, params)

    @functools.cached_property
    def shapes(self) -> dict[str, Any]:
        """The parameter tree as a pure dict of `jax.ShapeDtypeStruct`s."""
        return nnx.to_pure_dict(self.state)

    @functools.cached_property
    def variables(self) -> dict[tuple[str, ...], nnx.Variable]:
        """Path (tuple of keys) -> abstract variable (shape, dtype, metadata) of every parameter."""
        return {_path(path): var for path, var in self.state.flat_state()}

    @functools.cached_property
    def adapter_paths(self) -> frozenset[tuple[str, ...]]:
        """Paths of the `LoRAParam`s (empty without `cfg.lora`)."""
        return frozenset(p for p, var in self.variables.items() if isinstance(var, LoRAParam))

    def _variable(self, path: tuple[Any, ...], what: str) -> nnx.Variable:
        key = _path(path)
        if key not in self.variables:
            raise KeyError(f"no {what} known for parameter {'.'.join(key)}")
        return self.variables[key]

    def logical_axes(self, tree: Any) -> Any:
        """Same tree as `tree` (any sub-tree of the params; arrays, shape structs or shape tuples) with a
        tuple of logical axis names at each leaf, read from the parameters' `out_sharding` metadata."""
        tree = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree

        def names(path: tuple[Any, ...], p: Any) -> tuple[str | None, ...]:
            out = tuple(self._variable(path, "logical axes").get_metadata("out_sharding"))
            shape = p if isinstance(p, tuple) else p.shape
            assert len(out) == len(shape), (_path(path), out, shape)
            return out

        return jax.tree_util.tree_map_with_path(names, tree, is_leaf=lambda x: isinstance(x, tuple))

    def shardings(self, mesh: Mesh, tree: Any) -> Any:
        """`NamedSharding` of every parameter of `tree` (params or their shapes) from its logical axes."""
        tree = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
        return tree_shardings(mesh, self.logical_axes(tree), tree)

    def init_tree(self, tree: Any, rng: jax.Array) -> dict[str, Any]:
        """Random values for `tree` (the params' shapes or a sub-tree of them; shape structs or tuples), each
        drawn by its parameter's own initialiser (`lr_jax.model.layers.param`) in `cfg.param_dtype`, one key
        per leaf in flattening order."""
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))
        keys = jax.random.split(rng, len(leaves))
        dtype = jnp.dtype(self.cfg.param_dtype)
        out = []
        for (path, leaf), key in zip(leaves, keys, strict=True):
            shape = leaf if isinstance(leaf, tuple) else tuple(leaf.shape)
            out.append(self._variable(path, "initialiser").get_metadata("initializer")(key, shape, dtype))
        return jax.tree_util.tree_unflatten(treedef, out)


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """Nested dict of parameter shapes (tuples) of `Decoder(cfg)` (adapters included when `cfg.lora`)."""
    return jax.tree.map(lambda s: tuple(s.shape), AbstractModel.of(cfg).shapes)

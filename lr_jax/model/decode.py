"""Batched autoregressive decoding with a shared-prefix KV cache (prefill once, sample N continuations).

Cache layout. A batch holds `P` prompts and `N` samples per prompt, `B = P * N` decode rows, row
``b = p * N + k``. The cache has two parts:

* **prefix** `[layers, P, prefix_len, kv_heads, head_dim]` (K and V): one copy per *prompt*, written by
  `prefill`. Prompts are **right-padded** to `prefix_len`; prompt `p`'s tokens sit at indices
  ``0 .. lens[p] - 1`` with RoPE positions equal to their index, so no position offset is needed; the pad
  slots are masked out (index ``>= lens[p]``).
* **tail** `[layers, B, max_new_tokens, kv_heads, head_dim]`: one copy per *row*, the generated tokens.
  Step `t` writes slot `t` of every row (the same slot for all rows, so the write is one
  `dynamic_update_slice`); its RoPE position is ``lens[p] + t``.

A decode step attends over ``prefix[p] | tail[b, :t] | self`` with one softmax, so the N samples of a prompt
read one prefix copy: for a 64k context and N = 10 the cache is ~10x smaller than copying the prefix into
every row. Attention at decode time is dense over the cache (one query per row: O(cache) work per step).

Sampling (`sample_logits`): temperature, then top-k, then top-p (the `transformers` order); greedy argmax
when temperature is 0. Row `b`'s randomness is ``fold_in(row_key[b], t)`` at step `t`; `row_keys` come from
`row_key(seed, prompt_id, k)`, so a row's tokens do not depend on which other rows share its batch.

Mesh sharding (`generate(..., mesh=...)`, GSPMD style like training): params use the trainer's
`param_shardings`; prompts, their prefix cache `[layers, P, ...]` and their rows (tail cache, keys, tokens)
are split over the logical "batch" axis (mesh data x fsdp), K/V heads over "tensor" where divisible, by
`with_sharding_constraint` hints that are no-ops without a mesh. Row ``b = p * N + k`` keeps a prompt's N
rows on the shard that holds its prefix (`generate` requires P divisible by data x fsdp; callers pad).
Per-row keys make the tokens independent of the layout.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from lr_jax.model import attention
from lr_jax.model.attention.mask import NEG, TokenInfo
from lr_jax.model.config import ModelConfig

# The training model's own modules, so decode and training share one numerics path.
from lr_jax.model.decoder import AbstractModel, Decoder
from lr_jax.model.transformer import Params, param_shardings
from lr_jax.parallel.rules import constrain, logical_to_spec

# Logical names of the caches: prefix `[layers, P, prefix_len, kv_heads, head_dim]` and tail
# `[layers, B, max_new_tokens, kv_heads, head_dim]` both split over batch (P or rows) and kv heads.
CACHE_AXES = ("layers", "batch", None, "act_kv_heads", None)


class Prefix(NamedTuple):
    """Prefill result.

    k, v: `[layers, P, prefix_len, kv_heads, head_dim]` in `cfg.dtype`; lens: `[P]` int32 prompt lengths;
    logits: `[P, vocab]` float32 next-token logits after each prompt's last token.
    """

    k: jax.Array
    v: jax.Array
    lens: jax.Array
    logits: jax.Array


class Generation(NamedTuple):
    """Decode result for `B = P * N` rows.

    tokens: `[B, max_new_tokens]` int32, `pad_id` after a row finished; num_tokens: `[B]` tokens generated
    including the EOS that ended the row; finished: `[B]` bool, True when the row emitted an EOS;
    logits: `[B, max_new_tokens, vocab]` float32 pre-filter logits of each step (only with return_logits,
    else None); logprobs: `[B, max_new_tokens]` float32 log-prob of each emitted token under the policy at
    temperature 1 — ``log_softmax(raw logits)[token]``, not the temperature / top-k / top-p warped
    distribution it was drawn from (what GRPO's importance ratio needs: the policy's own probability) — 0
    after a row finished (only with return_logprobs, else None).
    """

    tokens: jax.Array
    num_tokens: jax.Array
    finished: jax.Array
    logits: jax.Array | None
    logprobs: jax.Array | None = None


def row_key(seed: int, prompt_id: str | int, k: int) -> jax.Array:
    """The PRNG key of sample `k` of `prompt_id`: independent of batch size and composition.

    The prompt id is hashed with CRC32 (stable across processes, unlike `hash`).
    """
    pid = zlib.crc32(str(prompt_id).encode("utf-8")) & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), pid), k)


def _logits(model: Decoder, x: jax.Array) -> jax.Array:
    """x `[B, D]` pre-final-norm -> `[B, vocab]` float32."""
    h = model.final_norm(x)
    w = model.unembed().astype(h.dtype)
    return jnp.einsum("bd,dv->bv", h, w, preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def prefill(cfg: ModelConfig, params: Params, tokens: jax.Array, lens: jax.Array) -> Prefix:
    """Run the prompts once and keep every layer's K/V.

    tokens `[P, prefix_len]` int32 right-padded; lens `[P]` int32 (1..prefix_len). Attention uses
    `cfg.attention_backend` or the registry's decode fallback for it (decoding runs per device).
    """
    P, S = tokens.shape
    lens = lens.astype(jnp.int32)
    idx = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (P, S))
    # Pads get segment 0: they attend only each other, never a real token.
    info = TokenInfo(idx, (idx < lens[:, None]).astype(jnp.int32), jnp.zeros_like(idx))
    attend = attention.bind(cfg, decode=True)
    model = AbstractModel.of(cfg).merge(params)
    x = model.embed_tokens(tokens, ("batch", None, "act_embed"))
    layer_def, layers = nnx.split(model.layers)

    def body(x: jax.Array, p: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        layer = nnx.merge(layer_def, p)
        q, k, v = layer.attn.qkv(layer.attn_norm(x), idx, annotate=False)
        out = attend(q, k, v, info, info)
        return constrain(layer.after_attention(x, out, None), ("batch", None, "act_embed")), (k, v)

    x, (ks, vs) = jax.lax.scan(body, x, layers)
    last = jnp.take_along_axis(x, (lens - 1)[:, None, None], axis=1)[:, 0]
    logits = constrain(_logits(model, last), ("batch", None))
    return Prefix(constrain(ks, CACHE_AXES), constrain(vs, CACHE_AXES), constrain(lens, ("batch",)), logits)


def _decode_attention(
    q: jax.Array,
    pk: jax.Array,
    pv: jax.Array,
    lens: jax.Array,
    tk: jax.Array,
    tv: jax.Array,
    t: jax.Array,
    sk: jax.Array,
    sv: jax.Array,
    scale: float,
) -> jax.Array:
    """One query per row over prefix | tail[:t] | self, one softmax.

    q `[P, N, Hkv, G, hd]`; pk/pv `[P, Tp, Hkv, hd]`; lens `[P]`; tk/tv `[P, N, Tn, Hkv, hd]`; t scalar;
    sk/sv `[P, N, Hkv, hd]` (this step's own K/V). Returns `[P, N, Hkv, G, hd]` float32.
    """
    f32 = jnp.float32
    s_p = jnp.einsum("pnhgd,pkhd->pnhgk", q, pk, preferred_element_type=f32) * scale
    s_p = jnp.where((jnp.arange(pk.shape[1]) < lens[:, None])[:, None, None, None, :], s_p, NEG)
    s_t = jnp.einsum("pnhgd,pnkhd->pnhgk", q, tk, preferred_element_type=f32) * scale
    s_t = jnp.where(jnp.arange(tk.shape[2]) < t, s_t, NEG)
    s_s = jnp.einsum("pnhgd,pnhd->pnhg", q, sk, preferred_element_type=f32)[..., None] * scale
    s = jnp.concatenate([s_p, s_t, s_s], axis=-1)
    w = jax.nn.softmax(s, axis=-1)  # never empty: `self` is always allowed
    tp, tn = pk.shape[1], tk.shape[2]
    w_p, w_t, w_s = w[..., :tp], w[..., tp:tp + tn], w[..., tp + tn:]
    out = jnp.einsum("pnhgk,pkhd->pnhgd", w_p.astype(pv.dtype), pv, preferred_element_type=f32)
    out = out + jnp.einsum("pnhgk,pnkhd->pnhgd", w_t.astype(tv.dtype), tv, preferred_element_type=f32)
    return out + w_s * sv[:, :, :, None, :].astype(f32)


def _step(
    cfg: ModelConfig, params: Params, prefix: Prefix, tail_k: jax.Array, tail_v: jax.Array, t: jax.Array,
    tokens: jax.Array, num_samples: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Feed `tokens` `[B]` at step t; returns logits `[B, vocab]` and this step's K/V `[L, B, Hkv, hd]`."""
    B = tokens.shape[0]
    P, N = B // num_samples, num_samples
    hkv, hd = cfg.num_kv_heads, cfg.head_dim
    dtype = jnp.dtype(cfg.dtype)
    positions = (jnp.repeat(prefix.lens, N) + t)[:, None].astype(jnp.int32)  # [B, 1]
    model = AbstractModel.of(cfg).merge(params)
    x = model.embed_tokens(tokens[:, None], ("batch", None, "act_embed"))  # [B, 1, D]
    layer_def, layers = nnx.split(model.layers)

    def body(x: jax.Array, xs: tuple[Any, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        p, pk, pv, tk, tv = xs
        layer = nnx.merge(layer_def, p)
        q, k, v = layer.attn.qkv(layer.attn_norm(x), positions, annotate=False)
        k, v = k[:, 0], v[:, 0]  # [B, Hkv, hd]
        out = _decode_attention(
            q[:, 0].reshape(P, N, hkv, cfg.num_groups, hd),
            pk, pv, prefix.lens,
            tk.reshape(P, N, *tk.shape[1:]), tv.reshape(P, N, *tv.shape[1:]), t,
            k.reshape(P, N, hkv, hd), v.reshape(P, N, hkv, hd),
            cfg.head_dim**-0.5,
        )
        out = out.reshape(B, 1, cfg.num_heads, hd).astype(dtype)
        return constrain(layer.after_attention(x, out, None), ("batch", None, "act_embed")), (k, v)

    x, (ks, vs) = jax.lax.scan(body, x, (layers, prefix.k, prefix.v, tail_k, tail_v))
    return constrain(_logits(model, x[:, 0]), ("batch", None)), ks, vs


def filter_logits(logits: jax.Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Temperature-scaled logits `[B, V]` with tokens outside top-k / the top-p nucleus set to -1e30.

    top_k 0 = off; top_p 1.0 = off. Top-p keeps the smallest set of most likely tokens whose probability
    reaches `top_p` (the most likely token always). Ties at the cut-off are all kept.
    """
    x = logits.astype(jnp.float32) / temperature
    if top_k > 0 and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x >= kth, x, NEG)
    if top_p < 1.0:
        srt = jnp.sort(x, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        keep = before < top_p
        cutoff = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x >= cutoff, x, NEG)
    return x


def _token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """`[B]` float32 ``log_softmax(logits)[token]`` of logits `[B, V]` (temperature 1, nothing filtered)."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]


def sample_logits(
    logits: jax.Array, keys: jax.Array, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Next tokens `[B]` int32 from logits `[B, V]`; keys `[B]` typed PRNG keys; greedy when temperature 0."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, temperature, top_k, top_p)
    return jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "num_samples", "max_new_tokens", "temperature", "top_k", "top_p", "eos_ids",
                     "pad_id", "return_logits", "return_logprobs"),
)
def decode(
    cfg: ModelConfig,
    params: Params,
    prefix: Prefix,
    keys: jax.Array,
    live: jax.Array | None = None,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    return_logits: bool = False,
    return_logprobs: bool = False,
) -> Generation:
    """Sample `num_samples` continuations of each prefilled prompt, under one `lax.while_loop`.

    keys `[P * num_samples]` typed PRNG keys (row b = prompt b // N, sample b % N). The loop stops when every
    row has emitted one of `eos_ids` or after `max_new_tokens` steps. live `[P]` bool (default all True):
    rows of a prompt marked False (batch padding) count as finished from the start and emit only `pad_id`,
    so they never keep the loop running. return_logprobs: also record each emitted token's log-prob at
    temperature 1 (`Generation.logprobs`).
    """
    P = prefix.lens.shape[0]
    B, N, T = P * num_samples, num_samples, max_new_tokens
    L, hkv, hd = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    dtype = jnp.dtype(cfg.dtype)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def pick(logits: jax.Array, t: jax.Array) -> jax.Array:
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
        return sample_logits(logits, step_keys, temperature, top_k, top_p)

    keys = constrain(keys, ("batch",))
    first_logits = constrain(jnp.repeat(prefix.logits, N, axis=0), ("batch", None))
    tok0 = pick(first_logits, jnp.int32(0))
    done = jnp.isin(tok0, eos)
    lp0 = _token_logprob(first_logits, tok0) if return_logprobs else None
    if live is not None:
        dead = ~jnp.repeat(constrain(live, ("batch",)), N)
        tok0, done = jnp.where(dead, pad_id, tok0), done | dead
        if lp0 is not None:  # a padding row's pad_id is no sample: 0, as after a row finished
            lp0 = jnp.where(dead, 0.0, lp0)
    out = constrain(jnp.full((B, T), pad_id, jnp.int32).at[:, 0].set(tok0), ("batch", None))
    all_logits = jnp.zeros((B, T, cfg.vocab_size) if return_logits else (0,), jnp.float32)
    if return_logits:
        all_logits = constrain(all_logits.at[:, 0].set(first_logits), ("batch", None, None))
    all_lp = jnp.zeros((B, T) if return_logprobs else (0,), jnp.float32)
    if lp0 is not None:
        all_lp = constrain(all_lp.at[:, 0].set(lp0), ("batch", None))
    zeros = constrain(jnp.zeros((L, B, T, hkv, hd), dtype), CACHE_AXES)
    state = dict(
        t=jnp.int32(1), last=tok0, done=done, out=out, n=jnp.ones((B,), jnp.int32),
        tk=zeros, tv=zeros, logits=all_logits, logprobs=all_lp,
    )

    def cond(s: dict[str, Any]) -> jax.Array:
        return (s["t"] < T) & ~jnp.all(s["done"])

    def body(s: dict[str, Any]) -> dict[str, Any]:
        t = s["t"]
        # Token emitted at step t-1 is fed now; its K/V go to tail slot t-1.
        logits, k, v = _step(cfg, params, prefix, s["tk"], s["tv"], t - 1, s["last"], N)
        tk = jax.lax.dynamic_update_slice_in_dim(s["tk"], k[:, :, None].astype(dtype), t - 1, axis=2)
        tv = jax.lax.dynamic_update_slice_in_dim(s["tv"], v[:, :, None].astype(dtype), t - 1, axis=2)
        tk, tv = constrain(tk, CACHE_AXES), constrain(tv, CACHE_AXES)
        tok = pick(logits, t)
        tok = jnp.where(s["done"], pad_id, tok)
        new = dict(
            t=t + 1, last=tok, done=s["done"] | jnp.isin(tok, eos),
            out=jax.lax.dynamic_update_slice_in_dim(s["out"], tok[:, None], t, axis=1),
            n=s["n"] + (~s["done"]).astype(jnp.int32), tk=tk, tv=tv, logits=s["logits"],
            logprobs=s["logprobs"],
        )
        if return_logits:
            new["logits"] = jax.lax.dynamic_update_slice_in_dim(s["logits"], logits[:, None], t, axis=1)
        if return_logprobs:
            lp = jnp.where(s["done"], 0.0, _token_logprob(logits, tok))
            new["logprobs"] = jax.lax.dynamic_update_slice_in_dim(s["logprobs"], lp[:, None], t, axis=1)
        return new

    s = jax.lax.while_loop(cond, body, state)
    return Generation(constrain(s["out"], ("batch", None)), constrain(s["n"], ("batch",)),
                      constrain(s["done"], ("batch",)), s["logits"] if return_logits else None,
                      s["logprobs"] if return_logprobs else None)


def shard_params(cfg: ModelConfig, params: Params, mesh: Mesh) -> Params:
    """`params` placed with the trainer's `param_shardings` on `mesh` (FSDP / tensor where divisible)."""
    return jax.device_put(params, param_shardings(cfg, mesh, params))


def _put_rows(x: Any, mesh: Mesh | None) -> jax.Array:
    """Array `[batch, ...]` split over the logical batch axis (replicated when not divisible)."""
    if mesh is None:
        return jnp.asarray(x)
    names = ("batch",) + (None,) * (np.ndim(x) - 1)
    return jax.device_put(x, NamedSharding(mesh, logical_to_spec(names, mesh, np.shape(x))))


def generate(
    cfg: ModelConfig,
    params: Params,
    prompts: list[list[int]],
    keys: jax.Array,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    pad_to: int = 1,
    return_logits: bool = False,
    return_logprobs: bool = False,
    mesh: Mesh | None = None,
    num_live: int | None = None,
) -> Generation:
    """Prefill each prompt once, then decode `num_samples` rows per prompt (row b = prompt b // N).

    prompts: P lists of token ids (any lengths >= 1); keys `[P * num_samples]`; `pad_to`: the prefix length
    is rounded up to a multiple of it (fewer recompilations across batches). With `mesh`, params are placed
    by `shard_params` (free when they already are) and prompts / rows split over data x fsdp: P must be a
    multiple of data x fsdp (pad with dummy prompts). The result's arrays stay on the mesh. `num_live`: only
    the first that many prompts are real; the rest are padding whose rows finish at once (see `decode`).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if mesh is not None and len(prompts) % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"generate: {len(prompts)} prompts do not split over mesh data x fsdp = "
                         f"{mesh.shape['data'] * mesh.shape['fsdp']}; pad the batch with dummy prompts")
    longest = max(len(p) for p in prompts)
    width = -(-longest // pad_to) * pad_to
    tokens = _put_rows(np.asarray([list(p) + [pad_id] * (width - len(p)) for p in prompts], np.int32), mesh)
    lens = _put_rows(np.asarray([len(p) for p in prompts], np.int32), mesh)
    live = None if num_live is None else _put_rows(np.arange(len(prompts)) < num_live, mesh)
    if mesh is not None:
        params, keys = shard_params(cfg, params, mesh), _put_rows(keys, mesh)
    # The mesh context activates the `constrain` hints inside prefill / decode (no-ops without it).
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        pre = prefill(cfg, params, tokens, lens)
        return decode(
            cfg, params, pre, keys, live, num_samples=num_samples, max_new_tokens=max_new_tokens,
            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
            eos_ids=tuple(int(e) for e in eos_ids), pad_id=int(pad_id), return_logits=return_logits,
            return_logprobs=return_logprobs,
        )

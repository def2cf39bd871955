"""HF safetensors <-> lr_jax params (NumPy trees), both directions, using the name tables of `names.py`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from lr_jax.convert.hf_config import hf_config, read_hf_config
from lr_jax.convert.names import HF_NAMES, hf_names
from lr_jax.convert.safetensors import Tensors, write_safetensors
from lr_jax.model.config import ModelConfig


def _stack(per_layer: Callable[[int], np.ndarray], n: int, dtype: np.dtype) -> np.ndarray:
    return np.stack([np.asarray(per_layer(i), dtype=np.float32).astype(dtype) for i in range(n)])


def params_from_tensors(cfg: ModelConfig, t: Tensors, dtype: np.dtype) -> dict[str, Any]:
    D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    hq, hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    chatglm = cfg.family == "chatglm"
    fused_mlp = cfg.family in ("glm", "glm4", "chatglm")
    n = hf_names(cfg.family)
    f = lambda key, i: n[key].format(i=i)

    def qkv(i: int, part: str, suffix: str) -> np.ndarray:
        """One of q/k/v for layer i: torch Linear layout `[out, in]` (weight) or `[out]` (bias)."""
        sizes = {"q": hq * hd, "k": hkv * hd, "v": hkv * hd}
        if not chatglm:
            shape = (sizes[part], D) if suffix == "weight" else (sizes[part],)
            return t.get(f(part, i) + suffix, shape)
        total = sum(sizes.values())
        fused = t.get(f("qkv", i) + suffix, (total, D) if suffix == "weight" else (total,))
        start = {"q": 0, "k": sizes["q"], "v": sizes["q"] + sizes["k"]}[part]
        return fused[start : start + sizes[part]]

    def gate_up(i: int, part: str) -> np.ndarray:
        if not fused_mlp:
            return t.get(f(part, i), (F, D))
        fused = t.get(f("gate_up", i), (2 * F, D))
        return fused[:F] if part == "gate" else fused[F:]

    heads = {"q": hq, "k": hkv, "v": hkv}
    attn: dict[str, Any] = {}
    for part in ("q", "k", "v"):
        attn[part] = {
            "kernel": _stack(
                lambda i, part=part: qkv(i, part, "weight").T.reshape(D, heads[part], hd), L, dtype
            )
        }
        if cfg.qkv_bias:
            attn[part]["bias"] = _stack(
                lambda i, part=part: qkv(i, part, "bias").reshape(heads[part], hd), L, dtype
            )
    attn["o"] = {"kernel": _stack(lambda i: t.get(f("o", i), (D, hq * hd)).T.reshape(hq, hd, D), L, dtype)}
    layers: dict[str, Any] = {
        "attn_norm": {"scale": _stack(lambda i: t.get(f("attn_norm", i), (D,)), L, dtype)},
        "attn": attn,
        "mlp_norm": {"scale": _stack(lambda i: t.get(f("mlp_norm", i), (D,)), L, dtype)},
        "mlp": {
            "gate": {"kernel": _stack(lambda i: gate_up(i, "gate").T, L, dtype)},
            "up": {"kernel": _stack(lambda i: gate_up(i, "up").T, L, dtype)},
            "down": {"kernel": _stack(lambda i: t.get(f("down", i), (D, F)).T, L, dtype)},
        },
    }
    if cfg.post_norms:
        for key in ("post_attn_norm", "post_mlp_norm"):
            layers[key] = {"scale": _stack(lambda i, key=key: t.get(f(key, i), (D,)), L, dtype)}
    params: dict[str, Any] = {
        "embed": {"embedding": np.asarray(t.get(n["embed"], (V, D)), np.float32).astype(dtype)},
        "layers": layers,
        "final_norm": {"scale": np.asarray(t.get(n["final_norm"], (D,)), np.float32).astype(dtype)},
    }
    if cfg.tie_embeddings:
        if t.has(n["lm_head"]):
            t.get(n["lm_head"], (V, D))  # a tied checkpoint may still store the (identical) head
    else:
        params["lm_head"] = {"kernel": np.asarray(t.get(n["lm_head"], (V, D)), np.float32).T.astype(dtype)}
    return params


def from_hf(path: str | Path, param_dtype: str = "float32", **overrides: Any) -> tuple[ModelConfig, dict]:
    """Read an HF checkpoint dir (config.json + safetensors) into `(ModelConfig, params)` (NumPy arrays).

    `param_dtype` is the stored dtype of the returned params; `overrides` set ModelConfig run-time fields
    (dtype, attention_backend, scan_layers, ...).
    """
    hf_dir = Path(path)
    cfg = read_hf_config(hf_dir, param_dtype=param_dtype, **overrides)
    tensors = Tensors(hf_dir)
    params = params_from_tensors(
        cfg, tensors, np.dtype(ml_dtypes.bfloat16 if param_dtype == "bfloat16" else param_dtype)
    )
    tensors.check_all_used()
    return cfg, params



def hf_tensors(
    cfg: ModelConfig, params: dict[str, Any], dtype: np.dtype
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, torch-layout array) pairs for `params`."""
    D = cfg.hidden_size
    a = lambda x: np.asarray(x, np.float32).astype(dtype)
    lp = params["layers"]
    n = HF_NAMES  # exports are transformers-native, ChatGLM included
    fused_mlp = cfg.family in ("glm", "glm4", "chatglm")
    yield n["embed"], a(params["embed"]["embedding"])
    yield n["final_norm"], a(params["final_norm"]["scale"])
    if not cfg.tie_embeddings:
        yield n["lm_head"], a(params["lm_head"]["kernel"]).T
    for i in range(cfg.num_layers):
        f = lambda key, i=i: n[key].format(i=i)
        yield f("attn_norm"), a(lp["attn_norm"]["scale"][i])
        yield f("mlp_norm"), a(lp["mlp_norm"]["scale"][i])
        for part in ("q", "k", "v"):
            kernel = a(lp["attn"][part]["kernel"][i])  # [D, H, hd]
            yield f(part) + "weight", kernel.reshape(D, -1).T
            if cfg.qkv_bias:
                yield f(part) + "bias", a(lp["attn"][part]["bias"][i]).reshape(-1)
        yield f("o"), a(lp["attn"]["o"]["kernel"][i]).reshape(-1, D).T
        gate, up = a(lp["mlp"]["gate"]["kernel"][i]).T, a(lp["mlp"]["up"]["kernel"][i]).T
        if fused_mlp:
            yield f("gate_up"), np.concatenate([gate, up], axis=0)
        else:
            yield f("gate"), gate
            yield f("up"), up
        yield f("down"), a(lp["mlp"]["down"]["kernel"][i]).T
        if cfg.post_norms:
            yield f("post_attn_norm"), a(lp["post_attn_norm"]["scale"][i])
            yield f("post_mlp_norm"), a(lp["post_mlp_norm"]["scale"][i])


def to_hf(
    cfg: ModelConfig,
    params: dict[str, Any],
    out_dir: str | Path,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write `config.json` + safetensors that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    dtype: stored dtype ("float32" / "bfloat16" / "float16"; default cfg.param_dtype). Output larger than
    `max_shard_bytes` is split into `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`.
    A LoRA model (`cfg.lora`) is exported with its adapters merged into the base weights.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype or cfg.param_dtype
    if cfg.lora is not None:  # HF gets a plain model: each adapter folded into its kernel
        from lr_jax.model import lora

        cfg, params = lora.merge_adapters(cfg, _to_numpy(params))
    np_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    hf_cfg = hf_config(cfg, dtype)
    params = _to_numpy(params)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    total = 0
    for name, arr in hf_tensors(cfg, params, np_dtype):
        if shards[-1] and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
        total += arr.nbytes
    for stale in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for k, shard in enumerate(shards, 1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / fname, shard)
            weight_map.update(dict.fromkeys(shard, fname))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    return out


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


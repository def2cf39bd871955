"""HF `config.json` <-> ModelConfig: the field mapping of each supported family, both directions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lr_jax.convert.errors import ConvertError
from lr_jax.io import jsonl
from lr_jax.model.config import ConfigError, ModelConfig, RopeScaling

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GlmForCausalLM": "glm",
    "Glm4ForCausalLM": "glm4",
    "ChatGLMModel": "chatglm",
    "ChatGLMForConditionalGeneration": "chatglm",
}
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "glm": "glm", "glm4": "glm4", "chatglm": "chatglm"}
EXPORT_ARCH = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "glm": "GlmForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "chatglm": "GlmForCausalLM",
}


def _family(hf: dict[str, Any], where: str) -> str:
    for arch in hf.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if hf.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[hf["model_type"]]
    raise ConvertError(
        f"{where}: unsupported architecture {hf.get('architectures')} / model_type "
        f"{hf.get('model_type')!r}; supported: {sorted(ARCHITECTURES)}"
    )


def _as(kind: type, value: Any, key: str, where: str) -> Any:
    """`kind(value)` (int or float), or a ConvertError naming the config field (not a bare ValueError)."""
    try:
        if isinstance(value, bool | dict | list):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConvertError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r}") from None


def _rope(hf: dict[str, Any], where: str, default_partial: float) -> tuple[float, RopeScaling | None, float]:
    """(rope_theta, llama3 scaling, partial_rotary_factor) from either `rope_scaling` or `rope_parameters`."""
    for key in ("rope_parameters", "rope_scaling"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            raise ConvertError(f"{where}: field {key!r} must be an object, got {hf[key]!r}")
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    merged = {**legacy, **params}
    theta = _as(float, merged.get("rope_theta", hf.get("rope_theta", 10000.0)), "rope_theta", where)
    partial = merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", default_partial))
    partial = _as(float, partial, "partial_rotary_factor", where)
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        return theta, None, partial
    if rope_type != "llama3":
        raise ConvertError(f"{where}: rope type {rope_type!r} is not supported (default, llama3)")
    try:
        scaling = RopeScaling(
            factor=_as(float, merged["factor"], "rope_scaling.factor", where),
            low_freq_factor=_as(float, merged["low_freq_factor"], "rope_scaling.low_freq_factor", where),
            high_freq_factor=_as(float, merged["high_freq_factor"], "rope_scaling.high_freq_factor", where),
            original_max_position_embeddings=_as(int, merged["original_max_position_embeddings"],
                                                 "rope_scaling.original_max_position_embeddings", where),
        )
    except KeyError as e:
        raise ConvertError(f"{where}: llama3 rope scaling lacks field {e.args[0]}") from None
    return theta, scaling, partial


def _require(hf: dict[str, Any], key: str, where: str) -> Any:
    if key not in hf or hf[key] is None:
        raise ConvertError(f"{where}: missing field {key!r}")
    return hf[key]


def _int(hf: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    """Field `key` as int; missing or null takes `default` (an error when there is none)."""
    if hf.get(key) is None and default is not None:
        return default
    return _as(int, _require(hf, key, where), key, where)


def config_from_hf(hf: dict[str, Any], where: str = "config.json", **overrides: Any) -> ModelConfig:
    """ModelConfig from an HF `config.json` dict; `overrides` set run-time fields (dtype, backend, ...)."""
    if not isinstance(hf, dict):
        raise ConvertError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    family = _family(hf, where)
    if family == "chatglm":
        return _config_from_chatglm(hf, where, **overrides)
    if hf.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
    if hf.get("mlp_bias"):
        raise ConvertError(f"{where}: mlp_bias=True is not supported")
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise ConvertError(f"{where}: use_sliding_window=True is not supported")
    if family == "llama" and hf.get("attention_bias"):
        raise ConvertError(f"{where}: attention_bias=True (bias on o_proj) is not supported for Llama")
    heads = _int(hf, "num_attention_heads", where)
    hidden = _int(hf, "hidden_size", where)
    glm = family in ("glm", "glm4")
    theta, scaling, partial = _rope(hf, where, 0.5 if glm else 1.0)
    eos = hf.get("eos_token_id")
    fields: dict[str, Any] = dict(
        vocab_size=_int(hf, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_int(hf, "intermediate_size", where),
        num_layers=_int(hf, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=_as(int, hf.get("num_key_value_heads") or heads, "num_key_value_heads", where),
        head_dim=_as(int, hf.get("head_dim") or (hidden // heads if heads else 0), "head_dim", where),
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=partial,
        rotary_style="interleaved" if glm else "half",
        rms_norm_eps=_as(float, hf.get("rms_norm_eps", 1e-6), "rms_norm_eps", where),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=True if family == "qwen2" else bool(hf.get("attention_bias", False)),
        post_norms=family == "glm4",
        family=family,
        max_position_embeddings=_int(hf, "max_position_embeddings", where, 8192),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
        source=",".join(hf.get("architectures") or [family]),
    )
    fields.update(overrides)
    try:
        return ModelConfig(**fields).validate()
    except ConfigError as e:
        raise ConvertError(f"{where}: {e}") from None


def _config_from_chatglm(hf: dict[str, Any], where: str, **overrides: Any) -> ModelConfig:
    """The THUDM/glm-4-9b remote-code config (ChatGLMConfig) -> ModelConfig."""
    for key, want in (
        ("add_bias_linear", False),
        ("rmsnorm", True),
        ("post_layer_norm", True),
        ("apply_residual_connection_post_layernorm", False),
    ):
        if bool(hf.get(key, want)) != want:
            raise ConvertError(f"{where}: ChatGLM field {key}={hf[key]!r} is not supported (need {want})")
    heads = _int(hf, "num_attention_heads", where)
    hidden = _int(hf, "hidden_size", where)
    kv = _int(hf, "multi_query_group_num", where) if hf.get("multi_query_attention", False) else heads
    eos = hf.get("eos_token_id")
    fields: dict[str, Any] = dict(
        vocab_size=_as(int, hf.get("padded_vocab_size") or _require(hf, "vocab_size", where),
                       "padded_vocab_size" if hf.get("padded_vocab_size") else "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_int(hf, "ffn_hidden_size", where),
        num_layers=_int(hf, "num_layers", where),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=_as(int, hf.get("kv_channels") or (hidden // heads if heads else 0), "kv_channels", where),
        # ChatGLM's RotaryEmbedding(rotary_dim // 2, rope_ratio): base 10000 * rope_ratio, half of each head
        # interleaved pairs — exactly GlmForCausalLM's rotary.
        rope_theta=10000.0 * _as(float, hf.get("rope_ratio", 1.0), "rope_ratio", where),
        partial_rotary_factor=0.5,
        rotary_style="interleaved",
        rms_norm_eps=_as(float, hf.get("layernorm_epsilon", 1e-5), "layernorm_epsilon", where),
        tie_embeddings=False,
        qkv_bias=bool(hf.get("add_qkv_bias", False)),
        post_norms=False,
        family="chatglm",
        max_position_embeddings=_int(hf, "seq_length", where, 8192),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
        source=",".join(hf.get("architectures") or ["chatglm"]),
    )
    fields.update(overrides)
    try:
        return ModelConfig(**fields).validate()
    except ConfigError as e:
        raise ConvertError(f"{where}: {e}") from None



def read_hf_config(path: str | Path, **overrides: Any) -> ModelConfig:
    """The ModelConfig of an HF checkpoint dir from its config.json alone (no tensors are read)."""
    hf_dir = Path(path)
    config_path = hf_dir / "config.json"
    if hf_dir.exists() and not hf_dir.is_dir():
        raise ConvertError(f"{hf_dir}: not a directory (an HF checkpoint dir holds config.json and "
                           "*.safetensors)")
    if not config_path.is_file():
        raise ConvertError(f"{hf_dir}: no config.json")
    hf = jsonl.read_json_object(config_path, error=ConvertError)
    return config_from_hf(hf, str(config_path), **overrides)



def hf_config(cfg: ModelConfig, torch_dtype: str) -> dict[str, Any]:
    """config.json for the transformers-native class of `cfg.family` (ChatGLM exports as GlmForCausalLM)."""
    arch = EXPORT_ARCH[cfg.family]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rs = cfg.rope_scaling
        rope.update(
            rope_type="llama3",
            factor=rs.factor,
            low_freq_factor=rs.low_freq_factor,
            high_freq_factor=rs.high_freq_factor,
            original_max_position_embeddings=rs.original_max_position_embeddings,
        )
    if cfg.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = cfg.partial_rotary_factor
    family = EXPORT_ARCH[cfg.family]
    model_type = {
        "LlamaForCausalLM": "llama",
        "Qwen2ForCausalLM": "qwen2",
        "GlmForCausalLM": "glm",
        "Glm4ForCausalLM": "glm4",
    }[family]
    out: dict[str, Any] = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": rope,
        # Older transformers (4.x) read these two spellings instead of rope_parameters.
        "rope_theta": cfg.rope_theta,
        "bos_token_id": cfg.bos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
        "dtype": torch_dtype,
        "use_cache": True,
    }
    if cfg.rope_scaling is not None:
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if cfg.family == "qwen2":
        if not cfg.qkv_bias:
            raise ConvertError("to_hf: Qwen2ForCausalLM always has q/k/v biases, but cfg.qkv_bias is False")
        out["use_sliding_window"] = False
    elif cfg.family == "llama":
        if cfg.qkv_bias:
            raise ConvertError("to_hf: LlamaForCausalLM cannot express q/k/v bias without an o_proj bias")
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out["attention_bias"] = cfg.qkv_bias
        if cfg.family == "chatglm" and cfg.post_norms:
            raise ConvertError("to_hf: post_norms needs the glm4 family")
    if (cfg.family == "glm4") != cfg.post_norms:
        raise ConvertError(
            f"to_hf: family {cfg.family!r} with post_norms={cfg.post_norms} has no HF equivalent"
        )
    return out


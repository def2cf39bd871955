"""Tensor-name tables: one row per lr_jax weight, one table per checkpoint layout (`{i}` = layer index).

The keys are the lr_jax roles the conversions read and write (`params_from_tensors`, `hf_tensors`); a value
ending in "." takes the suffix `weight` or `bias`. Reading a layout = looking its names up here; adding a
family whose tensors are named differently = adding a table, not code.
"""

from __future__ import annotations

_LAYER = "model.layers.{i}."

# transformers-native Llama / Qwen2 / Glm / Glm4 (what `to_hf` writes; glm* use the fused `gate_up`).
HF_NAMES: dict[str, str] = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
    "attn_norm": _LAYER + "input_layernorm.weight",
    "mlp_norm": _LAYER + "post_attention_layernorm.weight",
    "q": _LAYER + "self_attn.q_proj.",
    "k": _LAYER + "self_attn.k_proj.",
    "v": _LAYER + "self_attn.v_proj.",
    "o": _LAYER + "self_attn.o_proj.weight",
    "gate": _LAYER + "mlp.gate_proj.weight",
    "up": _LAYER + "mlp.up_proj.weight",
    "down": _LAYER + "mlp.down_proj.weight",
    "gate_up": _LAYER + "mlp.gate_up_proj.weight",
    "post_attn_norm": _LAYER + "post_self_attn_layernorm.weight",
    "post_mlp_norm": _LAYER + "post_mlp_layernorm.weight",
}

_GLM = "transformer.encoder.layers.{i}."

# THUDM/glm-4-9b remote code (ChatGLMModel): fused q/k/v ("qkv") and fused gate/up; read only.
CHATGLM_NAMES: dict[str, str] = {
    **HF_NAMES,
    "embed": "transformer.embedding.word_embeddings.weight",
    "final_norm": "transformer.encoder.final_layernorm.weight",
    "lm_head": "transformer.output_layer.weight",
    "attn_norm": _GLM + "input_layernorm.weight",
    "mlp_norm": _GLM + "post_attention_layernorm.weight",
    "qkv": _GLM + "self_attention.query_key_value.",
    "o": _GLM + "self_attention.dense.weight",
    "gate_up": _GLM + "mlp.dense_h_to_4h.weight",
    "down": _GLM + "mlp.dense_4h_to_h.weight",
}

# llama.cpp's GGUF names for the llama architecture -> the HF name of the same tensor (`gguf.py` reads a
# GGUF file into HF-named tensors, then the HF path converts them).
GGUF_TO_HF: dict[str, str] = {
    "token_embd.weight": HF_NAMES["embed"],
    "output_norm.weight": HF_NAMES["final_norm"],
    "output.weight": HF_NAMES["lm_head"],
    "blk.{i}.attn_norm.weight": HF_NAMES["attn_norm"],
    "blk.{i}.ffn_norm.weight": HF_NAMES["mlp_norm"],
    "blk.{i}.attn_q.weight": HF_NAMES["q"] + "weight",
    "blk.{i}.attn_k.weight": HF_NAMES["k"] + "weight",
    "blk.{i}.attn_v.weight": HF_NAMES["v"] + "weight",
    "blk.{i}.attn_output.weight": HF_NAMES["o"],
    "blk.{i}.ffn_gate.weight": HF_NAMES["gate"],
    "blk.{i}.ffn_up.weight": HF_NAMES["up"],
    "blk.{i}.ffn_down.weight": HF_NAMES["down"],
}


def hf_names(family: str) -> dict[str, str]:
    """The name table to read a checkpoint of `family` (a copy: callers may not edit the shared table)."""
    return dict(CHATGLM_NAMES if family == "chatglm" else HF_NAMES)

"""HF <-> lr_jax conversion: logits parity with the transformers PyTorch forward (fp32) and exact round trips.

Every model is a tiny random one built from a config in this file and saved with `save_pretrained` into a tmp
dir; weights (norm scales and biases included) are re-drawn with a large spread so a transposed, swapped or
mis-split tensor changes the logits far beyond the tolerance.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T

from lr_jax.convert import ConvertError, from_hf, load_flax, main, read_safetensors, to_hf, write_safetensors
from lr_jax.model import forward

SEQ = 24
COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _llama(**kw) -> T.PreTrainedModel:
    return T.LlamaForCausalLM(T.LlamaConfig(**COMMON, **kw))


CASES = {
    "llama": lambda: _llama(),
    # original_max_position_embeddings=8 so positions up to 24 hit low, medium and high frequency bands.
    "llama3_scaling": lambda: _llama(
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8,
        ),
    ),
    "qwen2_untied": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**COMMON, tie_word_embeddings=False)),
    "qwen2_tied": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**COMMON, tie_word_embeddings=True)),
    "glm": lambda: T.GlmForCausalLM(T.GlmConfig(**COMMON, head_dim=8, pad_token_id=0)),
    "glm4": lambda: T.Glm4ForCausalLM(T.Glm4Config(**COMMON, head_dim=8, pad_token_id=0)),
}


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            mean = 1.0 if "norm" in name else 0.0
            p.copy_(mean + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _save(model: torch.nn.Module, path) -> None:
    model.save_pretrained(path, safe_serialization=True)


def _tokens(batch: int = 2, vocab: int = 96) -> np.ndarray:
    return np.random.default_rng(1).integers(0, vocab, size=(batch, SEQ)).astype(np.int32)


def _torch_logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _assert_logits_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(np.asarray(ours) - theirs).max())
    assert err <= 1e-4 * scale, f"max-abs logit error {err:.3g} > 1e-4 x scale {scale:.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case: str, tmp_path) -> None:
    model = _randomize(CASES[case]())
    _save(model, tmp_path)
    cfg, params = from_hf(tmp_path, attention_backend="blockwise", attention_block_size=8)
    tokens = _tokens()
    _assert_logits_close(forward(cfg, params, jnp.asarray(tokens)), _torch_logits(model, tokens))
    if case == "llama3_scaling":
        assert cfg.rope_scaling is not None and cfg.rope_scaling.original_max_position_embeddings == 8
    if case.startswith("glm"):
        assert cfg.rotary_dim == 4 and cfg.rotary_style == "interleaved"


@pytest.mark.parametrize("case", ["llama3_scaling", "qwen2_tied", "glm4"])
def test_export_round_trip_is_exact(case: str, tmp_path) -> None:
    model = _randomize(CASES[case]())
    _save(model, tmp_path / "src")
    cfg, params = from_hf(tmp_path / "src")
    to_hf(cfg, params, tmp_path / "out")
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert type(again) is type(model)
    theirs, ours = model.state_dict(), again.state_dict()
    assert sorted(theirs) == sorted(ours)
    for name, tensor in theirs.items():
        assert torch.equal(tensor, ours[name]), name
    tokens = _tokens()
    np.testing.assert_array_equal(_torch_logits(model, tokens), _torch_logits(again, tokens))


# ChatGLM (THUDM/glm-4-9b remote code) layout, re-laid from a GlmForCausalLM checkpoint:
#   model.embed_tokens.weight                         -> transformer.embedding.word_embeddings.weight
#   model.layers.N.input_layernorm.weight             -> transformer.encoder.layers.N.input_layernorm.weight
#   model.layers.N.self_attn.{q,k,v}_proj.{weight,bias} -> ...self_attention.query_key_value.{weight,bias}
#                                                        (concatenated q, k, v along the output dim)
#   model.layers.N.self_attn.o_proj.weight            -> ...layers.N.self_attention.dense.weight
#   model.layers.N.post_attention_layernorm.weight    -> ...layers.N.post_attention_layernorm.weight
#   model.layers.N.mlp.gate_up_proj.weight            -> ...layers.N.mlp.dense_h_to_4h.weight ([gate; up])
#   model.layers.N.mlp.down_proj.weight               -> ...layers.N.mlp.dense_4h_to_h.weight
#   model.norm.weight                                 -> transformer.encoder.final_layernorm.weight
#   lm_head.weight                                    -> transformer.output_layer.weight
# plus the rotary buffer transformer.rotary_pos_emb.inv_freq (ignored by the converter).
def _chatglm_relayout(glm_dir, out_dir, glm_cfg: T.GlmConfig) -> None:
    src = read_safetensors(glm_dir / "model.safetensors")
    out: dict[str, np.ndarray] = {
        "transformer.embedding.word_embeddings.weight": src["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": src["model.norm.weight"],
        "transformer.output_layer.weight": src["lm_head.weight"],
        "transformer.rotary_pos_emb.inv_freq": np.zeros(2, np.float32),
    }
    for i in range(glm_cfg.num_hidden_layers):
        s, d = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        out[d + "input_layernorm.weight"] = src[s + "input_layernorm.weight"]
        out[d + "post_attention_layernorm.weight"] = src[s + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            out[d + f"self_attention.query_key_value.{kind}"] = np.concatenate(
                [src[s + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], axis=0
            )
        out[d + "self_attention.dense.weight"] = src[s + "self_attn.o_proj.weight"]
        out[d + "mlp.dense_h_to_4h.weight"] = src[s + "mlp.gate_up_proj.weight"]
        out[d + "mlp.dense_4h_to_h.weight"] = src[s + "mlp.down_proj.weight"]
    out_dir.mkdir()
    write_safetensors(out_dir / "model.safetensors", out)
    config = {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "num_layers": glm_cfg.num_hidden_layers,
        "padded_vocab_size": glm_cfg.vocab_size,
        "hidden_size": glm_cfg.hidden_size,
        "ffn_hidden_size": glm_cfg.intermediate_size,
        "num_attention_heads": glm_cfg.num_attention_heads,
        "multi_query_attention": True,
        "multi_query_group_num": glm_cfg.num_key_value_heads,
        "kv_channels": glm_cfg.head_dim,
        "layernorm_epsilon": glm_cfg.rms_norm_eps,
        "add_qkv_bias": True,
        "add_bias_linear": False,
        "rmsnorm": True,
        "post_layer_norm": True,
        "original_rope": True,
        "apply_residual_connection_post_layernorm": False,
        "rope_ratio": 1.0,
        "seq_length": 256,
    }
    (out_dir / "config.json").write_text(json.dumps(config))


def test_chatglm_layout_matches_glm_logits(tmp_path) -> None:
    model = _randomize(CASES["glm"]())
    _save(model, tmp_path / "glm")
    _chatglm_relayout(tmp_path / "glm", tmp_path / "chatglm", model.config)
    cfg, params = from_hf(tmp_path / "chatglm")
    assert cfg.family == "chatglm" and cfg.num_kv_heads == 2 and cfg.qkv_bias
    tokens = _tokens()
    _assert_logits_close(forward(cfg, params, jnp.asarray(tokens)), _torch_logits(model, tokens))


def test_sharded_safetensors_both_directions(tmp_path) -> None:
    model = _randomize(CASES["qwen2_untied"]())
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")  # transformers writes the index json
    assert (tmp_path / "src" / "model.safetensors.index.json").exists()
    cfg, params = from_hf(tmp_path / "src")
    tokens = _tokens()
    _assert_logits_close(forward(cfg, params, jnp.asarray(tokens)), _torch_logits(model, tokens))
    to_hf(cfg, params, tmp_path / "out", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_bad_tensor_shape_names_tensor_and_expected_shape(tmp_path) -> None:
    _save(_randomize(CASES["llama"]()), tmp_path)
    tensors = {k: np.array(v) for k, v in read_safetensors(tmp_path / "model.safetensors").items()}
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(
        ConvertError,
        match=r"model\.layers\.1\.self_attn\.k_proj\.weight has shape \[8, 32\], "
        r"expected \[16, 32\]",
    ):
        from_hf(tmp_path)


def test_unsupported_architecture_and_missing_tensor(tmp_path) -> None:
    _save(_randomize(CASES["llama"]()), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    with pytest.raises(ConvertError, match="unsupported architecture"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = {k: np.array(v) for k, v in read_safetensors(tmp_path / "model.safetensors").items()}
    del tensors["model.norm.weight"]
    write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(ConvertError, match=r"missing tensor model\.norm\.weight \(expected shape \[32\]\)"):
        from_hf(tmp_path)


def test_cli_hf_to_flax_to_hf(tmp_path, capsys) -> None:
    model = _randomize(CASES["glm4"]())
    _save(model, tmp_path / "hf")
    assert main(["hf2flax", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "flax")]) == 0
    cfg, _ = load_flax(tmp_path / "flax")
    assert cfg.family == "glm4" and cfg.post_norms
    assert main(["flax2hf", "--flax", str(tmp_path / "flax"), "--out", str(tmp_path / "hf2")]) == 0
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", dtype=torch.float32)
    tokens = _tokens()
    np.testing.assert_array_equal(_torch_logits(model, tokens), _torch_logits(again, tokens))
    assert main(["hf2flax", "--hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["llama3_scaling", "qwen2_tied", "glm4"])
def test_bfloat16_error_no_worse_than_transformers_bfloat16(case: str, tmp_path) -> None:
    """bf16 numerics: both implementations round differently, so each is compared to the fp32 logits; ours
    (bf16 weights and activations) must not drift further from them than transformers' bf16 model does."""
    model = _randomize(CASES[case]())
    _save(model, tmp_path)
    tokens = _tokens()
    exact = _torch_logits(model, tokens)
    theirs = _torch_logits(model.to(torch.bfloat16), tokens)
    cfg, params = from_hf(tmp_path, param_dtype="bfloat16", dtype="bfloat16", attention_backend="blockwise",
                          attention_block_size=8)
    ours = np.asarray(forward(cfg, params, jnp.asarray(tokens)), np.float32)
    err_theirs = float(np.abs(theirs - exact).max())
    err_ours = float(np.abs(ours - exact).max())
    assert err_theirs > 0  # the comparison means something only if bf16 changed their logits at all
    assert err_ours <= 2.0 * err_theirs, f"bf16 logit error {err_ours:.3g} vs transformers' {err_theirs:.3g}"

"""Hugging Face safetensors <-> lr_jax params, both directions, for the Llama, Qwen2 and GLM-4 families.

    cfg, params = from_hf("path/to/hf_dir")          # LlamaForCausalLM, Qwen2ForCausalLM, GlmForCausalLM,
                                                    # Glm4ForCausalLM, ChatGLM remote-code (glm-4-9b) layout
    to_hf(cfg, params, "out_dir")                    # config.json + model.safetensors (sharded if large)

CLI::

    python -m lr_jax.convert hf2flax --hf HF_DIR --out FLAX_DIR [--dtype bfloat16]
    python -m lr_jax.convert flax2hf --flax FLAX_DIR --out HF_DIR [--dtype bfloat16] [--max-shard-mb 5000]

A Flax dir holds `model_config.json` (ModelConfig.to_dict), `params/` (an orbax checkpoint of the param tree)
and, when the HF dir had them, the tokenizer files under `tokenizer/`.

Safetensors are read and written with a small NumPy implementation of the format (ml_dtypes gives
bfloat16), so conversion needs neither torch nor a GPU, and tensors are memory-mapped while reading.

Every input error is a `ConvertError` (an `LrJaxError`) naming the file, tensor or field and what was
expected; the CLI prints it as one ``error:`` line and exits 2, checking `--out` and its options before any
tensor is read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from lr_jax.errors import LrJaxError, exit_code
from lr_jax.io import jsonl
from lr_jax.model.config import ConfigError, ModelConfig, RopeScaling

# ----------------------------------------------------------------------------------------------- errors


class ConvertError(LrJaxError, ValueError):
    """A checkpoint cannot be converted; the message names the file, tensor and expected shape."""


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Raise ConvertError unless `path` is, or can be created as, a directory we can write into.

    Called before any work, so a long conversion (or sampling run) never ends in a write error. A missing
    directory is not created here: the nearest existing ancestor is checked instead, so a run that fails
    later for another reason leaves nothing behind.
    """
    if "://" in str(path):
        # Path() would fold "gs://b/x" into the local relative dir "gs:/b/x" and write there silently.
        raise ConvertError(f"{flag} {path}: must be a local path (URLs such as gs:// are not supported)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{flag} {out}: exists and is not a directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConvertError(f"{flag} {out}: cannot create it, {probe} is a file")
    _check_can_create_in(probe, f"{flag} {out}")
    return out


def _check_can_create_in(directory: Path, what: str) -> None:
    """Create and remove a temp file in `directory` (`os.access` trusts root even on read-only mounts)."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".lr_jax_write_check_")
    except OSError as e:
        raise ConvertError(f"{what}: not writable ({e.strerror or e} in {directory})") from None
    os.close(fd)
    os.unlink(name)


# ------------------------------------------------------------------------------------ safetensors I/O

_ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


_FLOAT_ST_DTYPES = ("BF16", "F16", "F32", "F64")  # what a weight may be stored as


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-mapped (read-only) tensors of one .safetensors file; copy them before overwriting the file.

    The header is checked against the file before any tensor is viewed: a truncated file, a header that is
    not the safetensors layout, or a tensor whose byte range does not match its dtype and shape is a
    ConvertError naming the file and the tensor (NumPy would only say "cannot reshape array").
    """
    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path}: is a directory, not a safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            header_len = int.from_bytes(head, "little")
            if len(head) < 8 or header_len > size - 8:
                raise ConvertError(
                    f"{path}: not a safetensors file or truncated ({size} bytes; the first 8 bytes give a "
                    f"header of {header_len} bytes)"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not a safetensors file (bad header: {e})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: not a safetensors file (header is a JSON {type(header).__name__}, "
                           "expected an object)")
    data_size = size - 8 - header_len
    entries = {n: _tensor_entry(path, n, info) for n, info in header.items() if n != "__metadata__"}
    need = max((end for *_, end in entries.values()), default=0)
    if need > data_size:
        # Name the first tensor (in file order) that the cut reaches: the one a reader would fail on.
        name, (dtype, shape, start, end) = min(
            ((n, e) for n, e in entries.items() if e[3] > data_size), key=lambda item: item[1][2]
        )
        raise ConvertError(
            f"{path}: truncated: tensor {name} ({_ST_NAMES[dtype]} {list(shape)}) needs bytes [{start}, "
            f"{end}) of the data section, which has {data_size} (expected a file of {8 + header_len + need} "
            f"bytes, got {size})"
        )
    # np.memmap refuses an empty range, so a file of only empty tensors gets an empty buffer instead.
    if data_size:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    else:
        data = np.zeros(0, np.uint8)
    return {name: data[a:b].view(dtype).reshape(shape) for name, (dtype, shape, a, b) in entries.items()}


def _tensor_entry(path: Path, name: str, info: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, checked: known dtype, byte range = dtype x shape."""
    def bad(why: str) -> ConvertError:
        return ConvertError(f"{path}: tensor {name}: bad header entry {info!r} ({why})")

    if not isinstance(info, dict):
        raise bad("expected an object with dtype, shape, data_offsets")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise bad(f"no {key!r}")
    if not isinstance(info["dtype"], str) or info["dtype"] not in _ST_DTYPES:
        raise ConvertError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    dtype = _ST_DTYPES[info["dtype"]]
    shape, offsets = info["shape"], info["data_offsets"]

    def ints(v: Any) -> bool:
        return isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)

    if not ints(shape):
        raise bad("shape must be a list of non-negative ints")
    if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise bad("data_offsets must be [start, end] with 0 <= start <= end")
    start, end = offsets
    want = math.prod(shape) * dtype.itemsize
    if end - start != want:
        raise ConvertError(
            f"{path}: tensor {name} has {end - start} bytes, expected {want} for dtype {info['dtype']} "
            f"shape {shape}"
        )
    return dtype, tuple(shape), start, end


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write tensors (C order, little endian) with `{"format": "pt"}` metadata, as transformers expects."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _ST_NAMES:
            raise ConvertError(f"{path}: cannot write tensor {name} of dtype {arr.dtype}")
        header[name] = {
            "dtype": _ST_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())


def _load_hf_tensors(hf_dir: Path) -> dict[str, tuple[np.ndarray, Path]]:
    """All tensors of an HF checkpoint dir: sharded (index json) or single/multiple safetensors files."""
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"{index}: invalid JSON ({e})") from None
        except (KeyError, TypeError):
            raise ConvertError(f"{index}: field 'weight_map' is missing") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ConvertError(f"{index}: field 'weight_map' must map tensor names to file names")
        files = sorted({hf_dir / f for f in weight_map.values()})
    else:
        files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{hf_dir}: no *.safetensors files (PyTorch .bin checkpoints are not supported)")
    out: dict[str, tuple[np.ndarray, Path]] = {}
    for file in files:
        if not file.exists():
            raise ConvertError(f"{index}: lists {file.name}, which does not exist")
        for name, arr in read_safetensors(file).items():
            if name in out:
                # Which copy would win depends on file order: refuse instead of picking one silently.
                raise ConvertError(f"{file}: tensor {name} is also in {out[name][1]}")
            out[name] = (arr, file)
    return out


class _Tensors:
    """Name -> array lookup that checks shapes, tracks what was used and reports the file in errors."""

    IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq", "masked_bias", "attn.bias")

    def __init__(self, hf_dir: Path):
        self.hf_dir = hf_dir
        self.tensors = _load_hf_tensors(hf_dir)
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            files = sorted({str(f) for _, f in self.tensors.values()})
            where = files[0] if len(files) == 1 else str(self.hf_dir)  # the file, when there is only one
            raise ConvertError(f"{where}: missing tensor {name} (expected shape {list(shape)})")
        arr, file = self.tensors[name]
        if tuple(arr.shape) != tuple(shape):
            raise ConvertError(
                f"{file}: tensor {name} has shape {list(arr.shape)}, expected {list(shape)} from config.json"
            )
        if _ST_NAMES[arr.dtype] not in _FLOAT_ST_DTYPES:
            # astype(float32) would turn integer or bool data into "weights" without a word.
            raise ConvertError(
                f"{file}: tensor {name} has dtype {_ST_NAMES[arr.dtype]}, expected a floating-point dtype "
                f"({', '.join(_FLOAT_ST_DTYPES)})"
            )
        self.used.add(name)
        return arr

    def check_all_used(self) -> None:
        left = sorted(n for n in self.tensors if n not in self.used and not n.endswith(self.IGNORED_SUFFIXES))
        if left:
            raise ConvertError(
                f"{self.hf_dir}: unexpected tensor(s) not used by the conversion: {left[:8]}"
                + (f" ... ({len(left)} total)" if len(left) > 8 else "")
            )


# --------------------------------------------------------------------------------- HF config -> cfg

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


# ------------------------------------------------------------------------------- HF tensors -> params


def _stack(per_layer: Callable[[int], np.ndarray], n: int, dtype: np.dtype) -> np.ndarray:
    return np.stack([np.asarray(per_layer(i), dtype=np.float32).astype(dtype) for i in range(n)])


def _hf_names(family: str) -> dict[str, str]:
    """HF tensor name templates ({i} = layer) for the transformers-native families."""
    p = "model.layers.{i}."
    names = {
        "embed": "model.embed_tokens.weight",
        "final_norm": "model.norm.weight",
        "lm_head": "lm_head.weight",
        "attn_norm": p + "input_layernorm.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "q": p + "self_attn.q_proj.",
        "k": p + "self_attn.k_proj.",
        "v": p + "self_attn.v_proj.",
        "o": p + "self_attn.o_proj.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
        "gate_up": p + "mlp.gate_up_proj.weight",
        "post_attn_norm": p + "post_self_attn_layernorm.weight",
        "post_mlp_norm": p + "post_mlp_layernorm.weight",
    }
    return names


def _params_from_tensors(cfg: ModelConfig, t: _Tensors, dtype: np.dtype) -> dict[str, Any]:
    D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    hq, hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    chatglm = cfg.family == "chatglm"
    fused_mlp = cfg.family in ("glm", "glm4", "chatglm")
    n = _hf_names(cfg.family)
    if chatglm:
        c = "transformer.encoder.layers.{i}."
        n.update(
            embed="transformer.embedding.word_embeddings.weight",
            final_norm="transformer.encoder.final_layernorm.weight",
            lm_head="transformer.output_layer.weight",
            attn_norm=c + "input_layernorm.weight",
            mlp_norm=c + "post_attention_layernorm.weight",
            qkv=c + "self_attention.query_key_value.",
            o=c + "self_attention.dense.weight",
            gate_up=c + "mlp.dense_h_to_4h.weight",
            down=c + "mlp.dense_4h_to_h.weight",
        )
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
    tensors = _Tensors(hf_dir)
    params = _params_from_tensors(
        cfg, tensors, np.dtype(ml_dtypes.bfloat16 if param_dtype == "bfloat16" else param_dtype)
    )
    tensors.check_all_used()
    return cfg, params


def read_hf_config(path: str | Path, **overrides: Any) -> ModelConfig:
    """The ModelConfig of an HF checkpoint dir from its config.json alone (no tensors are read)."""
    hf_dir = Path(path)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"{hf_dir}: no config.json")
    hf = jsonl.read_json_object(config_path, error=ConvertError)
    return config_from_hf(hf, str(config_path), **overrides)


# ------------------------------------------------------------------------------- params -> HF


def _hf_config(cfg: ModelConfig, torch_dtype: str) -> dict[str, Any]:
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


def _hf_tensors(
    cfg: ModelConfig, params: dict[str, Any], dtype: np.dtype
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, torch-layout array) pairs for `params`."""
    D = cfg.hidden_size
    a = lambda x: np.asarray(x, np.float32).astype(dtype)
    lp = params["layers"]
    n = _hf_names(cfg.family)
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
    hf_cfg = _hf_config(cfg, dtype)
    params = _to_numpy(params)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    total = 0
    for name, arr in _hf_tensors(cfg, params, np_dtype):
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


# ------------------------------------------------------------------------------- Flax (orbax) dirs

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "tokenizer.tiktoken",
    "generation_config.json",
)


def save_flax(cfg: ModelConfig, params: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `model_config.json` + an orbax checkpoint of `params` under `out_dir/params`."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(out / "params", params, force=True)
    ckpt.wait_until_finished()
    return out


def read_flax_config(path: str | Path, **overrides: Any) -> ModelConfig:
    """The ModelConfig of an lr_jax dir, checking that `params/` is there too; no weights are read."""
    src = Path(path).absolute()
    cfg_path = src / "model_config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{src}: no model_config.json (not a directory written by lr_jax.convert)")
    data = jsonl.read_json_object(cfg_path, error=ConvertError)
    try:
        cfg = ModelConfig.from_dict({**data, **overrides})
    except (ConfigError, TypeError, ValueError) as e:
        raise ConvertError(f"{cfg_path}: {e}") from None
    if not (src / "params").is_dir():
        raise ConvertError(f"{src}: no params/ directory (the orbax checkpoint of the weights)")
    return cfg


def load_flax(path: str | Path, **overrides: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """Inverse of `save_flax`; `overrides` change run-time config fields (dtype, attention_backend, ...).

    The restored tree must have exactly the tensors and shapes `model_config.json` implies: a config from
    another model would otherwise go on to be exported (or sampled) as a broken checkpoint.
    """
    import orbax.checkpoint as ocp

    from lr_jax.model import param_shapes

    src = Path(path).absolute()
    cfg = read_flax_config(src, **overrides)
    try:
        params = ocp.StandardCheckpointer().restore(src / "params")
    except Exception as e:  # orbax / tensorstore raise many types for a damaged checkpoint: report as one
        msg = " ".join(str(e).split())[:300]  # one line, however the library formats it
        raise ConvertError(f"{src / 'params'}: cannot read the orbax checkpoint ({type(e).__name__}: {msg})"
                           ) from None
    _check_tree(params, param_shapes(cfg), f"{src / 'params'}", f"{src / 'model_config.json'}")
    return cfg, params


def _check_tree(params: Any, shapes: Any, where: str, source: str) -> None:
    """Raise ConvertError for the first tensor missing, extra or of the wrong shape in `params`."""
    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(tree, dict):
            return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}/").items()}
        return {prefix.rstrip("/"): tree}

    got = flat(params)
    want = flat(shapes)
    for name, shape in want.items():
        if name not in got:
            raise ConvertError(f"{where}: missing tensor {name} (expected shape {list(shape)} from {source})")
        if tuple(np.shape(got[name])) != tuple(shape):
            raise ConvertError(f"{where}: tensor {name} has shape {list(np.shape(got[name]))}, expected "
                               f"{list(shape)} from {source}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ConvertError(f"{where}: unexpected tensor(s) {extra[:8]} for the model in {source}")


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            dst.mkdir(parents=True, exist_ok=True)
            if not ((dst / name).exists() and os.path.samefile(src / name, dst / name)):
                shutil.copy2(src / name, dst / name)  # (copying a file onto itself raises SameFileError)
            copied.append(name)
    return copied


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lr_jax.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf2flax", help="HF safetensors dir -> lr_jax (orbax) dir")
    a.add_argument("--hf", required=True, help="dir with config.json and *.safetensors")
    a.add_argument("--out", required=True, help="output dir (model_config.json, params/, tokenizer/)")
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored param dtype")
    b = sub.add_parser("flax2hf", help="lr_jax (orbax) dir -> HF safetensors dir")
    b.add_argument("--flax", required=True, help="dir written by hf2flax or by training")
    b.add_argument("--out", required=True, help="output HF dir")
    b.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    b.add_argument("--max-shard-mb", type=int, default=5000, help="split safetensors above this size")
    b.add_argument("--tokenizer-from", default=None, help="copy tokenizer files from this dir")
    args = parser.parse_args(argv)
    return exit_code(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    """The CLI body: every input (paths, sizes) is checked before any tensor is read or written."""
    if args.command == "hf2flax":
        check_output_dir(args.out)
        cfg, params = from_hf(args.hf, param_dtype=args.dtype)
        out = save_flax(cfg, params, args.out)
        copied = _copy_tokenizer(Path(args.hf), out / "tokenizer")
        n = sum(math.prod(np.shape(x)) for x in _leaves(params))
        print(f"wrote {out}: {cfg.family} {n / 1e6:.1f}M params; tokenizer files: {copied or 'none'}")
        return
    if args.max_shard_mb < 1:
        raise ConvertError(f"--max-shard-mb must be >= 1, got {args.max_shard_mb}")
    if args.tokenizer_from is not None:
        src = Path(args.tokenizer_from)
        if not src.is_dir():
            raise ConvertError(f"--tokenizer-from {src}: not a directory")
        if not any((src / name).exists() for name in TOKENIZER_FILES):
            # Asked for explicitly, so an HF dir without a tokenizer must not pass as "tokenizer files: none".
            raise ConvertError(f"--tokenizer-from {src}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    check_output_dir(args.out)
    cfg, params = load_flax(args.flax)
    out = to_hf(cfg, params, args.out, dtype=args.dtype, max_shard_bytes=args.max_shard_mb * 2**20)
    src = Path(args.tokenizer_from) if args.tokenizer_from else Path(args.flax) / "tokenizer"
    copied = _copy_tokenizer(src, out)
    print(f"wrote {out}: {EXPORT_ARCH[cfg.family]}; tokenizer files: {copied or 'none'}")


def _leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


if __name__ == "__main__":
    sys.exit(main())

"""GGUF (llama.cpp) files -> lr_jax: the llama architecture, any quantization the `gguf` package dequantizes.

    cfg, params = from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")     # float32 NumPy params
    write_tokenizer("....gguf", "out/tokenizer")                   # tokenizer.json + chat template + EOS

The metadata becomes an HF `config.json` dict (`GGUF_CONFIG` below) and the tensors are dequantized to float32
under their HF names (`names.GGUF_TO_HF`), so the HF path (`hf.params_from_tensors`, `config_from_hf`) does
the rest: one conversion to trust, checked against transformers on the real file. llama.cpp stores q/k rows
in the interleaved rotary order; `_unpermute` restores the half-split order lr_jax and transformers use.

Reader: the `gguf` package (NumPy, memory-mapped; what transformers' own GGUF loader uses underneath), read
once. The tokenizer is rebuilt by transformers (`AutoTokenizer.from_pretrained(..., gguf_file=)`), the one
maintained GGUF -> `tokenizer.json` converter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lr_jax.convert.errors import ConvertError
from lr_jax.convert.hf_config import config_from_hf
from lr_jax.convert.names import GGUF_TO_HF
from lr_jax.model.config import ModelConfig

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF metadata key (after "<arch>.") -> HF config.json field.
GGUF_CONFIG: dict[str, str] = {
    "block_count": "num_hidden_layers",
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
GGUF_TOKEN_IDS: dict[str, str] = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}
REQUIRED = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")


class GGUFFile:
    """One opened GGUF file: its metadata (plain Python values) and its tensors, checked against its size."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.reader = _open(self.path)
        self.fields = self.reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        """Metadata value `key` (str, number or list), `default` when absent."""
        field = self.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception as e:  # a damaged value: name the field rather than the reader's internals
            raise ConvertError(
                f"{self.path}: field {key}: cannot be read ({type(e).__name__}: {e})"
            ) from None

    @property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConvertError(
                f"{self.path}: field general.architecture is {arch!r}; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        return arch

    def hf_config(self) -> dict[str, Any]:
        """The HF `config.json` (LlamaForCausalLM) this file's metadata describes."""
        arch = self.architecture
        for key in REQUIRED:
            if f"{arch}.{key}" not in self.fields:
                raise ConvertError(f"{self.path}: missing field {arch}.{key}")
        hf: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        for key, name in GGUF_CONFIG.items():
            value = self.get(f"{arch}.{key}")
            if value is not None:
                hf[name] = value
        for key, name in GGUF_TOKEN_IDS.items():
            hf[name] = self.get(key)
        if "vocab_size" not in hf:  # older files: the vocabulary is the token list
            hf["vocab_size"] = (
                len(self.fields["tokenizer.ggml.tokens"].data)
                if ("tokenizer.ggml.tokens" in self.fields)
                else self._embed_rows()
            )
        hf["tie_word_embeddings"] = not any(t.name == "output.weight" for t in self.reader.tensors)
        heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
        rot = self.get(f"{arch}.rope.dimension_count")
        head_dim = hf.get("head_dim") or hidden // heads
        if rot is not None and rot != head_dim:
            raise ConvertError(
                f"{self.path}: field {arch}.rope.dimension_count is {rot}, expected the head dim "
                f"{head_dim} (partial rotary is not supported for llama)"
            )
        scaling = self.get(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none") or any(t.name == "rope_freqs.weight" for t in self.reader.tensors):
            raise ConvertError(
                f"{self.path}: field {arch}.rope.scaling.type ({scaling!r}) / tensor rope_freqs: "
                "rope scaling from GGUF is not supported"
            )
        return hf

    def _embed_rows(self) -> int:
        for t in self.reader.tensors:
            if t.name == "token_embd.weight":
                return int(t.shape[-1])
        raise ConvertError(f"{self.path}: missing tensor token_embd.weight")

    def hf_tensors(self, num_heads: int, num_kv_heads: int) -> dict[str, np.ndarray]:
        """Every tensor dequantized to float32, `[out, in]` (torch layout), under its HF name."""
        from gguf import GGMLQuantizationType, dequantize

        float_types = {GGMLQuantizationType.F32, GGMLQuantizationType.F16}
        patterns = [
            (re.compile(re.escape(k).replace(r"\{i\}", r"(\d+)") + "$"), v) for k, v in GGUF_TO_HF.items()
        ]
        out: dict[str, np.ndarray] = {}
        for t in self.reader.tensors:
            for pattern, hf_name in patterns:
                m = pattern.match(t.name)
                if m:
                    name = hf_name.format(i=int(m.group(1))) if m.groups() else hf_name
                    break
            else:
                raise ConvertError(
                    f"{self.path}: tensor {t.name}: not a llama tensor this reader knows "
                    f"({', '.join(GGUF_TO_HF)})"
                )
            qtype = GGMLQuantizationType(t.tensor_type)
            if qtype not in float_types and not _can_dequantize(qtype):
                raise ConvertError(
                    f"{self.path}: tensor {t.name}: type {qtype.name} is not a supported weight "
                    "quantization (F32, F16, BF16, Q4_0 ... Q8_0, K-quants, IQ-quants)"
                )
            try:
                arr = np.asarray(dequantize(t.data, qtype), np.float32)
            except Exception as e:
                raise ConvertError(
                    f"{self.path}: tensor {t.name}: cannot dequantize {qtype.name} ({type(e).__name__}: {e})"
                ) from None
            # GGUF lists dims fastest-first; the array is [rows, cols] = torch's [out, in].
            shape = tuple(int(d) for d in reversed(t.shape))
            if arr.shape != shape:
                arr = arr.reshape(shape)
            if t.name.endswith("attn_q.weight"):
                arr = _unpermute(arr, num_heads)
            elif t.name.endswith("attn_k.weight"):
                arr = _unpermute(arr, num_kv_heads)
            out[name] = arr
        return out


def _can_dequantize(qtype: Any) -> bool:
    import gguf.quants

    return qtype.name == "BF16" or (hasattr(gguf.quants, qtype.name) and qtype.name not in ("Q8_K",))


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, interleaved (x0,y0,x1,y1,...) -> halves (x..., y...).

    w: [heads * head_dim, D] -> the same shape, rows reordered.
    """
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open(path: Path) -> Any:
    """The gguf reader on `path`, once the file is known to exist, start with GGUF and be complete."""
    if not path.exists():
        raise ConvertError(f"{path}: does not exist")
    if path.is_dir():
        raise ConvertError(f"{path}: is a directory, not a GGUF file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ConvertError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = _checked_reader_class()(path)
    except ConvertError as e:
        raise ConvertError(f"{path}: {e}") from None
    except Exception as e:  # the reader fails on a cut header with IndexError/ValueError: say what it means
        msg = " ".join(str(e).split())[:200]
        raise ConvertError(
            f"{path}: truncated or damaged GGUF header ({size} bytes; {type(e).__name__}: {msg})"
        ) from None
    return reader


def _checked_reader_class() -> type:
    """`gguf.GGUFReader` that checks every tensor's type and byte range before viewing it.

    The plain reader turns a truncated file into "cannot reshape array of size 326 into shape (576,)" and an
    unknown type id into an enum error; this one names the tensor.
    """
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
    except ImportError:
        raise ConvertError("reading GGUF needs the `gguf` package (pip install 'lr_jax[real]')") from None

    class CheckedReader(GGUFReader):
        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            size = len(self.data)
            for field in fields:
                _, name_data, _, dims, raw_dtype, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                try:
                    qtype = GGMLQuantizationType(int(raw_dtype[0]))
                except ValueError:
                    raise ConvertError(f"tensor {name}: unknown quantization type id {int(raw_dtype[0])}"
                                       ) from None
                block, type_size = GGML_QUANT_SIZES[qtype]
                start = int(start_offs + offset[0])
                end = start + int(np.prod(dims)) * type_size // block
                if end > size:
                    raise ConvertError(f"truncated: tensor {name} ({qtype.name}) needs bytes "
                                       f"[{start}, {end}), the file has {size}")
            super()._build_tensors(start_offs, fields)

    return CheckedReader


def from_gguf(path: str | Path, param_dtype: str = "float32", **overrides: Any) -> tuple[ModelConfig, dict]:
    """(ModelConfig, NumPy params) of a GGUF file: dequantized, then converted as an HF checkpoint is."""
    import ml_dtypes

    from lr_jax.convert.hf import params_from_tensors
    from lr_jax.convert.safetensors import Tensors

    f = GGUFFile(path)
    hf = f.hf_config()
    cfg = config_from_hf(hf, str(f.path), param_dtype=param_dtype, source=f"gguf:{f.path.name}", **overrides)
    arrays = f.hf_tensors(cfg.num_heads, cfg.num_kv_heads)
    tensors = Tensors(f.path, {name: (arr, f.path) for name, arr in arrays.items()})
    params = params_from_tensors(
        cfg, tensors, np.dtype(ml_dtypes.bfloat16 if param_dtype == "bfloat16" else param_dtype)
    )
    tensors.check_all_used()
    return cfg, params


def write_tokenizer(path: str | Path, out_dir: str | Path) -> list[str]:
    """Rebuild the tokenizer of GGUF `path` into `out_dir` (tokenizer.json, chat template, EOS ids).

    Returns the file names written. A GGUF whose tokenizer transformers cannot rebuild is a ConvertError
    naming the tokenizer fields.
    """
    path, out = Path(path).absolute(), Path(out_dir)
    f = GGUFFile(path)
    if "tokenizer.ggml.tokens" not in f.fields:
        raise ConvertError(f"{path}: missing field tokenizer.ggml.tokens (no tokenizer in this GGUF)")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        msg = " ".join(str(e).split())[:200]
        raise ConvertError(
            f"{path}: field tokenizer.ggml.model ({f.get('tokenizer.ggml.model')!r}): the tokenizer "
            f"cannot be rebuilt ({type(e).__name__}: {msg})"
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    template = f.get("tokenizer.chat_template")
    if template and not (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").write_text(template)
    eos = f.get("tokenizer.ggml.eos_token_id")
    if eos is not None:  # what generation stops on; lr_jax.sample reads it beside the tokenizer
        gen = {
            "bos_token_id": f.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": eos,
            "pad_token_id": f.get("tokenizer.ggml.padding_token_id"),
        }
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return sorted(p.name for p in out.iterdir())

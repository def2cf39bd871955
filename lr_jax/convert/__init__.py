"""Checkpoints <-> lr_jax params: HF safetensors (Llama, Qwen2, GLM-4 families, both directions), GGUF files
(llama architecture, read), and the lr_jax model dir.

    cfg, params = load("path")                        # HF dir, lr_jax dir or .gguf (converted once, cached)
    cfg, params = from_hf("path/to/hf_dir")           # LlamaForCausalLM, Qwen2ForCausalLM, GlmForCausalLM,
                                                      # Glm4ForCausalLM, ChatGLM remote-code (glm-4-9b) layout
    to_hf(cfg, params, "out_dir")                     # config.json + model.safetensors (sharded if large)

A Flax (lr_jax) dir holds `model_config.json` (ModelConfig.to_dict), `params/` (an orbax checkpoint of the
param tree) and, when the source had them, the tokenizer files under `tokenizer/`.

Modules: `errors` (ConvertError, the --out check), `safetensors` (the file format in NumPy), `hf_config`
(config.json <-> ModelConfig), `names` (tensor-name tables per layout), `hf` (HF tensors <-> params),
`flax_dir` (the lr_jax dir), `gguf` (GGUF reader), `sources` (`load`: one entry for every source),
`packaged` (models shipped as pip packages), `__main__` (the CLI; imported only by `main`). Importing this
package loads no CLI, no orbax, no torch and no gguf.

Every input error is a `ConvertError` (an `LrJaxError`) naming the file, tensor or field and what was
expected; the CLI prints it as one ``error:`` line and exits 2, checking `--out` and its options before any
tensor is read.
"""

from __future__ import annotations

from lr_jax.convert.errors import ConvertError, check_output_dir
from lr_jax.convert.flax_dir import (
    TOKENIZER_FILES,
    TOKENIZER_VOCAB_FILES,
    load_flax,
    read_flax_config,
    save_flax,
)
from lr_jax.convert.hf import from_hf, to_hf
from lr_jax.convert.hf_config import ARCHITECTURES, EXPORT_ARCH, config_from_hf, read_hf_config
from lr_jax.convert.packaged import smollm2_gguf
from lr_jax.convert.safetensors import read_safetensors, write_safetensors
from lr_jax.convert.sources import CACHE_ENV, load, resolve, tokenizer_dir

__all__ = [
    "ARCHITECTURES",
    "CACHE_ENV",
    "EXPORT_ARCH",
    "TOKENIZER_FILES",
    "TOKENIZER_VOCAB_FILES",
    "ConvertError",
    "check_output_dir",
    "config_from_hf",
    "from_gguf",
    "from_hf",
    "gguf_tokenizer",
    "load",
    "load_flax",
    "main",
    "read_flax_config",
    "read_hf_config",
    "read_safetensors",
    "resolve",
    "save_flax",
    "smollm2_gguf",
    "to_hf",
    "tokenizer_dir",
    "write_safetensors",
]


def main(argv: list[str] | None = None) -> int:
    """The `python -m lr_jax.convert` CLI (loaded on call, so importing the library does not load it)."""
    from lr_jax.convert.__main__ import main as cli_main

    return cli_main(argv)


def from_gguf(path, param_dtype: str = "float32", **overrides):  # type: ignore[no-untyped-def]
    """`lr_jax.convert.gguf.from_gguf` (imported on call: reading GGUF needs the optional `gguf` package)."""
    from lr_jax.convert.gguf import from_gguf as _from_gguf

    return _from_gguf(path, param_dtype, **overrides)


def gguf_tokenizer(path, out_dir):  # type: ignore[no-untyped-def]
    """`lr_jax.convert.gguf.write_tokenizer`: rebuild a GGUF file's tokenizer into `out_dir`."""
    from lr_jax.convert.gguf import write_tokenizer

    return write_tokenizer(path, out_dir)

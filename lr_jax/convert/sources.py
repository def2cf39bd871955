"""One entry point for every model source: an HF dir, an lr_jax dir or a `.gguf` file.

    cfg, params = load("SmolLM2-135M-Instruct.Q4_1.gguf")    # or an HF dir, or an lr_jax dir
    resolve("x.gguf")                                        # the lr_jax dir it was converted into
    tokenizer_dir("x.gguf")                                  # where its tokenizer files are

A `.gguf` file is converted once (weights dequantized to float32, tokenizer rebuilt) into
`$LR_JAX_CACHE/gguf/<stem>-<key>/` (default `~/.cache/lr_jax`), where key hashes the file's size, mtime and
contents, and that lr_jax dir is reused by every later run. The conversion writes into a temp dir renamed
into place, so an interrupted one leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lr_jax.convert.errors import ConvertError

CACHE_ENV = "LR_JAX_CACHE"
_resolved: dict[tuple[str, int, int], Path] = {}  # (path, size, mtime_ns) -> cache dir, per process


def cache_root() -> Path:
    """`$LR_JAX_CACHE`, else `~/.cache/lr_jax`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lr_jax")


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def _key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def resolve(path: str | Path) -> Path:
    """The dir to read `path` from: itself for a dir, the cached lr_jax conversion for a `.gguf` file."""
    p = Path(path)
    if not is_gguf(p):
        return p
    if not p.is_file():
        raise ConvertError(f"{p}: " + ("is not a file" if p.exists() else "does not exist"))
    st = p.stat()
    memo = (str(p.absolute()), st.st_size, st.st_mtime_ns)
    if memo in _resolved and _resolved[memo].is_dir():
        return _resolved[memo]
    out = cache_root() / "gguf" / f"{p.stem}-{_key(p)}"
    if not (out / "model_config.json").is_file():
        _convert_gguf(p, out)
    _resolved[memo] = out
    return out


def _convert_gguf(src: Path, out: Path) -> None:
    from lr_jax.convert.flax_dir import save_flax
    from lr_jax.convert.gguf import from_gguf, write_tokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    cfg, params = from_gguf(src)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        write_tokenizer(src, tmp / "tokenizer")
        save_flax(cfg, params, tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not (out / "model_config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(path: str | Path, param_dtype: str | None = None, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """(ModelConfig, NumPy params) of an HF dir, an lr_jax dir or a `.gguf` file.

    param_dtype: the dtype of the returned params (default: as stored; float32 for HF dirs and GGUF files);
    overrides: ModelConfig run-time fields (dtype, attention_backend, ...).
    """
    from lr_jax.convert.flax_dir import load_flax
    from lr_jax.convert.hf import from_hf

    d = resolve(path)
    if (d / "model_config.json").is_file():
        if param_dtype is not None:
            overrides["param_dtype"] = param_dtype
        cfg, params = load_flax(d, **overrides)
        if param_dtype is not None:
            import ml_dtypes

            dt = np.dtype(ml_dtypes.bfloat16 if param_dtype == "bfloat16" else param_dtype)
            params = _cast(params, dt)
        return cfg, params
    if (d / "config.json").is_file():
        return from_hf(d, param_dtype=param_dtype or "float32", **overrides)
    if not d.is_dir():
        raise ConvertError(
            f"{path}: " + ("not a directory or .gguf file" if d.exists() else "does not exist")
        )
    raise ConvertError(f"{path}: neither model_config.json (lr_jax) nor config.json (HF) found")


def _cast(tree: Any, dtype: np.dtype) -> Any:
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    return np.asarray(tree).astype(dtype)


def tokenizer_dir(path: str | Path) -> Path:
    """Where the tokenizer of model `path` lives: `<dir>/tokenizer` when present, else the dir itself."""
    d = resolve(path)
    return d / "tokenizer" if (d / "tokenizer").is_dir() else d

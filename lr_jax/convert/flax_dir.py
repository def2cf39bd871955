"""The lr_jax model dir: `model_config.json` + `params/` (an orbax checkpoint) + optional `tokenizer/`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lr_jax.convert.errors import ConvertError
from lr_jax.io import jsonl
from lr_jax.model.config import ConfigError, ModelConfig

# What is copied beside converted weights (tokenizer, chat template, generation EOS ids).
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
# The files that define a tokenizer's vocabulary: a dir without any of them has no tokenizer.
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")


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


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            dst.mkdir(parents=True, exist_ok=True)
            if not ((dst / name).exists() and os.path.samefile(src / name, dst / name)):
                shutil.copy2(src / name, dst / name)  # (copying a file onto itself raises SameFileError)
            copied.append(name)
    return copied


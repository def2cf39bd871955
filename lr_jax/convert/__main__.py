"""`python -m lr_jax.convert` (console script `lr-convert`): hf2flax, flax2hf, gguf2flax.

    python -m lr_jax.convert hf2flax --hf HF_DIR --out FLAX_DIR [--dtype bfloat16]
    python -m lr_jax.convert flax2hf --flax FLAX_DIR --out HF_DIR [--dtype bfloat16] [--max-shard-mb 5000]
    python -m lr_jax.convert gguf2flax --gguf FILE.gguf --out FLAX_DIR [--dtype bfloat16]

Every input (paths, sizes) is checked before any tensor is read or written; an error is one `error:` line
and exit 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from lr_jax.convert.errors import ConvertError, check_output_dir
from lr_jax.convert.flax_dir import TOKENIZER_FILES, copy_tokenizer, load_flax, save_flax
from lr_jax.convert.hf import from_hf, to_hf
from lr_jax.convert.hf_config import EXPORT_ARCH
from lr_jax.errors import exit_code
from lr_jax.options import OneLineParser

DESCRIPTION = "Hugging Face safetensors / GGUF <-> lr_jax params, for the Llama, Qwen2 and GLM-4 families."


def main(argv: list[str] | None = None) -> int:
    # One-line usage errors (no usage dump), as every other CLI of the project (lr_jax.options).
    parser = OneLineParser(prog="python -m lr_jax.convert", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
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
    g = sub.add_parser("gguf2flax", help="GGUF file (llama.cpp) -> lr_jax (orbax) dir, tokenizer included")
    g.add_argument("--gguf", required=True, help="a .gguf file (llama architecture, any gguf quantization)")
    g.add_argument("--out", required=True, help="output dir (model_config.json, params/, tokenizer/)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored param dtype")
    args = parser.parse_args(argv)
    return exit_code(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.command == "hf2flax":
        check_output_dir(args.out)
        cfg, params = from_hf(args.hf, param_dtype=args.dtype)
        out = save_flax(cfg, params, args.out)
        copied = copy_tokenizer(Path(args.hf), out / "tokenizer")
        n = _count(params) / 1e6
        print(f"wrote {out}: {cfg.family} {n:.1f}M params; tokenizer files: {copied or 'none'}")
        return
    if args.command == "gguf2flax":
        from lr_jax.convert.gguf import from_gguf, write_tokenizer

        check_output_dir(args.out)
        cfg, params = from_gguf(args.gguf, param_dtype=args.dtype)
        copied = write_tokenizer(args.gguf, Path(args.out) / "tokenizer")
        out = save_flax(cfg, params, args.out)
        print(f"wrote {out}: {cfg.family} {_count(params) / 1e6:.1f}M params; tokenizer files: {copied}")
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
    copied = copy_tokenizer(src, out)
    print(f"wrote {out}: {EXPORT_ARCH[cfg.family]}; tokenizer files: {copied or 'none'}")


def _count(tree: object) -> int:
    if isinstance(tree, dict):
        return sum(_count(v) for v in tree.values())
    return math.prod(np.shape(tree))


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lr_jax.data.import_prefs --input FILE [--input FILE ...] --out DIR`: public preference sets
(JSONL / Parquet) into our preference records (`lr_jax.data.import_prefs`). The flags, ``--help`` and checks
come from `ImportOptions` (`lr_jax.options`); bad input is one ``error:`` line naming the file, the line or
row and the field, exit status 2."""

from __future__ import annotations

import sys

from lr_jax.data import import_prefs
from lr_jax.errors import exit_code
from lr_jax.options import OneLineParser, add_flags, from_args


def build_parser() -> OneLineParser:
    ap = OneLineParser(prog="python -m lr_jax.data.import_prefs",
                       description="Public preference sets (JSONL / Parquet rows with prompt, chosen, "
                                   "rejected) into preference records (docs/records-and-storage.md).")
    ap.add_argument("--input", action="append", required=True,
                    help="a JSONL or Parquet file (local or gs://); repeat for several, read in order")
    add_flags(ap, import_prefs.ImportOptions)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        opts = from_args(import_prefs.ImportOptions, args)
        meta = import_prefs.run(args.input, opts.out, num_shards=opts.num_shards,
                                compression=opts.compression, overwrite=opts.overwrite)
        n = meta.get("num_records", meta.get("counts", {}).get("pairs"))
        print(f"{'already written' if meta.get('skipped') else 'wrote'} {n} pairs to {opts.out}")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())

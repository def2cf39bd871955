"""``python -m judge.pairs``: the command line of best-vs-worst pairing (what is paired, tie rules and
commit semantics: `judge.pairs.build`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from judge.pairs.build import PairsOptions, run, summary
from lr_jax.errors import exit_code
from lr_jax.options import OneLineParser, add_flags, from_args


def build_parser() -> OneLineParser:
    """The ``judge.pairs`` flags; the selection/writing ones are generated from `PairsOptions`."""
    ap = OneLineParser(prog="python -m judge.pairs", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--scored", required=True, help="directory with scored.jsonl (or the file), local or gs://"
    )
    ap.add_argument("--prompts", default=None, help="prompts.jsonl (default: next to scored.jsonl)")
    ap.add_argument("--out", required=True, help="output directory, local or gs://bucket/path")
    add_flags(ap, PairsOptions)
    return ap


def _main(args: Any) -> int:
    meta = run(args.scored, args.out, prompts=args.prompts, options=from_args(PairsOptions, args))
    print(summary(meta, args.out))
    if not meta.get("num_records"):
        print(
            "warning: no pairs were written; check --min-responses / --min-gap and the failure counts",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m judge.pairs``: 0 committed (or already committed), 2 bad input (one ``error:`` line)."""
    args = build_parser().parse_args(argv)
    # every input error is an LrJaxError (PairsInputError, RecordError, storage errors): one line, exit 2
    return exit_code(lambda: _main(args))

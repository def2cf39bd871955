"""Best-vs-worst preference pairs from scored responses → preference records (``lr_jax.io.records``).

    python -m judge.pairs --scored DIR --prompts P.jsonl --out gs://bucket/path|local_dir \
        [--min-responses 5] [--min-gap 0.0] [--num-shards N] [--compression GZIP] [--overwrite]

Per prompt, among its responses with ``status == "scored"`` and a non-null reward:

- chosen = highest reward, rejected = lowest reward;
- ties are broken deterministically by response ``id`` (string order): among equal best rewards the smallest
  id is chosen, among equal worst rewards the largest id is rejected;
- the prompt is skipped (and counted) when it has fewer than ``--min-responses`` such responses, when best and
  worst rewards are equal (no preference to learn), or when the gap is below ``--min-gap``.

If ``scored.jsonl`` holds the same response ``id`` twice (a resumed scoring run), the later line wins.

Commit semantics (see ``lr_jax.io.records``): ``metadata.json`` is written last, create-only; it carries a
fingerprint of the inputs and options. A rerun with the same fingerprint is a no-op; a rerun after a crash (no
``metadata.json``) cleans up and rewrites; a different input into a committed directory needs ``--overwrite``.
"""

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

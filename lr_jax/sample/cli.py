"""The `python -m lr_jax.sample` command line: flags made from `SampleOptions`, one ``error:`` line."""

from __future__ import annotations

import json

from lr_jax.data.errors import DataError
from lr_jax.errors import exit_code
from lr_jax.options import OneLineParser, add_flags, from_args
from lr_jax.sample.options import SampleError, SampleOptions, one_line


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m lr_jax.sample", description="N responses per prompt from a local "
                      "checkpoint (or an inference engine: --engine openai), written as Samples JSONL "
                      "(docs/sampling.md).")
    # Bounds are checked by SampleOptions (one message format for the CLI and the Python API).
    add_flags(p, SampleOptions, check_bounds=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """The CLI: an input error (`LrJaxError`) is one ``error:`` line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        from lr_jax.sample.sampling import run

        try:
            stats = run(from_args(SampleOptions, args))
        except DataError as e:  # not an LrJaxError (lr_jax/data is not ours to change): report it as one
            raise SampleError(one_line(str(e))) from None
        print(json.dumps(stats.__dict__))

    return exit_code(body)

"""`python -m lr_jax.eval predict ...` (console script ``lr-eval``): the only subcommand; the judge side is
``python -m judge.eval``. The flags, ``--help`` and their checks come from
`lr_jax.eval.predict.PredictOptions` (`lr_jax.options`); an input error is one ``error:`` line, exit 2."""

from __future__ import annotations

import json
import sys

from lr_jax.errors import USAGE_EXIT, exit_code
from lr_jax.options import OneLineParser, add_flags, from_args

_PROG = "python -m lr_jax.eval"
_USAGE = (f"usage: {_PROG} predict --model DIR --benchmark longbench|longbench_chat --data PATH --out DIR\n\n"
          f"Run `{_PROG} predict --help` for the options.")


def build_parser() -> OneLineParser:
    from lr_jax.eval import predict

    p = OneLineParser(prog=f"{_PROG} predict", description="A checkpoint's answers to LongBench / "
                      "LongBench-Chat: OUT/<task>.jsonl per task, resumable (docs/eval.md).")
    add_flags(p, predict.PredictOptions)
    return p


def _predict(argv: list[str]) -> int:
    from lr_jax.eval import predict

    args = build_parser().parse_args(argv)  # numbers are checked here: one line, exit 2

    def body() -> int:
        summary = predict.run(from_args(predict.PredictOptions, args))
        print(json.dumps(summary, allow_nan=False))
        return 0

    return exit_code(body)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else USAGE_EXIT
    if argv[0] != "predict":
        print(f"error: unknown subcommand {argv[0]!r} (the only one is predict; see --help)", file=sys.stderr)
        return USAGE_EXIT
    return _predict(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

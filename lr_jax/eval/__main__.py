"""`python -m lr_jax.eval predict ...` (the only subcommand; the judge side is `python -m judge.eval`)."""

from __future__ import annotations

import sys

USAGE = ("usage: python -m lr_jax.eval predict --model DIR --benchmark longbench|longbench_chat "
         "--data PATH --out DIR")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\nRun `python -m lr_jax.eval predict --help` for the options.",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] != "predict":
        print(f"error: unknown subcommand {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    from lr_jax.eval.predict import main as predict_main

    return predict_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

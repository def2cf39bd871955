"""``python -m lr_jax.data.demo``: the CLI of `lr_jax.data.demo` (flags, ``--help`` and checks from
`DemoOptions`); bad input is one ``error:`` line, exit status 2."""

from __future__ import annotations

import json
import sys

from lr_jax.data.demo.synthetic import DemoOptions, write_demo_dataset
from lr_jax.data.errors import DataError
from lr_jax.errors import exit_code
from lr_jax.io.outputs import check_output_dir
from lr_jax.options import OneLineParser, add_flags, from_args


def main(argv: list[str] | None = None) -> int:
    """``python -m lr_jax.data.demo --out DIR [--n-train N ...]``: write the demo dataset, print its paths."""
    ap = OneLineParser(prog="python -m lr_jax.data.demo", description=main.__doc__)
    add_flags(ap, DemoOptions)
    a = from_args(DemoOptions, ap.parse_args(argv))  # numbers checked when parsed: one line, exit 2

    def body() -> int:
        check_output_dir(a.out, "--out", error=DataError)
        if a.tokenizer_dir is not None:
            check_output_dir(a.tokenizer_dir, "--tokenizer-dir", local_only=True, error=DataError)
        paths = write_demo_dataset(a.out, n_train=a.n_train, n_eval=a.n_eval, seed=a.seed,
                                   context_tokens=a.context_tokens, num_facts=a.num_facts,
                                   distractor=a.distractor, num_shards=a.num_shards,
                                   compression="GZIP" if a.gzip else None,
                                   num_values=a.num_values, tokenizer_kind=a.tokenizer_kind,
                                   tokenizer_dir=a.tokenizer_dir)
        print(json.dumps(paths, indent=2))
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())

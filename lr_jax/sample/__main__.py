"""`python -m lr_jax.sample` (docs/sampling.md)."""

import sys

from lr_jax.sample.cli import main

if __name__ == "__main__":
    sys.exit(main())

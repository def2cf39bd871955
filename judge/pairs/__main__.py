"""``python -m judge.pairs`` (the CLI is `judge.pairs.cli`)."""

import sys

from judge.pairs.cli import main

if __name__ == "__main__":  # importing this module (the house tests do) runs nothing
    sys.exit(main())

"""``python -m judge.eval`` (the CLI is `judge.eval.cli`)."""

import sys

from judge.eval.cli import main

if __name__ == "__main__":  # importing this module (the house tests do) runs nothing
    sys.exit(main())

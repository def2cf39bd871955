"""``python -m judge.score`` (the CLI is `judge.score.cli`)."""

import sys

from judge.score.cli import main

if __name__ == "__main__":  # importing this module (the house tests do) runs nothing
    sys.exit(main())

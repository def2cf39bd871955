"""``python -m judge.eval`` (the CLI is `judge.eval.cli`)."""

import sys

from judge.eval.cli import main

sys.exit(main())

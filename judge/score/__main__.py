"""``python -m judge.score`` (the CLI is `judge.score.cli`)."""

import sys

from judge.score.cli import main

sys.exit(main())

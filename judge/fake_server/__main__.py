"""``python -m judge.fake_server`` (the CLI is `judge.fake_server.cli`)."""

import sys

from judge.fake_server.cli import main

sys.exit(main())

"""``python -m judge.fake_server`` (the CLI is `judge.fake_server.cli`)."""

import sys

from judge.fake_server.cli import main

if __name__ == "__main__":  # importing this module (the house tests do) runs nothing
    sys.exit(main())

"""The one base class for every error a user can cause, and how a command-line tool reports it.

Bad input (a file, record, field, option, config value or path) raises a subclass of `LrJaxError` whose
message names what is wrong and where. Every CLI catches `LrJaxError` at its top, prints one
``error: <message>`` line on stderr and exits with status 2 (`exit_code`); anything else is a bug and keeps
its traceback. This module imports nothing heavy: `judge` (which must not import JAX) uses it too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE_EXIT = 2  # the exit status of every CLI for an input error (argparse's own choice for bad flags)


class LrJaxError(Exception):
    """An error in the user's input, config or paths; the message names the file, record, field or option."""


class ConfigError(LrJaxError, ValueError):
    """A config value is missing, unknown, of the wrong type or inconsistent; the message names the field."""


def exit_code(run: Callable[[], int | None]) -> int:
    """Run a CLI body; an `LrJaxError` becomes one ``error:`` line on stderr and exit status 2."""
    try:
        return run() or 0
    except LrJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT

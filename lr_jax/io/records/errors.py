"""The errors of the preference-record package."""

from __future__ import annotations

from lr_jax.errors import LrJaxError


class RecordError(LrJaxError, ValueError):
    """A bad preference record or dataset; the message names the file, record index and field."""


class AlreadyCommittedError(RecordError):
    """``out`` holds a committed dataset from different input and overwriting was not asked for."""

"""The data pipeline's one exception type: bad input is reported with the file, record and field."""

from __future__ import annotations


class DataError(ValueError):
    """Input data or a tokenizer is unusable; the message names the file / record / field involved."""

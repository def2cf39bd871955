"""The data pipeline's one exception type: bad input is reported with the file, record and field."""

from __future__ import annotations

from lr_jax.errors import LrJaxError


class DataError(LrJaxError, ValueError):
    """Input data or a tokenizer is unusable; the message names the file / record / field involved."""

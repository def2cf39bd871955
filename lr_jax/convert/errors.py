"""ConvertError and the output-directory check every conversion runs first."""

from __future__ import annotations

from pathlib import Path

from lr_jax.errors import LrJaxError
from lr_jax.io import outputs


class ConvertError(LrJaxError, ValueError):
    """A checkpoint cannot be converted; the message names the file, tensor and expected shape."""


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Raise ConvertError unless `path` is, or can be created as, a local directory we can write into
    (`lr_jax.io.outputs`, the one check of output paths; nothing is created). Called before any work, so a
    long conversion never ends in a write error."""
    outputs.check_output_dir(str(path), flag, local_only=True, error=ConvertError)
    return Path(path)

"""ConvertError and the output-directory check every conversion (and `lr_jax.sample --out`) runs first."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lr_jax.errors import LrJaxError


class ConvertError(LrJaxError, ValueError):
    """A checkpoint cannot be converted; the message names the file, tensor and expected shape."""


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Raise ConvertError unless `path` is, or can be created as, a directory we can write into.

    Called before any work, so a long conversion (or sampling run) never ends in a write error. A missing
    directory is not created here: the nearest existing ancestor is checked instead, so a run that fails
    later for another reason leaves nothing behind.
    """
    if "://" in str(path):
        # Path() would fold "gs://b/x" into the local relative dir "gs:/b/x" and write there silently.
        raise ConvertError(f"{flag} {path}: must be a local path (URLs such as gs:// are not supported)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{flag} {out}: exists and is not a directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConvertError(f"{flag} {out}: cannot create it, {probe} is a file")
    _check_can_create_in(probe, f"{flag} {out}")
    return out


def _check_can_create_in(directory: Path, what: str) -> None:
    """Create and remove a temp file in `directory` (`os.access` trusts root even on read-only mounts)."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".lr_jax_write_check_")
    except OSError as e:
        raise ConvertError(f"{what}: not writable ({e.strerror or e} in {directory})") from None
    os.close(fd)
    os.unlink(name)


"""Output paths checked before any work: one line instead of a traceback after an hour of compute.

Every CLI that writes calls one of these on each output flag first, before inputs are read, a model is loaded
or a judge is paid:

- `check_output_dir(path, flag)`: ``path`` is, or can be created as, a directory we can write into;
- `check_output_file(path, flag)`: ``path`` is, or can be created as, a file we can write (or append to),
  and is none of the command's input files.

Each refuses, with one `OutputPathError` line ``<flag> <path>: <what is wrong>``: an empty path; an existing
output of the wrong kind (a file where a directory goes, or the reverse); a path below a file; a directory
that cannot be written (a read-only mount, permissions, /proc — probed by creating a file, since
``os.access`` says yes to root); a gs:// URL where only local paths work (``local_only``), a malformed one, or
one whose bucket is missing or not writable (probed with a real object through `lr_jax.io.storage`). Nothing
is created: a missing directory is judged by its nearest existing ancestor, so a run that fails later for
another reason leaves nothing behind.

``error`` lets a caller raise its own `LrJaxError` subclass (``SampleError``, ``ConvertError``,
``JudgeInputError``) with the same messages. No JAX here (``judge`` uses it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from lr_jax.io import storage
from lr_jax.io.jsonl import ErrorFactory


class OutputPathError(storage.StorageError, ValueError):
    """An output path that cannot be written as asked; the message names the flag and the path."""


def _check_url(path: str, flag: str, local_only: bool, error: ErrorFactory) -> bool:
    """True for a gs:// URL that may be used; raises for an empty path, a URL where only local paths work,
    or another scheme."""
    if not path:
        raise error(f"{flag}: empty path")
    if "://" not in path:
        return False
    if local_only:
        # Path() would fold "gs://b/x" into the local relative path "gs:/b/x" and write there silently.
        raise error(f"{flag} {path}: must be a local path (URLs such as gs:// are not supported)")
    if not storage.is_gcs(path):
        raise error(f"{flag} {path}: only local paths and gs:// URLs are supported")
    return True


def _probe(directory: str, path: str, flag: str, error: ErrorFactory) -> None:
    """`storage.probe_write` worded for ``flag``: ``directory is not writable (...)`` when ``directory`` is
    ``path`` itself, else ``parent directory D is not writable (...)``; a gs:// reason as it is."""
    try:
        storage.probe_write(directory)
    except storage.StorageError as e:
        reason = str(e).removeprefix(f"{directory}: ")
        if reason.startswith("not writable"):
            same = os.path.normpath(directory) == os.path.normpath(path)
            reason = f"{'directory' if same else f'parent directory {directory}'} is {reason}"
        raise error(f"{flag} {path}: {reason}") from None


def _nearest_existing(path: str) -> str:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def _check_creatable_in(directory: str, path: str, flag: str, error: ErrorFactory) -> None:
    """``directory`` (where ``path`` goes) is a writable directory, or its nearest existing ancestor is."""
    probe = _nearest_existing(directory)
    if not os.path.isdir(probe):
        raise error(f"{flag} {path}: {probe} is a file, so the directory cannot be created")
    _probe(probe, os.path.abspath(path), flag, error)


def _gcs_call(path: str, flag: str, error: ErrorFactory, call: Callable[[], bool]) -> bool:
    """A read-only gs:// question (is it an object? a prefix?) with transport failures as one line."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    try:
        return call()
    except storage.StorageError as e:
        reason = str(e).removeprefix(f"{path}: ").removeprefix(f"{path!r}: ")
        raise error(f"{flag} {path}: {reason}") from None
    except (GoogleAPIError, GoogleAuthError, OSError) as e:
        raise error(f"{flag} {path}: cannot reach it ({' '.join(str(e).split())[:200]})") from None


def check_output_dir(path: str, flag: str, *, local_only: bool = False,
                     error: ErrorFactory = OutputPathError) -> None:
    """Raise ``error`` (one line naming ``flag`` and ``path``) unless ``path`` is, or can be created as, a
    writable directory (local, or a gs:// prefix in an existing, writable bucket unless ``local_only``)."""
    path = str(path)
    if _check_url(path, flag, local_only, error):
        # is_file first: it is False in a missing bucket, which the probe then names
        if _gcs_call(path, flag, error, lambda: storage.is_file(path)):
            raise error(f"{flag} {path}: is an object (a file), not a directory")
        _probe(path, path, flag, error)
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise error(f"{flag} {path}: is a file, not a directory")
    _check_creatable_in(path, path, flag, error)


def check_output_file(path: str, flag: str, *, local_only: bool = False,
                      inputs: Mapping[str, str] | None = None, error: ErrorFactory = OutputPathError) -> None:
    """Raise ``error`` unless ``path`` is, or can be created as, a file we can write or append to, and is
    none of ``inputs`` (``{flag: path}`` of the command's input files, e.g. ``{"--prompts": ...}``)."""
    path = str(path)
    if _check_url(path, flag, local_only, error):
        parent = path.rstrip("/").rpartition("/")[0]
        if parent == "gs:/":
            raise error(f"{flag} {path}: a gs:// file needs an object name after the bucket")
        _probe(parent, path, flag, error)  # first: listing a missing bucket fails without saying so
        if _gcs_call(path, flag, error, lambda: storage.is_dir(path)):
            raise error(f"{flag} {path}: objects lie under {path}/: it is a directory, not a file")
        for in_flag, in_path in (inputs or {}).items():
            if str(in_path).rstrip("/") == path.rstrip("/"):
                raise error(f"{flag} {path}: is the {in_flag} file; write to a new file")
        return
    if os.path.isdir(path):
        raise error(f"{flag} {path}: is a directory, not a file")
    for in_flag, in_path in (inputs or {}).items():
        if (not storage.is_gcs(in_path) and os.path.exists(path) and os.path.exists(in_path)
                and os.path.samefile(path, in_path)):
            raise error(f"{flag} {path}: is the {in_flag} file; write to a new file")
    _check_creatable_in(os.path.dirname(os.path.abspath(path)), path, flag, error)
    if os.path.exists(path):
        try:
            with open(path, "ab"):  # opening for append changes nothing but proves the write will work
                pass
        except OSError as e:
            raise error(f"{flag} {path}: not writable ({e.strerror or e})") from None

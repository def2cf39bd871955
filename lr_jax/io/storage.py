"""One file API for local paths and ``gs://`` URLs.

``gs://`` goes through ``google-cloud-storage``, which honours ``STORAGE_EMULATOR_HOST`` (and then needs no
credentials), so everything here is testable against a local emulator. TensorFlow's own ``gs://`` filesystem
is deliberately not used: its endpoint cannot be pointed at an emulator.

Atomic writes:
- local: the data goes to a temporary file in the same directory, then ``os.replace`` (or ``os.link`` for
  create-only), so a reader never sees half a file;
- gs://: an object upload is atomic by itself; ``if_absent=True`` adds ``if_generation_match=0`` so the upload
  fails with HTTP 412 (raised here as :class:`FileExistsError`) when the object already exists.

Local files are created with the process's normal permissions (``0o666`` less the umask, like ``open()``),
not the ``0o600`` that ``tempfile.mkstemp`` gives its temp file: a shard or ``metadata.json`` must be as
readable as every other output.

Errors a user can cause (a malformed ``gs://`` URL, a create-only write onto an existing file, a missing file)
are `StorageError` subclasses, so every CLI reports them as one line (`lr_jax.errors.LrJaxError`); they also
subclass the built-in exception they used to be (``ValueError``, ``FileExistsError``, ``FileNotFoundError``).

No JAX and no TensorFlow in here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import shutil
import tempfile
import threading
from typing import Any

from lr_jax.errors import LrJaxError

__all__ = [
    "AlreadyExistsError",
    "NotFoundError",
    "StorageError",
    "StoragePathError",
    "delete",
    "download_file",
    "exists",
    "is_dir",
    "is_file",
    "is_gcs",
    "join",
    "list_files",
    "makedirs",
    "probe_write",
    "read_bytes",
    "read_text",
    "upload_file",
    "write_bytes",
    "write_text",
]

_GS = "gs://"
_client_lock = threading.Lock()
_clients: dict[str | None, Any] = {}
_umask_lock = threading.Lock()


class StorageError(LrJaxError):
    """A storage operation failed because of the user's path or the file's state; the message names it."""


class StoragePathError(StorageError, ValueError):
    """A malformed path (e.g. a ``gs://`` URL without bucket or object name)."""


class AlreadyExistsError(StorageError, FileExistsError):
    """A create-only write found the file/object already there."""


class NotFoundError(StorageError, FileNotFoundError):
    """The file/object does not exist."""


def _umask() -> int:
    """The process umask. Linux shows it in /proc (no race); elsewhere set-and-restore under a lock (umask is
    process-wide, so two threads doing this at once could otherwise leave the wrong one behind)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        old = os.umask(0o022)
        os.umask(old)
    return old


def _default_file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: 0o666 less the umask."""
    return 0o666 & ~_umask()


def is_gcs(path: str) -> bool:
    """True for ``gs://bucket/...`` URLs."""
    return str(path).startswith(_GS)


def _split(path: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = path[len(_GS) :]
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise StoragePathError(f"{path!r}: no bucket in gs:// URL")
    return bucket, name


def _client() -> Any:
    """One client per emulator host: the emulator's port changes between tests and the client must follow."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST") or None
    with _client_lock:
        client = _clients.get(emulator)
        if client is None:
            from google.cloud import storage

            if emulator:
                # The client picks the emulator up from the environment and then uses anonymous credentials.
                client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "lr-jax-emulator"))
            else:
                from google.auth.exceptions import DefaultCredentialsError

                try:
                    client = storage.Client()
                except DefaultCredentialsError as e:  # a user's setup, not a bug: one line, no traceback
                    raise StorageError(f"gs://: no Google Cloud credentials ({' '.join(str(e).split())})"
                                       ) from None
            _clients[emulator] = client
        return client


def _blob(path: str) -> Any:
    bucket, name = _split(path)
    if not name:
        raise StoragePathError(f"{path!r}: a gs:// object path needs a name after the bucket")
    return _client().bucket(bucket).blob(name)


def _not_found() -> type[Exception]:
    from google.api_core.exceptions import NotFound

    return NotFound


def join(a: str, *parts: str) -> str:
    """Join path components; ``gs://`` URLs always use ``/``."""
    if is_gcs(a):
        out = a.rstrip("/")
        for p in parts:
            p = str(p).strip("/")
            if p:
                out = f"{out}/{p}"
        return out
    return os.path.join(a, *parts)


def exists(path: str) -> bool:
    """True if ``path`` is a file/object, or a directory (for gs://: any object lies under ``path/``)."""
    if not is_gcs(path):
        return os.path.exists(path)
    bucket, name = _split(path)
    if name and not name.endswith("/") and _blob(path).exists():
        return True
    prefix = name.rstrip("/") + "/" if name else ""
    it = _client().list_blobs(bucket, prefix=prefix, max_results=1)
    try:
        return any(True for _ in it)
    except _not_found():  # the bucket itself is missing: nothing exists in it
        return False


def is_file(path: str) -> bool:
    """True for a local file (anything but a directory) or a gs:// object."""
    if not is_gcs(path):
        return os.path.exists(path) and not os.path.isdir(path)
    _, name = _split(path)
    return bool(name) and not name.endswith("/") and _blob(path).exists()


def is_dir(path: str) -> bool:
    """True for a local directory, or a gs:// bucket / prefix with objects under ``path/``."""
    if not is_gcs(path):
        return os.path.isdir(path)
    bucket, name = _split(path)
    prefix = name.rstrip("/") + "/" if name else ""
    return any(True for _ in _client().list_blobs(bucket, prefix=prefix, max_results=1))


def probe_write(directory: str) -> None:
    """Create and delete a small probe file (object) in ``directory``; `StorageError` naming it when that is
    impossible: a read-only mount, a missing gs:// bucket, no permission, no credentials.

    A real write, not ``os.access``: root is told yes even where nothing can be created (a read-only mount,
    /proc), and a gs:// bucket's permissions can only be learnt by using them.
    """
    if not is_gcs(directory):
        try:
            fd, tmp = tempfile.mkstemp(prefix=".lr_jax-write-check-", dir=directory)
        except OSError as e:
            raise StorageError(f"{directory}: not writable ({e.strerror or e})") from None
        os.close(fd)
        os.unlink(tmp)
        return
    from google.api_core.exceptions import Forbidden, GoogleAPIError, NotFound
    from google.auth.exceptions import GoogleAuthError

    bucket, _ = _split(directory)
    probe = join(directory, f".lr_jax-write-check-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        _blob(probe).upload_from_string(b"", if_generation_match=0)
    except NotFound:
        raise StorageError(f"{directory}: bucket gs://{bucket} does not exist") from None
    except Forbidden as e:
        raise StorageError(f"{directory}: not writable ({e.code} {e.message})") from None
    except (GoogleAPIError, GoogleAuthError, OSError) as e:  # OSError: requests' connection errors
        raise StorageError(f"{directory}: cannot write a probe object ({' '.join(str(e).split())[:200]})"
                           ) from None
    # allowed to create but not to delete: the empty probe object stays (named for what it is)
    with contextlib.suppress(GoogleAPIError, OSError):
        _blob(probe).delete()


def list_files(prefix_or_dir: str, pattern: str | None = None) -> list[str]:
    """Files under a directory (recursively), or whose path starts with a prefix; sorted full paths.

    A directory (local directory, or gs:// with objects under ``path/``) lists everything below it; otherwise
    ``prefix_or_dir`` is a plain name prefix. ``pattern`` is an ``fnmatch`` pattern on the base name.
    """
    out: list[str]
    if is_gcs(prefix_or_dir):
        bucket, name = _split(prefix_or_dir)
        client = _client()
        dir_prefix = name.rstrip("/") + "/" if name else ""
        names = [b.name for b in client.list_blobs(bucket, prefix=dir_prefix)]
        if not names and name and not name.endswith("/"):
            names = [b.name for b in client.list_blobs(bucket, prefix=name)]
        out = [f"{_GS}{bucket}/{n}" for n in names if not n.endswith("/")]
    elif os.path.isdir(prefix_or_dir):
        out = []
        for root, _dirs, files in os.walk(prefix_or_dir):
            out.extend(os.path.join(root, f) for f in files)
    else:
        parent = os.path.dirname(prefix_or_dir) or "."
        base = os.path.basename(prefix_or_dir)
        out = []
        if os.path.isdir(parent):
            for f in os.listdir(parent):
                full = os.path.join(parent, f)
                if f.startswith(base) and os.path.isfile(full):
                    out.append(full)
    if pattern is not None:
        out = [p for p in out if fnmatch.fnmatchcase(posixpath.basename(p), pattern)]
    return sorted(out)


def read_bytes(path: str) -> bytes:
    """Whole file/object; :class:`FileNotFoundError` naming ``path`` if it is missing."""
    if not is_gcs(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise NotFoundError(f"{path}: no such file") from e
    try:
        return _blob(path).download_as_bytes()
    except _not_found() as e:
        raise NotFoundError(f"{path}: no such object") from e


def _atomic_local_write(path: str, write: Any, *, if_absent: bool) -> None:
    """Write via a temp file in the target directory, then rename (or hard-link for create-only)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=parent)
    try:
        # mkstemp makes the temp file 0o600 (private while half-written); the finished file gets the mode a
        # plain open() would have given it, so outputs written through here match every other output.
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if if_absent:
            # link() fails if the target exists: an atomic create-only commit on POSIX filesystems.
            try:
                os.link(tmp, path)
            except FileExistsError as e:
                raise AlreadyExistsError(f"{path}: already exists (create-only write refused)") from e
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str, data: bytes, *, if_absent: bool = False) -> None:
    """Write ``data`` atomically; with ``if_absent``, refuse to replace an existing file (FileExistsError).

    On gs:// ``if_absent`` is ``if_generation_match=0``: the server answers 412 if the object exists, so of
    two racing writers exactly one wins.
    """
    if not is_gcs(path):
        _atomic_local_write(path, lambda f: f.write(data), if_absent=if_absent)
        return
    from google.api_core.exceptions import PreconditionFailed

    try:
        _blob(path).upload_from_string(data, if_generation_match=0 if if_absent else None)
    except PreconditionFailed as e:
        raise AlreadyExistsError(
            f"{path}: already exists (412 precondition failed, create-only write refused)"
        ) from e


def read_text(path: str, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def write_text(path: str, text: str, *, if_absent: bool = False, encoding: str = "utf-8") -> None:
    write_bytes(path, text.encode(encoding), if_absent=if_absent)


def upload_file(local: str, remote: str, *, if_absent: bool = False) -> None:
    """Copy a local file to ``remote`` (gs:// or another local path), atomically."""
    if not is_gcs(remote):

        def copy(f: Any) -> None:
            with open(local, "rb") as src:
                shutil.copyfileobj(src, f)

        _atomic_local_write(remote, copy, if_absent=if_absent)
        return
    from google.api_core.exceptions import PreconditionFailed

    try:
        _blob(remote).upload_from_filename(local, if_generation_match=0 if if_absent else None)
    except PreconditionFailed as e:
        raise AlreadyExistsError(f"{remote}: already exists (412 precondition failed)") from e


def download_file(remote: str, local: str) -> None:
    """Copy ``remote`` (gs:// or local) to the local path ``local``; it appears complete or not at all."""
    if not is_gcs(remote):
        upload_file(remote, local)
        return
    parent = os.path.dirname(os.path.abspath(local))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=parent)
    os.fchmod(fd, _default_file_mode())  # as in _atomic_local_write: not mkstemp's 0o600
    os.close(fd)
    try:
        try:
            _blob(remote).download_to_filename(tmp)
        except _not_found() as e:
            raise NotFoundError(f"{remote}: no such object") from e
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def delete(path: str, *, missing_ok: bool = True) -> None:
    """Remove one file/object."""
    if not is_gcs(path):
        try:
            os.remove(path)
        except FileNotFoundError as e:
            if not missing_ok:
                raise NotFoundError(f"{path}: no such file") from e
        return
    try:
        _blob(path).delete()
    except _not_found() as e:
        if not missing_ok:
            raise NotFoundError(f"{path}: no such object") from e


def makedirs(path: str) -> None:
    """Create a local directory tree; a no-op on gs:// (object stores have no directories)."""
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)

"""Output directories of the judge CLIs: checked before any work, and written by one process at a time.

`check_output_dir` refuses, with one line, an output path that is a file, lies under a file, or is not
writable — before inputs are read or a judge is paid, instead of failing at the first write.

`OutputLock` is the one-writer rule of ``judge.score --out``: a lock file ``.judge.score.lock`` holding the
holder's pid, host and start time (never a key or a URL), created create-only (``os.link`` locally,
``if_generation_match=0`` on gs://, through `lr_jax.io.storage`), so of two racing starts exactly one wins. A
lock left by a process that is gone (same host, pid no longer running) is taken over with a message; a lock
held by a live process, or by another host (whose processes cannot be checked from here), is refused with one
line that says who holds it and how to clear it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from typing import Any

from judge.schema import JudgeInputError
from lr_jax.io import outputs, storage

LOCK_FILE = ".judge.score.lock"


def check_output_dir(path: str, flag: str) -> None:
    """Raise `JudgeInputError` (one line, naming ``flag``) unless ``path`` is, or can be created as, a
    writable local directory, or a gs:// prefix where an object can be written (a missing bucket or one
    without write access is refused here, before any work, not at the first write after the judge was
    paid). The one check every CLI uses (`lr_jax.io.outputs`), raising the judge's error."""
    outputs.check_output_dir(path, flag, error=JudgeInputError)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A killed writer stays a zombie until it is reaped (its parent may be dead too): it holds nothing.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):  # no /proc (macOS): the signal check is all there is
        return True


class OutputLock:
    """``with OutputLock(out_dir):`` — hold the one-writer lock of a ``judge.score`` output for the block
    (``prog="judge.eval"``: of a ``judge.eval`` output, lock file ``.judge.eval.lock``)."""

    def __init__(self, out: str, *, log: Any = None, prog: str = "judge.score") -> None:
        self.prog = prog
        self.path = storage.join(out, LOCK_FILE if prog == "judge.score" else f".{prog}.lock")
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.held = False
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(storage.read_text(self.path))
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def acquire(self) -> None:
        text = json.dumps(self.info)
        for _ in range(3):  # a takeover can race another takeover: re-check what the winner left
            try:
                storage.write_text(self.path, text, if_absent=True)
                self.held = True
                return
            except FileExistsError:
                pass
            holder = self._holder()
            if holder == {}:
                continue  # released between our write and our read
            if holder is None:
                raise JudgeInputError(
                    f"{self.path}: unreadable lock file; if no {self.prog} is writing here, delete it"
                )
            pid, host = holder.get("pid"), holder.get("host")
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started") or 0)))
            who = f"pid {pid} on host {host}, since {since}"
            if host == self.info["host"] and isinstance(pid, int) and not _pid_alive(pid):
                self.log(f"{self.prog}: taking over a stale lock {self.path} ({who}: that process is gone)")
                storage.delete(self.path)
                continue
            if host != self.info["host"]:
                raise JudgeInputError(
                    f"{self.path}: this output is being written by another {self.prog} ({who}); "
                    "one writer per --out. If that process is gone, delete the lock file"
                )
            raise JudgeInputError(
                f"{self.path}: this output is being written by another {self.prog} ({who}); "
                "one writer per --out: wait for it, or use another --out"
            )
        raise JudgeInputError(f"{self.path}: could not take the lock (other writers keep racing for it)")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self._holder()
        if holder and holder.get("pid") == self.info["pid"] and holder.get("host") == self.info["host"]:
            with contextlib.suppress(FileNotFoundError):
                storage.delete(self.path)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

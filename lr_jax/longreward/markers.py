"""A stage's commit marker (``DONE.json``) and what it was run with (``settings``: its stage fingerprint).

``run_dir/<stage>/DONE.json`` is written atomically (`lr_jax.io.storage.write_bytes`) only when the stage
has finished; ``STARTED.json`` when it starts. Both carry ``settings`` (`config.settings`: the config keys
the stage's result depends on, and those of every stage before it). A re-run compares them with its own:
a difference is refused in one line naming the stage and the field, or, with ``config.rerun_changed``, that
stage and the ones after it are moved to ``run_dir/replaced/<time>/`` and run again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from lr_jax.errors import ConfigError
from lr_jax.io.storage import write_bytes

MARKER = "DONE.json"
STARTED = "STARTED.json"


def is_done(d: Path) -> bool:
    return (d / MARKER).exists()


def read_marker(d: Path) -> dict[str, Any]:
    return json.loads((d / MARKER).read_text())


def _write(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(str(path), json.dumps(info, indent=1, sort_keys=True).encode())


def commit(d: Path, info: dict[str, Any]) -> None:
    """Write the stage's commit marker atomically: present = the stage finished."""
    _write(d / MARKER, info)


def mark_started(d: Path, settings: dict[str, Any]) -> None:
    """Record what a stage is being run with before it writes anything (a kill leaves this behind)."""
    if not (d / STARTED).exists():
        _write(d / STARTED, {"settings": settings})


def recorded_settings(d: Path) -> dict[str, Any] | None:
    """The settings a stage ran (or started) with; None when it never started or predates them."""
    for name in (MARKER, STARTED):
        p = d / name
        if p.exists():
            return json.loads(p.read_text()).get("settings")
    return None


def difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first field that differs, in words (``config.sample.temperature was 1.0, now 0.5``)."""
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            return f"config.{k} was {old.get(k, '<unset>')!r} when it ran, now {new.get(k, '<unset>')!r}"
    return None


class StaleStage(ConfigError):
    """A finished or started stage was run with other settings than this run's."""


def check_settings(stage: str, d: Path, now: dict[str, Any]) -> None:
    """Raise `StaleStage` (one line: the stage, the field, both values, what to do) on a difference."""
    old = recorded_settings(d)
    if old is None:
        return
    why = difference(old, now)
    if why:
        raise StaleStage(f"stage {stage}: {why} ({d}); pass --config.rerun_changed=True to re-run {stage} "
                         "and the stages after it (the old outputs are moved to run_dir/replaced/), or use "
                         "another config.run_dir")


def move_aside(run_dir: Path, dirs: list[Path]) -> Path:
    """Move stage directories (and the run's summary) to ``run_dir/replaced/<UTC time>/``: never deleted."""
    dest = run_dir / "replaced" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for d in [*dirs, *(run_dir / n for n in ("summary.json", "summary.md", "eval.png"))]:
        if d.exists():
            target = dest / d.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(d), str(target))
    return dest

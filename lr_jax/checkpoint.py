"""Orbax checkpointing: async saves, keep-N, resume from the latest step, save on SIGTERM (preemption).

A checkpoint holds the train state (params, optimizer state, step — sharded arrays, restored straight into
their shardings) and the data iterator's state as JSON, so a resumed run sees exactly the batches an
uninterrupted run would have. Directories may be local or `gs://` (orbax writes through etils.epath).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the two items this trainer saves."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True) -> None:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        if "://" not in directory:  # orbax's tensorstore layer refuses relative local paths
            directory = os.path.abspath(directory)
        self.directory = directory
        self._mngr = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any] | None, *, force: bool = False) -> bool:
        """Start a (possibly async) save of `state` and the iterator state at `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}))
        return self._mngr.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore into the shardings/dtypes of `abstract_state` (ShapeDtypeStructs with sharding)."""
        out = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                               data=ocp.args.JsonRestore()))
        return out["state"], dict(out["data"] or {})

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) mirroring a tree of jax arrays, for `Checkpointer.restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class PreemptionFlag:
    """Set by SIGTERM (TPU maintenance / spot preemption); the loop saves and exits at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: Any = None

    def install(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        del signum, frame
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

"""Preemption (SIGTERM) handling that every host agrees on: all processes save the same step, then exit.

One process: a local SIGTERM flag, checked after each step.

Several processes (TPU pod, one process per host): one host may get SIGTERM a step before another, and a
checkpoint save is collective, so acting on a local flag would deadlock (or save different steps). We use
JAX's preemption sync service (`multihost_utils.reached_preemption_sync_point`, the same mechanism orbax's
`CheckpointManager.reached_preemption` wraps): the C++ notifier installed by `jax.distributed.initialize()`
catches SIGTERM on any host and the coordination service picks the step `max(current steps) + 1`, which every
host sees as True at the same `step`. It travels out of band (gRPC to the coordinator), so the per-step check
is a local lookup and does not block asynchronous dispatch — unlike a cross-host any() of a flag, which is a
device collective whose result the host must wait for every step. That any() is kept only as the fallback
when the preemption service is disabled (`jax_enable_preemption_service=False`).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np


class LocalPreemption:
    """Single process: set by SIGTERM (TPU maintenance / spot preemption), seen at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: Any = None

    def install(self) -> LocalPreemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        del signum, frame
        self._event.set()

    def should_stop(self, step: int) -> bool:
        """True once SIGTERM was received (`step` is unused: there is nobody to agree with)."""
        del step
        return self._event.is_set()

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class SyncedPreemption:
    """Several processes: True on every host at the same step once any host got SIGTERM.

    Call `should_stop(step)` once per step on every host, with the same step numbers on all of them (the
    loop's step counter after the update; resumed runs start from the same restored step everywhere).
    """

    def __init__(self) -> None:
        from jax._src import distributed  # public API has no "is the sync manager up?" query (jax 0.10.2)

        self._service = distributed.global_state.preemption_sync_manager is not None
        self._local = LocalPreemption()

    def install(self) -> SyncedPreemption:
        if not self._service:  # fallback: our own handler + a cross-host any() every step
            self._local.install()
        return self

    def should_stop(self, step: int) -> bool:
        from jax.experimental import multihost_utils

        if self._service:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        mine = np.asarray([self._local.should_stop(step)], np.int32)
        return bool(np.asarray(multihost_utils.process_allgather(mine)).any())

    def uninstall(self) -> None:
        self._local.uninstall()


def preemption_handler() -> LocalPreemption | SyncedPreemption:
    """The handler for this run: local flag on one process, host-agreed step on several. Not installed."""
    return SyncedPreemption() if jax.process_count() > 1 else LocalPreemption()

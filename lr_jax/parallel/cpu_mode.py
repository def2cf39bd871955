"""CPU test mode: simulated XLA devices, so meshes, sharding and ring attention run on a laptop.

Import-light on purpose (no jax): it must run before JAX initialises its backends — from a config file
(read during flag parsing), `tests/conftest.py`, a bench script, or to build a child process's environment.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# XLA:CPU runs every simulated device's collectives on one intra-op pool of about max(cores, devices)
# threads. The concurrency-optimised (BFS) schedule can leave every pool thread blocked in a rendezvous
# (seen: the DPO step with dpo.reference=model + grad_accum=2 at batch 32 on 8 devices — a collective-permute
# waiting on an all-gather) and XLA aborts after 40 s with "Fatal Python error: Aborted". The DFS schedule
# avoids it at the same step time (measured 27 ms/step either way on the CPU demo).
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def xla_flags(devices: int = 8, existing: str = "") -> str:
    """`existing` XLA_FLAGS plus a simulated device count and the deadlock-free CPU schedule, unless set."""
    flags = existing.split()
    if not any(f.startswith(DEVICE_COUNT_FLAG) for f in flags):
        flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
    if not any(f.startswith(SCHEDULER_FLAG) for f in flags):
        flags.append(f"{SCHEDULER_FLAG}=false")
    return " ".join(flags)


def simulate_devices(devices: int = 8,
                     env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set `env` (default: this process's environment) for `devices` simulated CPU devices; returns `env`.

    Keeps a device count or platform the caller already chose (e.g. `JAX_PLATFORMS=tpu`).
    """
    env = os.environ if env is None else env
    env["XLA_FLAGS"] = xla_flags(devices, env.get("XLA_FLAGS", ""))
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env

"""The platform a program is built for, which may differ from the host's.

`target_platform()` is `jax.default_backend()` unless a caller compiles for other devices inside
``with building_for(platform):`` — `lr_jax.plan` compiles TPU programs on a CPU host with libtpu's
compile-only devices. Platform-bound kernels read it: splash's and cuDNN's `is_available` (config validation)
and splash's choice between the Mosaic kernel and Pallas interpret mode. A `contextvars.ContextVar`, so the
setting belongs to the thread (or task) that builds the program and ends with the block.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

# None: the program runs where it is built (jax.default_backend()).
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("lr_jax_attention_target", default=None)


def target_platform() -> str:
    """The platform ("cpu", "gpu", "tpu") the program being built will run on: the innermost
    `building_for`, else `jax.default_backend()`."""
    target = _TARGET.get()
    if target is not None:
        return target
    import jax

    return jax.default_backend()


@contextlib.contextmanager
def building_for(platform: str) -> Iterator[None]:
    """Validate, trace and lower for `platform`'s devices (e.g. compile-only TPU devices on a CPU host)
    inside this block; nothing here runs a program, so a kernel unavailable on the host is fine."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)

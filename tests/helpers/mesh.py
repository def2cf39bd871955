"""Run code under an ambient mesh (`jax.set_mesh`), or under none when `mesh` is None."""

from __future__ import annotations

import contextlib
from typing import Any

import jax


def ambient(mesh: Any) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)

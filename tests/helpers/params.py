"""Tiny-model weights without running the model's initialiser (which compiles seconds of one-off ops per
new shape)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lr_jax.model import init_params


def random_params(cfg: Any, std: float, seed: int = 0, array: Callable[..., Any] = np.asarray) -> Any:
    """Params of `cfg`'s shapes drawn in NumPy (N(0, std); norm scales 1), each leaf made by `array`
    (NumPy by default, `jnp.asarray` for device arrays)."""
    rng = np.random.default_rng(seed)
    draw = lambda path, s: (np.ones(s.shape) if path[-1].key == "scale" else rng.normal(0, std, s.shape))
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    return jax.tree_util.tree_map_with_path(lambda p, s: array(draw(p, s), s.dtype), shapes)

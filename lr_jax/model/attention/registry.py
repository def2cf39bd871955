"""The attention backends, one record each: the only place that knows their names and what sets them apart.

Every backend is a module ``lr_jax.model.attention.<name>`` with the one signature::

    attention(q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, D],
              q_info: TokenInfo, kv_info: TokenInfo, *, scale: float, block_size: int = 512, **options)
        -> [B, Sq, Hq, D]

and, optionally, ``is_available() -> (ok, why)`` (platform) and ``config_problem(cfg, seq_len, sequence)
-> (field, message) | None`` (shapes and options it cannot run). Modules are imported only when a backend is
used or checked, so a TPU-only or GPU-only kernel never loads on the wrong machine. Callers go through
`bind` (the function with the config's options applied) and `config_problem` (validation naming the field);
nothing outside this package branches on a backend's name.

Availability means on the platform the program is built for (`target_platform`, platform.py): the default
backend's, unless a caller compiles for other devices inside `building_for(platform)` — `lr_jax.plan`
compiles TPU programs on a CPU host with libtpu's compile-only devices.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the model config imports this module for its default and the choices
    from lr_jax.model.config import ModelConfig

AttentionFn = Callable[..., Any]

# What computes one ring step's block (ring_kernels.py); the `ModelConfig.ring_block_kernel` choices, each
# with (a description for reports, whether it is an opaque custom call).
RING_BLOCK_KERNEL_INFO = {"jax": ("pure-JAX online-softmax tiles in XLA", False),
                          "splash": ("TPU Pallas splash kernel (Mosaic custom call)", True),
                          "cudnn": ("cuDNN flash attention forward (custom call), pure-JAX backward", True)}
RING_BLOCK_KERNELS = tuple(RING_BLOCK_KERNEL_INFO)


@dataclasses.dataclass(frozen=True)
class Option:
    """A `ModelConfig` field that one backend reads, passed to it as keyword `kwarg`."""

    field: str
    kwarg: str
    choices: tuple[str, ...]
    default: str


@dataclasses.dataclass(frozen=True)
class Backend:
    """One attention backend.

    spans_sequence: runs with the sequence axis sharded over ``mesh.sequence`` (ring passes K/V around the
      ring; reference / blockwise let XLA gather). Per-device kernels (splash, cudnn) need ``sequence == 1``.
    zigzag: wants tokens in ring attention's zig-zag order over the sequence shards (load balance).
    decode_fallback: the backend that prefill for sampling uses instead (decoding runs per device).
    options: the config fields it reads; every other backend requires them at their defaults.
    emulated: runs, interpreted and slowly, where `is_available` says no (splash: Pallas interpret mode off
      TPU) — the config refuses it there, tests still run it.
    description: what computes it, for reports (the plan's table).
    custom_call: the kernel is an opaque custom call (Mosaic, cuDNN): XLA's `cost_analysis` does not count
      its FLOPs, so only an analytic count says what it does.
    """

    name: str
    spans_sequence: bool = False
    zigzag: bool = False
    decode_fallback: str | None = None
    options: tuple[Option, ...] = ()
    emulated: bool = False
    description: str = ""
    custom_call: bool = False

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"lr_jax.model.attention.{self.name}")

    def is_available(self) -> tuple[bool, str]:
        check = getattr(self.module, "is_available", None)
        return check() if check is not None else (True, "")


RING_OPTION = Option("ring_block_kernel", "block_kernel", RING_BLOCK_KERNELS, "jax")
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("reference", spans_sequence=True, description="dense [S, S] scores in XLA"),
        Backend("blockwise", spans_sequence=True, description="pure-JAX online-softmax tiles in XLA"),
        Backend("ring", spans_sequence=True, zigzag=True, decode_fallback="blockwise",
                options=(RING_OPTION,), description="K/V passed around mesh.sequence"),
        Backend("splash", emulated=True, custom_call=True,
                description="TPU Pallas splash kernel (Mosaic custom call)"),
        Backend("cudnn", custom_call=True, description="cuDNN flash attention (custom call)"),
    )
}
DEFAULT_BACKEND = "blockwise"
OPTIONS: tuple[Option, ...] = tuple(o for b in BACKENDS.values() for o in b.options)


def backend(name: str) -> Backend:
    """The record of backend `name`; unknown names raise ValueError listing the choices."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def get_attention(name: str) -> AttentionFn:
    """The bare `attention` function of backend `name` (no options bound)."""
    return backend(name).module.attention


def bind(cfg: ModelConfig, *, decode: bool = False) -> AttentionFn:
    """`attention(q, k, v, q_info, kv_info)` of `cfg.attention_backend` with scale, block size and the
    backend's options from `cfg`. `decode=True`: the backend sampling's prefill uses (its fallback)."""
    b = backend(cfg.attention_backend)
    if decode and b.decode_fallback is not None:
        b = backend(b.decode_fallback)
    options = {o.kwarg: getattr(cfg, o.field) for o in b.options}
    return functools.partial(b.module.attention, scale=cfg.head_dim**-0.5,
                             block_size=cfg.attention_block_size, **options)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """What computes a config's attention, for reports: `description` names backend and kernel;
    `custom_call`: its FLOPs are invisible to XLA's `cost_analysis` (count them analytically)."""

    description: str
    custom_call: bool


def kernel(cfg: ModelConfig) -> Kernel:
    """The kernel `cfg.attention_backend` (with its options, e.g. ring's block kernel) runs."""
    b = backend(cfg.attention_backend)
    text, opaque = f"{b.name}: {b.description}", b.custom_call
    for o in b.options:  # today the ring's block kernel
        name = getattr(cfg, o.field)
        what, custom = RING_BLOCK_KERNEL_INFO[name]
        text += f", {o.field} {name!r}: {what}"
        opaque = opaque or custom
    return Kernel(text, opaque)


def option_problem(cfg: ModelConfig) -> tuple[str, str] | None:
    """(field, message) for an option set for a backend that does not read it (`ModelConfig.validate` checks
    the choices)."""
    own = {o.field for o in backend(cfg.attention_backend).options}
    for o in OPTIONS:
        value = getattr(cfg, o.field)
        if o.field not in own and value != o.default:
            readers = " or ".join(f"attention_backend={b.name!r}" for b in BACKENDS.values()
                                  if o in b.options)
            return o.field, (f"{value!r} is only used by {readers} (got {cfg.attention_backend!r}); leave it "
                             f"{o.default!r}")
    return None


def config_problem(cfg: ModelConfig, seq_len: int, sequence: int) -> tuple[str, str] | None:
    """(ModelConfig field, message) when `cfg`'s backend cannot run rows of `seq_len` tokens split over
    `sequence` shards on this platform; None when it can. Fails here, naming the field, rather than in XLA."""
    b = backend(cfg.attention_backend)
    if sequence > 1 and not b.spans_sequence:
        # reference / blockwise span it too, through XLA's gathers; suggest the backend built for it.
        spanning = " or ".join(repr(x.name) for x in BACKENDS.values() if x.spans_sequence and x.zigzag)
        return "attention_backend", (f"{b.name!r} cannot span mesh.sequence = {sequence}; use {spanning} or "
                                     "set mesh.sequence = 1 (it runs per device)")
    ok, why = b.is_available()
    if not ok:
        return "attention_backend", f"{b.name!r} is not available here: {why}"
    problem = option_problem(cfg)
    if problem is not None:
        return problem
    check = getattr(b.module, "config_problem", None)
    return check(cfg, seq_len, sequence) if check is not None else None


def sequence_order_shards(cfg: ModelConfig, sequence: int) -> int:
    """Shards the data pipeline orders tokens for: `sequence` if the backend wants zig-zag order, else 1."""
    return sequence if backend(cfg.attention_backend).zigzag else 1

"""Compile a run's real step for a TPU slice on any machine and report what it needs per chip.

With `libtpu` installed (the `plan` extra), `jax.experimental.topologies.get_topology_desc` gives
compile-only TPU devices; the trainer's own program (`lr_jax.training.program.build`: mesh, shardings,
attention backend, remat, gradient accumulation, reference mode) is lowered from abstract shapes and
compiled for them. XLA's `memory_analysis()` of that executable is the per-chip memory the run will need;
a program over HBM fails to compile (`CompileTimeHbmOom`), which is the "does not fit" verdict.

FLOPs are counted analytically (`step_flops`): `cost_analysis()` counts the body of a loop once (the layer
scan, the micro-batch scan), so it undercounts a scanned model by ~layers x micro-batches, and it counts
nothing inside a kernel's custom call (splash's Mosaic kernel).

Everything — the config's attention checks, tracing, lowering — happens under
`attention.building_for(<the devices' platform>)`: the program is built for TPU devices, so a TPU-only
kernel (splash) is available and compiled as the TPU would run it, not in Pallas interpret mode.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from lr_jax.errors import LrJaxError

GiB = 2**30
_UNIT = {"M": 2**20, "G": 2**30, "T": 2**40}  # XLA's sizes in messages are binary
PLAN_INSTALL_HINT = "pip install -e '.[plan]'  (or: pip install libtpu==0.0.52)"
TARGET_PLATFORM = "tpu"  # the platform of libtpu's compile-only devices: what a plan builds programs for

# Chips of a slice -> topology shape. Slice names follow Cloud TPU: v5p-N counts TensorCores (2 per chip),
# v5e-N (v5litepod-N) counts chips.
_V5P_SHAPES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"}
_V5E_SHAPES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
SWEEP = {"v5p": [f"v5p-{2 * c}" for c in sorted(_V5P_SHAPES)],
         "v5e": [f"v5e-{c}" for c in (4, 8, 16, 32, 64)]}


class PlanError(LrJaxError):
    """A bad `--topology` / `--job` option, or libtpu is missing."""


def topology_name(topology: str) -> str:
    """`v5p-8` / `v5e-16` / `v5litepod-16` / `v5p:2x2x1` -> the name `get_topology_desc` takes."""
    t = topology.strip().lower()
    if re.fullmatch(r"v5(p|e|litepod):\d+(x\d+)+", t):
        return t.replace("v5litepod", "v5e")
    m = re.fullmatch(r"(v5p|v5e|v5litepod)-(\d+)", t)
    if m:
        gen, n = m.group(1), int(m.group(2))
        if gen == "v5p" and n % 2 == 0 and n // 2 in _V5P_SHAPES:
            return f"v5p:{_V5P_SHAPES[n // 2]}"
        if gen != "v5p" and n in _V5E_SHAPES:
            return f"v5e:{_V5E_SHAPES[n]}"
    known = ", ".join(SWEEP["v5p"] + SWEEP["v5e"])
    raise PlanError(f"--topology {topology!r}: unknown slice; known: {known}, or a shape such as v5p:2x2x1")


def topology_devices(topology: str) -> list[Any]:
    """Compile-only TPU devices of `topology` (needs libtpu; no TPU needed)."""
    name = topology_name(topology)
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off a TPU VM
    # libtpu takes a machine-wide lockfile (one process per TPU host); compile-only planning opens no chip,
    # so several plans (or a plan beside a test run) may share the machine.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise PlanError(f"--topology needs libtpu (compile-only TPU devices): {PLAN_INSTALL_HINT}") from None
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=name, platform=TARGET_PLATFORM).devices)
    except Exception as e:  # libtpu rejects the shape
        raise PlanError(f"--topology {topology!r} ({name}): libtpu cannot build it: {e}") from None


@dataclasses.dataclass
class Report:
    """One compiled (or failed) program on one slice; byte fields per chip."""

    job: str
    topology: str
    chips: int
    device_kind: str
    mesh: dict[str, int]
    accum: int
    seq_len: int
    hbm: float
    fits: bool
    rows: list[tuple[str, float]]  # (what, bytes per chip) of the program's memory
    total: float  # bytes per chip the program needs (over HBM when it did not compile)
    error: str = ""
    flops: dict[str, float] = dataclasses.field(default_factory=dict)
    kernel: Any = None  # attention.Kernel: what computes attention (None: not reported)
    compiled: Any = None  # the TPU executable (None when it did not compile), for callers reading its HLO

    def table(self) -> str:
        """The human-readable table (one number per line)."""
        mesh = " x ".join(f"{k} {v}" for k, v in self.mesh.items())
        what = f"grad_accum {self.accum}, " if self.job in ("dpo", "sft") else ""
        head = (f"{self.job} step on {self.topology} ({self.chips} chips, {self.device_kind}): mesh {mesh}, "
                f"{what}seq_len {self.seq_len}")
        lines = [head, f"  {'per chip':<34}{'GiB':>10}"]
        for what, b in self.rows:
            lines.append(f"  {what:<34}{b / GiB:>10.2f}")
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"  {'total':<34}{self.total / GiB:>10.2f}   of {self.hbm / GiB:.2f} HBM: {verdict}")
        if self.error:
            lines.append(f"  compiler: {self.error}")
        if self.kernel is not None:
            lines.append(f"  {'attention kernel':<34}{self.kernel.description}")
        f = self.flops
        if f:
            inside = ("inside the kernel's custom call: cost_analysis() does not count them"
                      if self.kernel is not None and self.kernel.custom_call else "in XLA ops")
            lines += [
                f"  {'model FLOPs per step (6N + attn)':<34}{f['model']:>10.3e}",
                f"  {'attention FLOPs (analytic)':<34}{f['attention']:>10.3e}   ({inside})",
                f"  {'hardware FLOPs per step (+remat)':<34}{f['hardware']:>10.3e}",
                f"  {'peak bf16 FLOP/s per chip':<34}{f['peak']:>10.3e}",
                f"  {'step time, compute roofline':<34}{f['step_time_s']:>10.2f} s   (estimate: all chips at "
                "peak, no communication or memory stalls: a lower bound)",
                f"  {'tokens/s at the roofline':<34}{f['tokens_per_s']:>10.0f}",
                f"  {'MFU at the roofline':<34}{100 * f['mfu']:>9.1f}%   (model / hardware FLOPs; measured "
                "MFU is lower)",
            ]
        return "\n".join(lines)


def bytes_per_chip(tree: Any) -> float:
    """Bytes one device holds of a tree of `ShapeDtypeStruct`s carrying shardings (its largest shard)."""
    import jax

    total = 0.0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def _oom_bytes(msg: str) -> float:
    """The temporaries a CompileTimeHbmOom message names ("... HLO temporaries (167.22G) exceeds ..."; XLA's
    G = GiB), or 0.0."""
    m = re.search(r"temporaries \(([\d.]+)([MGT])\) exceeds", msg)
    if not m:
        return 0.0
    return float(m.group(1)) * _UNIT[m.group(2)]


def _oom_used(msg: str) -> float:
    """The whole program a "Ran out of memory in memory space hbm. Used 17.2G of 15.75G hbm" message
    names (arguments + temporaries), or 0.0."""
    m = re.search(r"Used ([\d.]+)([MGT]) of ([\d.]+)([MGT]) hbm", msg)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else 0.0


def _compile(lowered: Any) -> tuple[Any | None, str]:
    """(compiled, "") or (None, the compiler's out-of-memory message)."""
    try:
        return lowered.compile(), ""
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED ... CompileTimeHbmOom
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "HbmOom" not in msg and "exceeds" not in msg:
            raise
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        keep = [ln for ln in lines if any(w in ln for w in ("exceed", "Exceed", "HBM", "hbm", "Used"))]
        return None, " ".join((keep or lines)[:3])[:600]


def memory_rows(stats: Any, args: dict[str, float]) -> tuple[list[tuple[str, float]], float]:
    """Table rows and total bytes per chip from `compiled.memory_analysis()` and the argument breakdown."""
    rows = list(args.items())
    other_args = stats.argument_size_in_bytes - sum(args.values())
    if abs(other_args) > 2**20:
        rows.append(("other arguments", other_args))
    out = stats.output_size_in_bytes - stats.alias_size_in_bytes  # donated state: aliased, not extra
    rows += [("temporaries", stats.temp_size_in_bytes), ("outputs not aliased", out),
             ("program", stats.generated_code_size_in_bytes)]
    total = (stats.argument_size_in_bytes + out + stats.temp_size_in_bytes
             + stats.generated_code_size_in_bytes)
    return rows, total


def step_flops(cfg: Any, peak: float, chips: int) -> dict[str, float]:
    """Analytic FLOPs of one optimizer step (whole slice) and the compute-roofline step time.

    Model FLOPs = tokens x `train_flops_per_token` (6N + causal attention; + a forward for an in-step
    reference). Hardware FLOPs add what remat recomputes: one more forward of the layer stack for
    `remat_policy` "full" / "nothing_saveable" (the "dots" policies save matmul outputs), and the unembedding
    matmul the chunked log-probs recompute in their backward. "attention" is the causal attention part of the
    hardware FLOPs (QK^T and PV of forward, backward, reference forward and remat's recomputed forward) —
    the work inside the attention kernel, which `cost_analysis` cannot see when it is a custom call. It counts
    causal pairs only: a kernel's masked tiles on the diagonal and its backward's recomputed scores add more.
    """
    from lr_jax.training.metrics import train_flops_per_token

    m, d = cfg.model, cfg.data
    ctx = d.seq_len / d.pairs_per_row
    ref_fwd = 1 if (cfg.dpo.objective == "dpo" and cfg.dpo.reference == "model") else 0
    tokens = d.batch_size * d.seq_len
    per_tok = train_flops_per_token(m, ctx, forward_only_passes=ref_fwd)
    fwd = train_flops_per_token(m, ctx) / 3  # one forward pass per token
    unembed = 2 * m.hidden_size * m.vocab_size
    remat = m.remat_policy in ("full", "nothing_saveable") and m.scan_layers
    recompute = (fwd - unembed) if remat else 0.0
    # One forward's attention per token: QK^T and PV, 2 x 2 x H x hd per (query, causal key), ctx / 2 keys.
    attn_fwd = 2 * m.num_layers * m.num_heads * m.head_dim * ctx
    attention = (3 + ref_fwd + (1 if remat else 0)) * attn_fwd * tokens
    model = per_tok * tokens
    hardware = (per_tok + recompute + unembed) * tokens
    t = hardware / (peak * chips) if peak else float("nan")
    return {"model": model, "hardware": hardware, "attention": attention, "peak": peak, "step_time_s": t,
            "tokens_per_s": tokens / t if peak else float("nan"), "mfu": model / hardware}


def plan_train(cfg: Any, topology: str, devices: list[Any] | None = None) -> Report:
    """Compile the trainer's step for `cfg` on `topology`'s compile-only devices and report per chip."""
    from lr_jax.model import attention

    devices = devices if devices is not None else topology_devices(topology)
    with attention.building_for(devices[0].platform):
        report = _plan_train(cfg, topology, devices)
    report.kernel = attention.kernel(cfg.model)
    return report


def _plan_train(cfg: Any, topology: str, devices: list[Any]) -> Report:
    from lr_jax.parallel.mesh import make_mesh
    from lr_jax.training import program
    from lr_jax.training.metrics import hbm_bytes_per_device, peak_flops_per_device
    from lr_jax.training.step import make_optimizer

    sizes = cfg.mesh_shape(len(devices))
    mesh = make_mesh(**sizes, devices=devices)
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps)
    prog = program.build(cfg, mesh, optimizer)
    args = prog.abstract_step_args()
    parts = {"parameters": bytes_per_chip(args[0]["params"]),
             "optimizer state": bytes_per_chip(args[0]["opt_state"]) + bytes_per_chip(args[0]["step"]),
             "batch": bytes_per_chip(args[1])}
    if prog.use_ref_model:
        parts["reference parameters"] = bytes_per_chip(args[2])
    compiled, err = _compile(prog.lower_step())
    kind = devices[0].device_kind
    hbm = hbm_bytes_per_device(kind)
    peak = peak_flops_per_device(kind, "tpu", 1)
    flops = step_flops(cfg, peak, len(devices))  # accumulation changes memory, not FLOPs
    if compiled is None:
        return _failed(cfg.dpo.objective, topology, devices, kind, sizes, prog.accum, cfg.data.seq_len, hbm,
                       parts, err, flops)
    rows, total = memory_rows(compiled.memory_analysis(), parts)
    return Report(cfg.dpo.objective, topology, len(devices), kind, sizes, prog.accum, cfg.data.seq_len, hbm,
                  total <= hbm if hbm else True, rows, total, "", flops, compiled=compiled)


def plan_sample(cfg: Any, topology: str, *, prompts: int = 0, num_samples: int = 10,
                max_new_tokens: int = 1024, devices: list[Any] | None = None) -> list[Report]:
    """Compile `lr_jax.sample`'s prefill and decode for `cfg.model` on `topology` (mesh: data x fsdp x
    tensor of `cfg.mesh`, its sequence axis folded into fsdp: decoding does not split the sequence).

    Prefill: `prompts` rows of `data.seq_len` tokens (0 = one per data x fsdp shard); decode: `num_samples`
    rows per prompt, `max_new_tokens` steps, over the prefill's KV cache.
    """
    from lr_jax.model import attention

    devices = devices if devices is not None else topology_devices(topology)
    with attention.building_for(devices[0].platform):
        return _plan_sample(cfg, topology, prompts, num_samples, max_new_tokens, devices)


def _plan_sample(cfg: Any, topology: str, prompts: int, num_samples: int, max_new_tokens: int,
                 devices: list[Any]) -> list[Report]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from lr_jax.model import init_params, param_shardings
    from lr_jax.model.decode import decode, prefill
    from lr_jax.parallel.mesh import make_mesh
    from lr_jax.parallel.rules import logical_to_spec
    from lr_jax.training.metrics import hbm_bytes_per_device

    sizes = cfg.mesh_shape(len(devices))
    sizes = {"data": sizes["data"], "fsdp": sizes["fsdp"] * sizes["sequence"], "tensor": sizes["tensor"],
             "sequence": 1}
    mesh = make_mesh(**sizes, devices=devices)
    m = cfg.model
    P = prompts or sizes["data"] * sizes["fsdp"]
    S = cfg.data.seq_len
    rows_sh = lambda shape: NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (len(shape) - 1), mesh,
                                                                shape))
    sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows_sh(shape))
    params = jax.eval_shape(lambda: init_params(m, jax.random.key(0)))
    psh = param_shardings(m, mesh, params)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, jnp.dtype(m.dtype), sharding=sh),
                          params, psh)  # the sampler loads weights in the compute dtype
    kind, hbm = devices[0].device_kind, hbm_bytes_per_device(devices[0].device_kind)
    reports = []
    with jax.set_mesh(mesh):
        lowered = prefill.lower(m, params, sds((P, S), jnp.int32), sds((P,), jnp.int32))
        compiled, err = _compile(lowered)
        parts = {"parameters": bytes_per_chip(params),
                 "prompts": P * S * 4 / (sizes["data"] * sizes["fsdp"])}
        reports.append(_report("prefill", topology, devices, kind, sizes, S, hbm, compiled, err, parts))
        prefix = jax.eval_shape(lambda: prefill(m, params, sds((P, S), jnp.int32), sds((P,), jnp.int32)))
        out_sh = compiled.output_shardings if compiled is not None else jax.tree.map(
            lambda x: rows_sh(x.shape), prefix)
        prefix = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                              prefix, out_sh)
        B = P * num_samples
        key_shape = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), B))
        keys = jax.ShapeDtypeStruct(key_shape.shape, key_shape.dtype, sharding=rows_sh((B,)))
        lowered = decode.lower(m, params, prefix, keys, None, num_samples=num_samples,
                               max_new_tokens=max_new_tokens, temperature=1.0)
        compiled, err = _compile(lowered)
        parts = {"parameters": bytes_per_chip(params), "prefix KV cache": bytes_per_chip(prefix)}
        reports.append(_report("decode", topology, devices, kind, sizes, S, hbm, compiled, err, parts))
    return reports


def _failed(job: str, topology: str, devices: list[Any], kind: str, sizes: dict[str, int], accum: int,
            seq_len: int, hbm: float, parts: dict[str, float], err: str,
            flops: dict[str, float] | None = None) -> Report:
    """A program the compiler refused: its arguments plus the temporaries the OOM message names."""
    temps, used = _oom_bytes(err), _oom_used(err)
    if not temps and used:
        temps = used - sum(parts.values())
    rows = [*parts.items(), ("temporaries (compiler's count)", temps)]
    total = sum(parts.values()) + temps if temps else float("nan")
    return Report(job, topology, len(devices), kind, sizes, accum, seq_len, hbm, False, rows, total, err,
                  flops or {})


def _report(job: str, topology: str, devices: list[Any], kind: str, sizes: dict[str, int], seq_len: int,
            hbm: float, compiled: Any, err: str, parts: dict[str, float]) -> Report:
    if compiled is None:
        return _failed(job, topology, devices, kind, sizes, 1, seq_len, hbm, parts, err)
    rows, total = memory_rows(compiled.memory_analysis(), parts)
    return Report(job, topology, len(devices), kind, sizes, 1, seq_len, hbm, total <= hbm if hbm else True,
                  rows, total)


def suggestions(cfg: Any, report: Report) -> list[str]:
    """Changes that reduce per-chip memory, as `--config.*` overrides or a bigger slice."""
    out = []
    d, m = cfg.data, cfg.model
    shards = report.mesh["data"] * report.mesh["fsdp"]
    micro = d.batch_size // report.accum
    if report.job in ("dpo", "sft"):
        if micro > shards:
            out.append(f"smaller micro-batches: --config.optim.grad_accum={report.accum * 2} (or -1: one "
                       "row per batch shard)")
        if m.remat_policy != "full":
            out.append("save less for the backward: --config.model.remat_policy=full")
        if cfg.dpo.logprob_chunk_size > 256:
            half = cfg.dpo.logprob_chunk_size // 2
            out.append(f"a smaller log-prob chunk: --config.dpo.logprob_chunk_size={half}")
        if d.seq_len % (4 * report.mesh["sequence"]) == 0:
            out.append(f"more sequence shards: --config.mesh.sequence={2 * report.mesh['sequence']} (the "
                       "fsdp -1 axis shrinks to match)")
    out.append("more chips (more fsdp shards): `python -m lr_jax.plan ... --sweep` finds the smallest slice "
               "that fits")
    return out

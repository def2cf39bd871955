"""Per-device memory and step time of attention forward+backward vs sequence length and sequence-axis size.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python bench/long_context.py

Backends: ``dense`` (reference.py, the full score matrix), ``ring`` with ``sequence`` = 1 (no ring: the
local flash fallback, whole sequence on one device) and 2, 4, 8 (K/V passed around a ring of simulated CPU
devices). Memory is XLA's compiled ``memory_analysis()`` of the per-device program (arguments + outputs
+ temporaries − aliased), so it needs no run; time is the wall clock of one jitted run on this 2-core CPU,
measured only up to ``--time-max-seq`` (8 simulated devices share the same cores, so ring times show
overhead, not speed-up). The "fits in 20 GB" column extrapolates the measured bytes/token linearly
(flash/ring memory is linear in the sequence); it is attention-only (one layer, no weights, no other
activations). The last table compiles a whole DPO gradient of the CPU model (ring backend; sequence axis 1
is its local flash fallback).

Shapes: the CPU test model (4 query heads, 2 K/V heads, head_dim 16, fp32, block 512) and, compile-only, one
Llama-3.1-8B attention layer (32 / 8 heads, head_dim 128, bf16).

``--block-kernel`` picks ring's per-block kernel (ring_kernels.py: jax, splash, cudnn, cudnn_xla) for the
attention tables. Run splash on a TPU and cudnn on a GPU: on CPU splash is Pallas interpret mode and
cudnn_xla materialises each block's mask and scores, so those CPU numbers measure plumbing, not kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import time

from lr_jax.parallel.cpu_mode import xla_flags

os.environ["XLA_FLAGS"] = xla_flags(8, os.environ.get("XLA_FLAGS", ""))  # before jax starts its backends
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lr_jax.model.attention import reference, ring, ring_kernels
from lr_jax.model.attention.layout import to_ring_order
from lr_jax.model.attention.mask import TokenInfo

GB = 1e9
BUDGET = 20 * GB


def _step(fn, hq: int, hkv: int, d: int, seq: int, dtype, block: int):
    """(jitted fwd+bwd, args) for one causal row in zig-zag order (balanced for every ring size)."""
    q = jax.ShapeDtypeStruct((1, seq, hq, d), dtype)
    kv = jax.ShapeDtypeStruct((1, seq, hkv, d), dtype)
    info = TokenInfo.causal(1, seq)

    def loss(q, k, v, info):
        return jnp.sum(fn(q, k, v, info, info, scale=d**-0.5, block_size=block).astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), (q, kv, kv, info)


def _memory(compiled) -> float:
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return float(total)


def _measure(backend: str, n: int, hq: int, hkv: int, d: int, seq: int, dtype, block: int, run: bool,
             block_kernel: str = "jax"):
    fn = reference.attention if backend == "dense" else functools.partial(ring.attention,
                                                                          block_kernel=block_kernel)
    mesh = Mesh(np.array(jax.devices()[:n]).reshape(1, 1, 1, n), ("data", "fsdp", "tensor", "sequence"))
    with contextlib.nullcontext() if n == 1 else jax.set_mesh(mesh):
        step, specs = _step(fn, hq, hkv, d, seq, dtype, block)
        compiled = step.lower(*specs).compile()
        mem = _memory(compiled)
        secs = None
        if run:
            rng = np.random.default_rng(0)
            args = [jnp.asarray(rng.normal(size=s.shape), s.dtype) for s in specs[:3]]
            info = to_ring_order(TokenInfo.causal(1, seq), n) if n > 1 else specs[3]
            args = [to_ring_order(a, n) if n > 1 else a for a in args]
            jax.block_until_ready(compiled(*args, info))  # warm-up
            t = time.perf_counter()
            jax.block_until_ready(compiled(*args, info))
            secs = time.perf_counter() - t
    return mem, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="8192,16384,32768,65536,131072")
    ap.add_argument("--time-max-seq", type=int, default=8192, help="run (time) only up to this length")
    ap.add_argument("--dense-max-seq", type=int, default=32768, help="compile dense attention up to this")
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--dpo-seqs", default="16384,65536,131072", help="DPO-step lengths ('' to skip)")
    ap.add_argument("--block-kernel", default="jax", help="ring's per-block kernel (attention tables only)")
    args = ap.parse_args()
    seqs = [int(s) for s in args.seqs.split(",") if s]
    ns = [n for n in (1, 2, 4, 8) if n <= len(jax.devices())]
    if not seqs:  # only the DPO table
        dpo_section([int(s) for s in args.dpo_seqs.split(",") if s], ns, args.block)
        return

    print("## Attention fwd+bwd, CPU test model (4/2 heads, head_dim 16, fp32), batch 1, causal, "
          f"zig-zag order, ring block kernel {args.block_kernel!r}\n")
    print("| seq | backend | sequence axis | per-device memory (MB) | step time (s) |")
    print("|---:|---|---:|---:|---:|")
    slopes: dict[tuple[str, int], float] = {}
    for seq in seqs:
        rows = [("dense", 1)] if seq <= args.dense_max_seq else []
        rows += [("ring", n) for n in ns]
        for backend, n in rows:
            run = seq <= args.time_max_seq and backend == "ring"
            kernel = args.block_kernel if backend == "ring" else "jax"
            why = ring_kernels.shape_problem(kernel, seq, n, args.block)
            if why:
                print(f"| {seq:,} | ring | {n} | n/a: {why} | |", flush=True)
                continue
            mem, secs = _measure(backend, n, 4, 2, 16, seq, jnp.float32, args.block, run, args.block_kernel)
            slopes[(backend, n)] = mem / seq
            t = f"{secs:.2f}" if secs is not None else "not run (compile-only)"
            label = "ring" if n > 1 else ("flash, no ring" if backend == "ring" else "dense (reference)")
            print(f"| {seq:,} | {label} | {n} | {mem / 1e6:,.1f} | {t} |", flush=True)

    print("\n## One Llama-3.1-8B attention layer (32/8 heads, head_dim 128, bf16), compile-only\n")
    print("| sequence axis | MB at 16k | MB at 32k | bytes/token | longest sequence in 20 GB "
          "(extrapolated) |")
    print("|---:|---:|---:|---:|---:|")
    for n in ns:
        m1, _ = _measure("ring", n, 32, 8, 128, 16384, jnp.bfloat16, args.block, False, args.block_kernel)
        m2, _ = _measure("ring", n, 32, 8, 128, 32768, jnp.bfloat16, args.block, False, args.block_kernel)
        per_tok = (m2 - m1) / 16384
        longest = 32768 + (BUDGET - m2) / per_tok
        print(f"| {n} | {m1 / 1e6:,.0f} | {m2 / 1e6:,.0f} | {per_tok:,.0f} | {longest / 1e6:,.1f} M tokens |",
              flush=True)
    if args.dpo_seqs:
        dpo_section([int(s) for s in args.dpo_seqs.split(",") if s], ns, args.block)


def dpo_section(seqs: list[int], ns: list[int], block: int) -> None:
    """Compile-only per-device memory of a whole DPO gradient (policy fwd+bwd, chunked log-probs, remat)."""
    import dataclasses

    from lr_jax.data.batch import TOKEN_FIELDS, Batch
    from lr_jax.model import ModelConfig, init_params, param_shardings
    from lr_jax.parallel.mesh import make_mesh
    from lr_jax.parallel.rules import batch_sharding
    from lr_jax.training.config import Config, DataConfig
    from lr_jax.training.step import LossSpec, batch_loss

    print("\n## DPO gradient, CPU DPO model (configs/cpu_dpo.py sizes, fp32, remat full), one "
          "[prompt | chosen | rejected] row, compile-only\n")
    print("| seq | attention | sequence axis | per-device memory (MB) |")
    print("|---:|---|---:|---:|")
    mems: dict[int, list[tuple[int, float]]] = {n: [] for n in ns}
    for seq in seqs:
        for n in ns:
            backend = "ring"  # sequence axis 1: ring's local flash fallback
            model = ModelConfig.tiny(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                                     num_heads=4, num_kv_heads=2, head_dim=16, attention_backend=backend,
                                     attention_block_size=block, remat_policy="full")
            cfg = Config(model=model, data=DataConfig(seq_len=seq, batch_size=1, pairs_per_row=1))
            cfg = dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, logprob_chunk_size=1024))
            mesh = make_mesh(sequence=n, devices=jax.devices()[:n])
            params = jax.eval_shape(lambda m=model: init_params(m, jax.random.key(0)))
            tok = jax.ShapeDtypeStruct((1, seq), jnp.int32)
            pair = jax.ShapeDtypeStruct((1, 1), jnp.float32)
            batch = {k: tok for k in TOKEN_FIELDS}
            batch.update(pair_valid=jax.ShapeDtypeStruct((1, 1), jnp.int32), ref_chosen_logps=pair,
                         ref_rejected_logps=pair)
            with jax.set_mesh(mesh):
                bs = batch_sharding(mesh)
                grad = jax.jit(jax.grad(lambda p, b, c=cfg: batch_loss(LossSpec.of(c), p, Batch.of(b))[0]),
                               in_shardings=(param_shardings(model, mesh, params),
                                             {k: (bs if v is tok else None) for k, v in batch.items()}))
                mem = _memory(grad.lower(params, batch).compile())
            label = "flash, no ring" if n == 1 else "ring"
            print(f"| {seq:,} | {label} | {n} | {mem / 1e6:,.1f} |", flush=True)
            mems[n].append((seq, mem))
    if len(seqs) < 2:
        return
    print("\n| sequence axis | bytes/token | longest row in 20 GB (linear extrapolation of the rows above) |")
    print("|---:|---:|---:|")
    for n in ns:
        (s0, m0), (s1, m1) = mems[n][0], mems[n][-1]
        per_tok = (m1 - m0) / (s1 - s0)
        print(f"| {n} | {per_tok:,.0f} | {(s1 + (BUDGET - m1) / per_tok) / 1e6:,.1f} M tokens |", flush=True)


if __name__ == "__main__":
    main()

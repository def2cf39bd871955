"""Peak memory and time of attention forward+backward: `reference` (naive) vs `blockwise` (online softmax).

    JAX_PLATFORMS=cpu python bench/attention_memory.py [--seqs 1024,2048,...] [--heads 8] [--head-dim 64]

Memory is XLA's own accounting of the compiled forward+backward (`jit(...).lower(...).compile()
.memory_analysis()`): `temp` is the scratch the program needs beyond its inputs and outputs — where a
`[seq, seq]` score matrix would live. Time is the wall time of one compiled call (after a warm-up call up to
8k tokens) on this machine. A causal mask is used, so blockwise skips the tiles above the diagonal. Reference
runs whose compiled temp exceeds `--mem-budget-gb` are not executed and print "OOM-skip".
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.model.attention import get_attention
from lr_jax.model.attention.mask import TokenInfo


def _compiled(name: str, seq: int, heads: int, head_dim: int, block: int):
    """Compiled `(q, k, v) -> (dq, dk, dv)` of sum(attention * cotangent) for one backend."""
    fn = get_attention(name)
    info = TokenInfo.causal(1, seq)

    def loss(q, k, v, cot):
        return jnp.sum(fn(q, k, v, info, info, scale=head_dim**-0.5, block_size=block) * cot)

    shape = jax.ShapeDtypeStruct((1, seq, heads, head_dim), jnp.float32)
    return jax.jit(jax.grad(loss, (0, 1, 2))).lower(shape, shape, shape, shape).compile()


def _time(compiled, seq: int, heads: int, head_dim: int) -> float:
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.normal(size=(1, seq, heads, head_dim)), jnp.float32) for _ in range(4)]
    if seq <= 8192:  # warm-up; longer runs are AOT-compiled already and one-off costs are negligible there
        jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument(
        "--mem-budget-gb", type=float, default=6.0, help="skip reference runs needing more temp"
    )
    parser.add_argument(
        "--time-max-seq", type=int, default=32768, help="only report memory above this length"
    )
    args = parser.parse_args()
    seqs = [int(s) for s in args.seqs.split(",")]
    mib = lambda b: f"{b / 2**20:,.1f}"
    print(
        f"device: {jax.devices()[0].platform}, batch 1, {args.heads} heads, head_dim {args.head_dim}, "
        f"block {args.block}, causal, float32, forward+backward\n"
    )
    print("| tokens | reference temp MiB | reference s | blockwise temp MiB | blockwise s | temp ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seq in seqs:
        cells: dict[str, tuple[str, str, float]] = {}
        for name in ("reference", "blockwise"):
            compiled = _compiled(name, seq, args.heads, args.head_dim, args.block)
            temp = compiled.memory_analysis().temp_size_in_bytes
            if name == "reference" and temp > args.mem_budget_gb * 2**30:
                cells[name] = (f"{mib(temp)} (compiled)", "OOM-skip", temp)
                continue
            secs = (
                f"{_time(compiled, seq, args.heads, args.head_dim):.2f}" if seq <= args.time_max_seq else "-"
            )
            cells[name] = (mib(temp), secs, temp)
        ratio = cells["reference"][2] / max(cells["blockwise"][2], 1)
        print(
            f"| {seq:,} | {cells['reference'][0]} | {cells['reference'][1]} | {cells['blockwise'][0]} | "
            f"{cells['blockwise'][1]} | {ratio:,.0f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""GPU numbers in one process: cuDNN vs blockwise attention, a DPO step's tokens/s and MFU, sampling tokens/s.

    python bench/gpu_bench.py attention [--seqs 8192,32768]  # fwd+bwd, bf16, [1, S, 32, 128], 8 KV heads
    python bench/gpu_bench.py dpo [--seqs 8192,32768]        # ~1.1B decoder, bf16, one shared-prefix pair
    python bench/gpu_bench.py sample [--prompt-len 2048]     # one prompt, N samples, shared-prefix KV cache
    python bench/gpu_bench.py all --smoke                    # tiny shapes: checks the code runs (any device)

Each section prints a markdown table. Times are medians of `--repeats` compiled calls after one warm-up call.
MFU = model FLOPs / (time x the device's dense bf16 peak); model FLOPs count one forward + backward (6 N per
token for the matmuls, plus causal attention's 6 x 2 x S^2/2 x layers x heads x head_dim per row, reference
forward excluded, recomputation counted as waste). The peak comes from `--peak-tflops` or the card's name.
Written for `bench/gpu_check.sh`, which runs it on a lent GPU machine; `--smoke` runs on CPU too.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lr_jax.data.batch import TOKEN_FIELDS, Batch
from lr_jax.data.packing import PackingConfig, RowBuilder, layout, stack_rows
from lr_jax.model import ModelConfig, init_params
from lr_jax.model.attention import TokenInfo, backend, get_attention
from lr_jax.model.decode import decode, prefill, row_key
from lr_jax.training import losses
from lr_jax.training.config import default_config_dict, from_config_dict
from lr_jax.training.step import LossSpec, sequence_logps

# Dense bf16 peaks (published, without sparsity), TFLOP/s, matched against `device_kind`.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
RESPONSE = 256


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    kind = jax.devices()[0].device_kind
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def _model(smoke: bool, backend_name: str) -> ModelConfig:
    """~1.1B parameters (TinyLlama's shape) in bf16, or a tiny model for `--smoke`."""
    if smoke:
        return ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                           num_kv_heads=2, head_dim=16, dtype="bfloat16", attention_backend=backend_name,
                           attention_block_size=128, remat_policy="full")
    return ModelConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                       num_heads=32, num_kv_heads=4, head_dim=64, dtype="bfloat16",
                       attention_backend=backend_name, attention_block_size=512, remat_policy="full",
                       max_position_embeddings=65536)


def _available(name: str) -> tuple[bool, str]:
    return backend(name).is_available()


def _attention_seconds(name: str, seq: int, heads: int, kv_heads: int, dim: int, args: argparse.Namespace
                       ) -> float:
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (1, seq, heads, dim), jnp.bfloat16)
    k = jax.random.normal(ks[1], (1, seq, kv_heads, dim), jnp.bfloat16)
    v = jax.random.normal(ks[2], (1, seq, kv_heads, dim), jnp.bfloat16)
    info = TokenInfo.causal(1, seq)
    attn = get_attention(name)

    def loss(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        out = attn(q, k, v, info, info, scale=dim**-0.5, block_size=args.block)
        return jnp.sum(out.astype(jnp.float32))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return _timed(lambda: grad(q, k, v), args.repeats)


def attention_table(args: argparse.Namespace) -> None:
    heads, kv_heads, dim = (4, 2, 16) if args.smoke else (32, 8, 128)
    print("| backend | seq | fwd+bwd (ms) | TFLOP/s |\n|---|---:|---:|---:|")
    for seq in args.seqs:
        flops = 3.5 * 2 * 2 * seq * seq / 2 * heads * dim  # fwd (2 matmuls) + bwd (~2.5x), causal half
        for name in args.backends:
            ok, why = _available(name)
            if not ok:
                print(f"| {name} | {seq} | skipped: {why} | |")
                continue
            s = _attention_seconds(name, seq, heads, kv_heads, dim, args)
            print(f"| {name} | {seq} | {1e3 * s:.1f} | {flops / s / 1e12:.1f} |", flush=True)


def _pair_batch(seq: int, vocab: int, block: int) -> dict[str, jax.Array]:
    """One row `[prompt | chosen | rejected]` of exactly `seq` tokens (the layout holds P + 2R + 1)."""
    rng = np.random.default_rng(0)
    resp = min(RESPONSE, seq // 8)
    prompt = rng.integers(10, vocab, seq - 2 * resp - 1)
    chosen, rejected = rng.integers(10, vocab, resp), rng.integers(10, vocab, resp)
    seg = layout(prompt, [chosen, rejected], pad_id=0)
    pc = PackingConfig(seq_len=-(-len(seg) // block) * block)
    row = RowBuilder(pc)
    row.add(seg)
    arrays = stack_rows([row], 1, pc)
    return {k: jnp.asarray(arrays[k]) for k in TOKEN_FIELDS}


def _model_flops(cfg: ModelConfig, n_params: int, tokens: int) -> float:
    attn = 6 * 2 * tokens * tokens / 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    return 6 * n_params * tokens + attn


def _dpo_seconds(model: ModelConfig, seq: int, repeats: int) -> tuple[float, int]:
    """Median seconds of one jitted DPO + 0.1 SFT step with AdamW, and the parameter count."""
    c = default_config_dict(model)
    c.data.seq_len, c.data.batch_size, c.data.pairs_per_row = seq, 1, 1
    c.dpo.logprob_chunk_size = 512
    spec = LossSpec.of(from_config_dict(c))
    batch = _pair_batch(seq, model.vocab_size, model.attention_block_size)
    params = init_params(model, jax.random.key(0))
    opt = optax.adamw(1e-6)
    state = (params, opt.init(params))

    def loss_fn(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        tok, chosen, rejected, _ = sequence_logps(spec, params, Batch.of(batch))
        dpo, _, _ = losses.dpo_loss(jnp.sum(chosen), jnp.sum(rejected), -2000.0, -2000.0, beta=0.15)
        return dpo + 0.1 * losses.sft_loss(tok, batch["loss_mask"], batch["branch_ids"])

    @jax.jit
    def step(state: Any, batch: dict[str, jax.Array]) -> Any:
        params, opt_state = state
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return _timed(lambda: step(state, batch), repeats), sum(x.size for x in jax.tree.leaves(params))


def dpo_table(args: argparse.Namespace) -> None:
    peak = _peak(args)
    print("| backend | seq | step (s) | tokens/s | model TFLOP/s | MFU |\n|---|---:|---:|---:|---:|---:|")
    for seq in args.seqs:
        for name in args.backends:
            ok, why = _available(name)
            if not ok:
                print(f"| {name} | {seq} | skipped: {why} | | | |")
                continue
            model = _model(args.smoke, name)
            s, n_params = _dpo_seconds(model, seq, args.repeats)
            flops = _model_flops(model, n_params, seq)
            mfu = f"{100 * flops / s / peak:.1f} %" if peak else "n/a"
            print(f"| {name} | {seq} | {s:.3f} | {seq / s:,.0f} | {flops / s / 1e12:.1f} | {mfu} |",
                  flush=True)


def _sample_seconds(model: ModelConfig, params: Any, prompt: np.ndarray, n: int, args: argparse.Namespace
                    ) -> tuple[float, float]:
    tokens, lens = jnp.asarray(prompt[None]), jnp.asarray([len(prompt)], jnp.int32)
    keys = jnp.stack([row_key(0, "bench", k) for k in range(n)])
    pre_s = _timed(lambda: prefill(model, params, tokens, lens), args.repeats)
    pre = prefill(model, params, tokens, lens)
    kw = dict(num_samples=n, max_new_tokens=args.new, temperature=1.0)
    return pre_s, _timed(lambda: decode(model, params, pre, keys, **kw), args.repeats)


def sample_table(args: argparse.Namespace) -> None:
    model = _model(args.smoke, "blockwise")
    params = init_params(model, jax.random.key(0))
    prompt = np.random.default_rng(0).integers(10, model.vocab_size, args.prompt_len)
    print("| samples | prompt | new | prefill (s) | decode (s) | decode tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.samples:
        pre_s, dec_s = _sample_seconds(model, params, prompt, n, args)
        print(f"| {n} | {args.prompt_len} | {args.new} | {pre_s:.3f} | {dec_s:.3f} | "
              f"{n * args.new / dec_s:,.0f} |", flush=True)


SECTIONS = {"attention": attention_table, "dpo": dpo_table, "sample": sample_table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("section", choices=[*SECTIONS, "all"])
    ap.add_argument("--seqs", default=None, help="comma-separated lengths (default 8192,32768; smoke 256)")
    ap.add_argument("--backends", default="cudnn,blockwise")
    ap.add_argument("--block", type=int, default=512, help="blockwise tile edge (attention section)")
    ap.add_argument("--samples", default="1,8", help="samples per prompt (sample section)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 2048; smoke 64")
    ap.add_argument("--new", type=int, default=None, help="new tokens per sample; default 128, smoke 8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: checks that every section runs")
    args = ap.parse_args()
    args.seqs = [int(s) for s in (args.seqs or ("256" if args.smoke else "8192,32768")).split(",")]
    args.backends = args.backends.split(",")
    args.samples = [int(s) for s in args.samples.split(",")]
    args.prompt_len = args.prompt_len or (64 if args.smoke else 2048)
    args.new = args.new or (8 if args.smoke else 128)
    if args.smoke:
        args.block, args.repeats = 128, 1
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()}; jax {jax.__version__}")
    for name in SECTIONS if args.section == "all" else [args.section]:
        print(f"\n## {name}\n")
        SECTIONS[name](args)


if __name__ == "__main__":
    main()

"""DPO step time and compiled peak memory: shared-prefix packing vs. two separate sequences.

One preference pair (prompt of P tokens, two 256-token responses) through a 4-layer, 256-wide decoder with a
32k vocabulary, blockwise attention, chunked log-probs: a full train step (forward, backward, AdamW update)
with the sigmoid DPO loss (β = 0.15) plus 0.1 × SFT on chosen.

* shared:   one row ``[prompt | chosen | rejected]`` (lr_jax.data.packing.layout), ``P - 1 + 2·257`` tokens
* separate: two rows ``prompt + chosen`` and ``prompt + rejected``, ``2·(P + 256)`` tokens

Memory is XLA's compiled `memory_analysis()` (temp = activations/workspace; total = arguments + outputs +
temp - aliased); time is the median wall time of `--repeats` executed steps after compilation.

    python bench/dpo_step.py                      # prompts 2048, 8192, 16384
    python bench/dpo_step.py --prompts 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lr_jax.data.batch import TOKEN_FIELDS, Batch
from lr_jax.data.packing import PackingConfig, RowBuilder, layout, pair_to_separate_sequences, stack_rows
from lr_jax.model import ModelConfig, init_params
from lr_jax.training import losses
from lr_jax.training.config import default_config_dict, from_config_dict
from lr_jax.training.step import LossSpec, sequence_logps

RESPONSE = 256
BLOCK = 256


def _cfg(seq_len: int):
    model = ModelConfig(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=64, attention_backend="blockwise",
                        attention_block_size=BLOCK, scan_layers=True, remat_policy="full")
    c = default_config_dict(model)
    c.data.seq_len, c.data.batch_size, c.data.pairs_per_row = seq_len, 1, 1
    c.dpo.logprob_chunk_size = 512
    return from_config_dict(c)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _batches(prompt_len: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    prompt = rng.integers(10, 32000, prompt_len)
    chosen, rejected = rng.integers(10, 32000, RESPONSE), rng.integers(10, 32000, RESPONSE)
    seg = layout(prompt, [chosen, rejected], pad_id=0)
    pc = PackingConfig(seq_len=_round_up(len(seg), BLOCK))
    row = RowBuilder(pc)
    row.add(seg)
    shared = stack_rows([row], 1, pc)
    separate = pair_to_separate_sequences(prompt, chosen, rejected, pad_id=0,
                                          seq_len=_round_up(prompt_len + RESPONSE, BLOCK))
    pick = lambda arrays: {k: arrays[k] for k in TOKEN_FIELDS}
    return {"shared": pick(shared), "separate": pick(separate)}


def _step_fn(cfg, opt):
    def loss_fn(params, batch, ref):
        tok, chosen, rejected, _ = sequence_logps(LossSpec.of(cfg), params, Batch.of(batch))
        # Shared: one row holds both branches. Separate: row 0 holds chosen, row 1 rejected. Summing over
        # rows gives the pair's two sequence log-probs in both layouts.
        c, r = jnp.sum(chosen), jnp.sum(rejected)
        dpo, _, _ = losses.dpo_loss(c, r, ref[0], ref[1], beta=0.15)
        sft = losses.sft_loss(tok, batch["loss_mask"], batch["branch_ids"])
        return dpo + 0.1 * sft

    def step(params, opt_state, batch, ref):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, ref)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def bench(prompt_len: int, repeats: int) -> list[dict]:
    rows = []
    batches = _batches(prompt_len, np.random.default_rng(0))
    for mode in ("shared", "separate"):
        batch = {k: jnp.asarray(v) for k, v in batches[mode].items()}
        cfg = _cfg(batch["tokens"].shape[1])
        params = init_params(cfg.model, jax.random.key(0))
        opt = optax.adamw(1e-6)
        opt_state = opt.init(params)
        ref = jnp.asarray([-2000.0, -2000.0])
        step = jax.jit(_step_fn(cfg, opt), donate_argnums=(0, 1))
        compiled = step.lower(params, opt_state, batch, ref).compile()
        mem = compiled.memory_analysis()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            params, opt_state, loss = compiled(params, opt_state, batch, ref)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t0)
        total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                 - mem.alias_size_in_bytes)
        real_tokens = int(np.sum(batches[mode]["segment_ids"] > 0))
        rows.append({"prompt": prompt_len, "mode": mode, "rows x seq": f"{batch['tokens'].shape[0]} x "
                     f"{batch['tokens'].shape[1]}", "tokens": real_tokens, "step_s": statistics.median(times),
                     "temp_mib": mem.temp_size_in_bytes / 2**20, "total_mib": total / 2**20,
                     "loss": float(loss)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default="2048,8192,16384")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()}; jax {jax.__version__}\n")
    print("| prompt | layout | rows × seq | real tokens | step time (s) | temp memory (MiB) | "
          "total memory (MiB) | speed-up | memory saving |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for p in (int(x) for x in args.prompts.split(",")):
        rows = bench(p, args.repeats)
        sep = rows[1]
        for r in rows:
            speed = sep["step_s"] / r["step_s"]
            save = 1 - r["total_mib"] / sep["total_mib"]
            print(f"| {r['prompt']} | {r['mode']} | {r['rows x seq']} | {r['tokens']} | {r['step_s']:.2f} | "
                  f"{r['temp_mib']:.0f} | {r['total_mib']:.0f} | {speed:.2f}× | {100 * save:.0f}% |",
                  flush=True)


if __name__ == "__main__":
    main()

"""Decode throughput of `lr_jax.model.decode`: shared-prefix KV cache vs one prefix copy per row.

    JAX_PLATFORMS=cpu python bench/sample_throughput.py [--rows 1,4,16] [--prompt-len 1024] [--new 32]

One prompt, `rows` samples of it. "shared": prefill once (P=1, N=rows), every row reads one prefix copy.
"per-row": the prompt repeated `rows` times (P=rows, N=1), as a sampler without prefix sharing does.
Times are wall seconds of compiled calls after a warm-up (no EOS, so every row runs `--new` steps);
decode tok/s = rows x new / decode time. KV MB = prefix + tail cache (K and V) in the compute dtype.
Random-weight model on a single device (no mesh).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.model import ModelConfig, init_params
from lr_jax.model.decode import decode, prefill, row_key


def _run(cfg: ModelConfig, params: dict, prompt: np.ndarray, P: int, N: int, new: int) -> tuple[float, float]:
    tokens = jnp.asarray(np.repeat(prompt[None], P, axis=0))
    lens = jnp.full((P,), prompt.shape[0], jnp.int32)
    keys = jnp.stack([row_key(0, "bench", k) for k in range(P * N)])
    kw = dict(num_samples=N, max_new_tokens=new, temperature=1.0)
    jax.block_until_ready(decode(cfg, params, prefill(cfg, params, tokens, lens), keys, **kw))  # compile
    t0 = time.perf_counter()
    pre = jax.block_until_ready(prefill(cfg, params, tokens, lens))
    t1 = time.perf_counter()
    jax.block_until_ready(decode(cfg, params, pre, keys, **kw))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,4,16")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--new", type=int, default=32)
    args = ap.parse_args()
    cfg = ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=4, num_heads=8,
                      num_kv_heads=2, head_dim=32, attention_backend="blockwise", attention_block_size=256)
    params = init_params(cfg, jax.random.key(0))
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt_len).astype(np.int32)
    per_tok = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4  # K+V bytes per token (fp32)
    print(f"{jax.devices()[0].platform}  model: {cfg.num_layers}L d{cfg.hidden_size}"
          f"  prompt {args.prompt_len}  new {args.new}")
    print(f"{'rows':>5} {'mode':>8} {'prefill s':>10} {'decode s':>9} {'decode tok/s':>13} {'KV MB':>8}")
    for rows in (int(r) for r in args.rows.split(",")):
        for mode, P, N in (("shared", 1, rows), ("per-row", rows, 1)):
            t_pre, t_dec = _run(cfg, params, prompt, P, N, args.new)
            kv_mb = (P * args.prompt_len + rows * args.new) * per_tok / 2**20
            print(f"{rows:>5} {mode:>8} {t_pre:>10.3f} {t_dec:>9.3f} {rows * args.new / t_dec:>13.0f} "
                  f"{kv_mb:>8.1f}")


if __name__ == "__main__":
    main()

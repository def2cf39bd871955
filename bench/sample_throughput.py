"""Decode throughput of `lr_jax.model.decode`: shared-prefix KV cache vs one prefix copy per row.

    JAX_PLATFORMS=cpu python bench/sample_throughput.py [--rows 1,4,16] [--prompt-len 1024] [--new 32] \\
        [--mesh DATA,FSDP,TENSOR] [--prompts 1]

One prompt, `rows` samples of it. "shared": prefill once (P=1, N=rows), every row reads one prefix copy.
"per-row": the prompt repeated `rows` times (P=rows, N=1), as a sampler without prefix sharing does.
Times are wall seconds of compiled calls after a warm-up (no EOS, so every row runs `--new` steps);
decode tok/s = rows x new / decode time. KV MB = prefix + tail cache (K and V) in the compute dtype.
Random-weight model; single device unless `--mesh` (then params use the trainer's `param_shardings` and
the `--prompts` copies of the prompt, with their rows, are split over data x fsdp, as `lr_jax.sample --mesh`
does; rows = samples per prompt, tok/s counts all prompts' rows).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from lr_jax.model import ModelConfig, init_params
from lr_jax.model.decode import decode, prefill, row_key, shard_params
from lr_jax.parallel.mesh import make_mesh
from lr_jax.parallel.rules import logical_to_spec


def _rows(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    if mesh is None:
        return jnp.asarray(x)
    names = ("batch",) + (None,) * (x.ndim - 1)
    return jax.device_put(x, NamedSharding(mesh, logical_to_spec(names, mesh, x.shape)))


def _run(cfg: ModelConfig, params: dict, prompt: np.ndarray, P: int, N: int, new: int,
         mesh: Mesh | None = None) -> tuple[float, float]:
    tokens = _rows(np.repeat(prompt[None], P, axis=0), mesh)
    lens = _rows(np.full((P,), prompt.shape[0], np.int32), mesh)
    keys = jnp.stack([row_key(0, "bench", k) for k in range(P * N)])
    keys = keys if mesh is None else _rows(keys, mesh)
    kw = dict(num_samples=N, max_new_tokens=new, temperature=1.0)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
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
    ap.add_argument("--mesh", default="", help="DATA,FSDP,TENSOR: run sharded (shared prefix only)")
    ap.add_argument("--prompts", type=int, default=1, help="prompt copies per batch (with --mesh)")
    args = ap.parse_args()
    cfg = ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=4, num_heads=8,
                      num_kv_heads=2, head_dim=32, attention_backend="blockwise", attention_block_size=256)
    params = init_params(cfg, jax.random.key(0))
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt_len).astype(np.int32)
    if args.mesh:
        d, f, t = (int(x) for x in args.mesh.split(","))
        mesh = make_mesh(d, f, t, 1, devices=jax.devices()[:d * f * t])
        params = shard_params(cfg, params, mesh)
        print(f"{jax.devices()[0].platform} x{d * f * t}  mesh data={d} fsdp={f} tensor={t}"
              f"  prompts {args.prompts}  prompt {args.prompt_len}  new {args.new}")
        print(f"{'rows':>5} {'prefill s':>10} {'decode s':>9} {'decode tok/s':>13}")
        for rows in (int(r) for r in args.rows.split(",")):
            t_pre, t_dec = _run(cfg, params, prompt, args.prompts, rows, args.new, mesh)
            print(f"{rows:>5} {t_pre:>10.3f} {t_dec:>9.3f} {args.prompts * rows * args.new / t_dec:>13.0f}")
        return
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

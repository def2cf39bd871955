"""N samples of one long prompt on SmolLM2-135M-Instruct: lr_jax.sample's sampler vs `transformers.generate`.

    nice -n 5 .venv/bin/python bench/real_sample.py                    # 2k-token prompt, N = 4 and 8
    .venv/bin/python bench/real_sample.py --smoke                      # tiny random Llama, seconds

One chat prompt of `--prompt` tokens (real English prose through the chat template), `--new` new tokens per
sample at temperature 1 (no top-k / top-p), CPU, float32. EOS is switched off on both sides so every sample
has exactly `--new` tokens (lr_jax: `Policy.eos = ()`; transformers: `min_new_tokens = --new`).

* lr_jax: `lr_jax.sample.Policy.load` + `Policy.complete` (what `python -m lr_jax.sample` and the loop
  call): the prompt is prefilled once and the N rows share its KV cache (`lr_jax.model.decode`).
* transformers: `AutoModelForCausalLM.generate(do_sample=True, num_return_sequences=N)` on the HF export of
  the same weights (sdpa attention, its KV cache): the prompt is expanded to N rows before prefill.

Each side is its own process (peak RSS = `getrusage`); after a warm-up call per N on each side (lr_jax: the
same call, it compiles there; transformers: a 2-token call), the sides' timed calls alternate, and each figure
is the median of `--repeats`. Time is the wall time of the whole call (prefill + decode + detokenising);
tokens/s = N × new / time. Each N's rows print as soon as it is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_common as rc

PROMPT, NEW = 2048, 64


def lr_jax_worker(spec: dict[str, Any]) -> None:
    """`run N`: N samples of the prompt through `Policy.complete`; answers wall time and tokens made."""
    t0 = time.perf_counter()
    import jax

    from lr_jax.model.decode import row_key
    from lr_jax.sample import Policy

    policy = Policy.load(spec["model"], mesh="1,1,1")
    policy = dataclasses.replace(policy, eos=())  # every row makes exactly `new` tokens
    rc.answer({"ready": True, "setup_s": time.perf_counter() - t0, "versions": f"jax {jax.__version__}"})
    for cmd in rc.commands():
        if cmd == "quit":
            rc.answer({"peak_rss_mib": rc.peak_rss_mib()})
            return
        n = int(cmd.split()[1])
        keys = [row_key(0, "bench", k) for k in range(n)]
        t = time.perf_counter()
        out = policy.complete([spec["prompt_ids"]], keys, num_samples=n, max_new_tokens=spec["new"],
                              temperature=1.0)
        rc.answer({"wall_s": time.perf_counter() - t, "tokens": sum(c.num_tokens for c in out[0]),
                   "rss_mib": rc.peak_rss_mib()})


def hf_worker(spec: dict[str, Any]) -> None:
    """`run N`: `generate(num_return_sequences=N)`; `warm`: a 16-token prompt, 2 new tokens (first-call
    overheads; transformers compiles nothing, so a full-size warm-up would only cost minutes)."""
    t0 = time.perf_counter()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32).eval()
    ids = torch.tensor([spec["prompt_ids"]])
    rc.answer({"ready": True, "setup_s": time.perf_counter() - t0,
               "versions": f"torch {torch.__version__}, transformers {transformers.__version__}"})
    for cmd in rc.commands():
        if cmd == "quit":
            rc.answer({"peak_rss_mib": rc.peak_rss_mib()})
            return
        warm = cmd == "warm"
        n, new, x = (1, 2, ids[:, :16]) if warm else (int(cmd.split()[1]), spec["new"], ids)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, num_return_sequences=n, max_new_tokens=new,
                                 min_new_tokens=new, pad_token_id=model.config.eos_token_id)
        rc.answer({"wall_s": time.perf_counter() - t, "tokens": int((out.shape[1] - x.shape[1]) * n),
                   "rss_mib": rc.peak_rss_mib()})


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        spec = json.loads(Path(sys.argv[3]).read_text())
        (lr_jax_worker if sys.argv[2] == "lr_jax" else hf_worker)(spec)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", default="4,8", help="N values")
    ap.add_argument("--prompt", type=int, default=PROMPT, help="prompt tokens")
    ap.add_argument("--new", type=int, default=NEW, help="new tokens per sample")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per side and N (median)")
    ap.add_argument("--smoke", action="store_true", help="tiny random Llama, short prompt: seconds")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="real_sample-") as tmp:
        work = Path(tmp)
        if args.smoke:
            hf_dir = rc.smoke_model_dir(work / "model")
            model = str(hf_dir)
            args.prompt, args.new, args.repeats = 48, 8, 1
            samples = [2]
        else:
            flax_dir, hf_dir = rc.real_model_dirs()
            model = str(flax_dir)
            samples = [int(x) for x in args.samples.split(",")]
        tok = AutoTokenizer.from_pretrained(str(hf_dir))
        spec = {"model": model, "hf_dir": str(hf_dir), "new": args.new,
                "prompt_ids": rc.chat_prompt_ids(tok, args.prompt, seed=args.prompt)}
        (work / "spec.json").write_text(json.dumps(spec))
        print(f"# {'smoke: tiny random Llama' if args.smoke else 'SmolLM2-135M-Instruct'}; "
              f"{rc.machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
        print(f"# load average before (1/5/15 min): {rc.load_average()}")
        print(f"# prompt {args.prompt} tokens, {args.new} new tokens per sample, temperature 1, float32; "
              f"median of {args.repeats} after a warm-up\n")
        print("| samples N | side | wall time (s) | new tokens / s | peak RSS so far (MiB) | "
              "lr_jax speed-up |")
        print("|---:|---|---:|---:|---:|---:|", flush=True)
        names = ["lr_jax", "transformers"]
        workers: dict[str, rc.Worker] = {}
        info: dict[str, dict[str, Any]] = {}
        try:
            for name in names:  # loaded side by side (untimed); only the timed calls alternate
                argv = [sys.executable, __file__, "--worker", name, str(work / "spec.json")]
                workers[name] = rc.Worker(argv, name)
            for name in names:
                info[name] = workers[name].read()
            for n in samples:  # a row pair per N as soon as it is measured
                _measure(workers, n, args)
            for name, w in workers.items():
                info[name]["peak_rss_mib"] = w.close()["peak_rss_mib"]
        finally:
            for w in workers.values():
                if w.proc.poll() is None:
                    w.proc.kill()
        print(f"\n# load average after: {rc.load_average()}")
        print("# versions: " + "; ".join(info[n]["versions"] for n in names))
        peaks = ", ".join(f"{n} {info[n]['peak_rss_mib']:.0f} MiB" for n in names)
        print(f"# peak RSS over the whole run: {peaks}")


def _measure(workers: dict[str, rc.Worker], n: int, args: argparse.Namespace) -> None:
    """Warm-ups, then `--repeats` alternating timed calls of N samples on each side; prints the two rows."""
    times: dict[str, list[float]] = {}
    rss: dict[str, float] = {}
    names = list(workers)
    for name in names:
        r = workers[name].call(f"run {n}" if name == "lr_jax" else "warm")
        print(f"  {name:12} N={n} warm-up {r['wall_s']:.2f} s", file=sys.stderr, flush=True)
    for i in range(args.repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            r = workers[name].call(f"run {n}")
            assert r["tokens"] == n * args.new, r  # EOS off: every sample is full length
            times.setdefault(name, []).append(r["wall_s"])
            rss[name] = r["rss_mib"]
            print(f"  {name:12} N={n} {r['wall_s']:.2f} s", file=sys.stderr, flush=True)
    lj, hf = rc.median(times["lr_jax"]), rc.median(times["transformers"])
    for name, t in (("lr_jax", lj), ("transformers", hf)):
        speed = f"{hf / lj:.2f}×" if name == "lr_jax" else ""
        print(f"| {n} | {name} | {t:.2f} | {n * args.new / t:.1f} | {rss[name]:.0f} | {speed} |", flush=True)


if __name__ == "__main__":
    main()

"""One DPO train step on SmolLM2-135M-Instruct (30 layers, vocab 49k): lr_jax vs TRL's `DPOTrainer`, on CPU.

    nice -n 5 .venv/bin/python bench/real_dpo_step.py                  # prompts 1024,4096; full and LoRA
    .venv/bin/python bench/real_dpo_step.py --smoke                    # tiny random Llama, seconds

One preference pair: a chat prompt of P tokens (real English prose through the chat template) with a
128-token chosen and a 128-token rejected response (EOS last), batch 1 pair. The step is the same on both
sides: sigmoid DPO (β 0.1) + 0.1 × the mean NLL of the chosen tokens, the reference log-probs computed in
the step (full: a frozen copy of the weights; LoRA rank 16 on q/k/v/o/gate/up/down: the base with the
adapters off), backward, global-norm clip 1.0, AdamW; float32.

* lr_jax: the trainer's own jitted step (`lr_jax.training.program.build`) on one shared-prefix row
  ``[prompt | chosen | rejected]`` (P - 1 + 2 × 129 tokens, padded to the attention block), blockwise
  attention, layers scanned; no remat at 1k (fastest), full remat at 4k (no remat needs 8.9 GiB of XLA
  temp memory there, too much beside the TRL process and other jobs on this 23 GiB box), `--remat`.
* TRL (`bench/real_dpo_step_trl.py`, its own venv: `--trl-python`, default `$LR_JAX_TRL_PYTHON` or
  /work/venvs/trl/bin/python): `DPOTrainer.train()` on the same token ids, two rows (prompt + chosen, prompt
  + rejected: 2 × (P + 128) tokens), its defaults otherwise (gradient checkpointing on, `--trl-gc off`
  turns it off), fp32, peft for LoRA.

Each side runs in its own process, both started for each (P, full|LoRA) case; after
`--warmup` steps each, the two sides' timed steps alternate (lr_jax, TRL, TRL, lr_jax, ...), so load from
other jobs falls on both alike. Time = median wall time of `--repeats` steps (lr_jax: compiled, after
compilation; TRL: `on_step_begin` -> `on_step_end`); memory = each process's peak RSS (`getrusage`). A side
whose step exceeds `--max-step-s` is not run again (its row says so). Both sides start from the same weights,
so their first-step losses must agree (log 2 + 0.1 × NLL): printed as a check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_common as rc

RESPONSE = 128
BETA, SFT_WEIGHT = 0.1, 0.1
LR = {"full": 1e-6, "lora": 1e-4}
LORA = {"rank": 16, "alpha": 32.0, "targets": ["q", "k", "v", "o", "gate", "up", "down"]}
HF_TARGET = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
             "down": "down_proj"}


# ---------------------------------------------------------------------------------------------- lr_jax worker
def lr_jax_worker(spec: dict[str, Any]) -> None:
    """The lr_jax side: the trainer's step program on one shared-prefix row; answers `run` / `quit`."""
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lr_jax import convert
    from lr_jax.data.batch import Batch
    from lr_jax.data.packing import PackingConfig, RowBuilder, layout, stack_rows
    from lr_jax.model import AbstractModel, lora
    from lr_jax.model.config import LoRAConfig
    from lr_jax.parallel.mesh import make_mesh
    from lr_jax.training import program
    from lr_jax.training.config import default_config_dict, from_config_dict
    from lr_jax.training.step import make_optimizer, trainable

    block = spec["block"]
    cfg, params = convert.load(spec["model"], attention_backend="blockwise", attention_block_size=block,
                               scan_layers=True, remat_policy=spec["remat"], dtype="float32")
    if spec["mode"] == "lora":
        cfg = cfg.replace(lora=LoRAConfig(rank=LORA["rank"], alpha=LORA["alpha"], dropout=0.0,
                                          targets=tuple(LORA["targets"])))
        params = lora.with_adapters(AbstractModel.of(cfg), params, jax.random.key(0))
    responses = [np.asarray(spec["chosen_ids"]), np.asarray(spec["rejected_ids"])]
    seg = layout(np.asarray(spec["prompt_ids"]), responses, pad_id=cfg.pad_token_id or 0,
                 example_id=0)  # >= 0: a real pair (pair_valid 1)
    seq_len = -(-len(seg) // block) * block
    pc = PackingConfig(seq_len=seq_len, pad_id=cfg.pad_token_id or 0)
    row = RowBuilder(pc)
    row.add(seg)
    arrays = stack_rows([row], 1, pc)
    arrays.pop("example_ids")

    c = default_config_dict(cfg)
    c.data.seq_len, c.data.batch_size, c.data.pairs_per_row = seq_len, 1, 1
    c.dpo.beta, c.dpo.sft_weight, c.dpo.reference = BETA, SFT_WEIGHT, "model"
    c.dpo.logprob_chunk_size = spec["chunk"]
    c.optim.lr, c.optim.schedule, c.optim.grad_clip = LR[spec["mode"]], "constant", 1.0
    c.optim.b2 = 0.999  # torch's AdamW default, as TRL runs it
    c.train.steps = 10_000
    config = from_config_dict(c)
    mesh = make_mesh(1, 1, 1, 1, devices=jax.devices()[:1])
    optimizer, _ = make_optimizer(config.optim, config.train.steps)
    prog = program.build(config, mesh, optimizer)
    with jax.set_mesh(mesh):
        p = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), params, prog.param_sh)
        opt_state = jax.jit(lambda q: optimizer.init(trainable(prog.model, q)),
                            out_shardings=prog.state_sh["opt_state"])(p)
        state = {"params": p, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
        extra: tuple[Any, ...] = ()
        if prog.use_ref_model:  # a real copy: the step donates the state's buffers
            extra = (jax.tree.map(lambda x, s: jax.device_put(x, s, may_alias=False), p, prog.param_sh),)
        batch = Batch.of({k: jax.device_put(v, prog.batch_sh.present()[k]) for k, v in arrays.items()})
        t1 = time.perf_counter()
        compiled = prog.step.lower(state, batch, *extra).compile()
        compile_s = time.perf_counter() - t1
    mem = compiled.memory_analysis()
    n_train = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable(prog.model, p)))
    rc.answer({"ready": True, "setup_s": time.perf_counter() - t0, "compile_s": compile_s,
               "trainable_params": n_train, "seq_tokens": seq_len, "real_tokens": len(seg),
               "temp_mib": mem.temp_size_in_bytes / 2**20, "versions": f"jax {jax.__version__}"})
    for cmd in rc.commands():
        if cmd == "quit":
            rc.answer({"peak_rss_mib": rc.peak_rss_mib()})
            return
        t = time.perf_counter()
        with jax.set_mesh(mesh):
            state, metrics = compiled(state, batch, *extra)
            loss = float(jax.block_until_ready(metrics["loss"]))
        rc.answer({"step_s": time.perf_counter() - t, "loss": loss, "rss_mib": rc.peak_rss_mib()})


# ---------------------------------------------------------------------------------------------- orchestrator
def _case(args: argparse.Namespace, work: Path, flax_src: str, hf_dir: Path, tok: Any, prompt: int,
          mode: str, names: list[str]) -> dict[str, Any]:
    """One (prompt length, full|lora) case on the sides `names`, interleaved: their measurements."""
    spec = {"prompt_ids": rc.chat_prompt_ids(tok, prompt, seed=prompt),
            "chosen_ids": rc.response_ids(tok, args.response, seed=1),
            "rejected_ids": rc.response_ids(tok, args.response, seed=2),
            "mode": mode, "beta": BETA, "sft_weight": SFT_WEIGHT, "lr": LR[mode]}
    lj = dict(spec, model=flax_src, block=args.block, remat=args.remat, chunk=args.chunk)
    trl = dict(spec, hf_dir=str(hf_dir), gradient_checkpointing=args.trl_gc == "on",
               lora={**LORA, "targets": [HF_TARGET[t] for t in LORA["targets"]]},
               out_dir=str(work / f"trl-{prompt}-{mode}"))
    paths = {}
    for name, s in (("lr_jax", lj), ("trl", trl)):
        paths[name] = work / f"{name}-{prompt}-{mode}.json"
        paths[name].write_text(json.dumps(s))
    sides: dict[str, dict[str, Any]] = {}
    workers: dict[str, rc.Worker] = {}
    trl_script = str(Path(__file__).with_name("real_dpo_step_trl.py"))
    argv = {"lr_jax": [sys.executable, __file__, "--worker", str(paths["lr_jax"])],
            "trl": [args.trl_python, trl_script, str(paths["trl"])]}
    try:
        # Interleaved: both sides set up side by side (untimed), then their steps alternate. --sequential:
        # one side after the other (peak memory = the larger side, not the sum; pairs less tightly).
        for group in [[n] for n in names] if args.sequential else [names]:
            for name in group:
                workers[name] = rc.Worker(argv[name], f"{name}-{prompt}-{mode}")
            for name in group:
                sides[name] = {**workers[name].read(), "steps": [], "losses": [], "stopped": False}
            for i in range(args.warmup + args.repeats):
                for name in group if i % 2 == 0 else group[::-1]:
                    _step(workers[name], sides[name], args, i, f"{name:6} P={prompt} {mode:4}")
            for name in group:
                sides[name]["peak_rss_mib"] = workers[name].close()["peak_rss_mib"]
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
    return sides


def _step(w: rc.Worker, s: dict[str, Any], args: argparse.Namespace, i: int, label: str) -> None:
    """Step `i` of one side (a warm-up while i < --warmup); a side slower than --max-step-s stops."""
    if s["stopped"]:
        return
    r = w.call("run")
    s["losses"].append(r["loss"])
    if i >= args.warmup or r["step_s"] > args.max_step_s:
        s["steps"].append(r["step_s"])
    s["stopped"] = r["step_s"] > args.max_step_s
    print(f"  {label} step {i} {'(warm-up) ' if i < args.warmup else ''}{r['step_s']:.2f} s loss "
          f"{r['loss']:.5f}", file=sys.stderr, flush=True)


def _fmt_steps(s: dict[str, Any], max_step_s: float) -> str:
    if not s["steps"]:
        return "—"
    if s["stopped"]:
        return f"{s['steps'][-1]:.1f} (1 step, > {max_step_s:.0f} s: stopped)"
    return f"{rc.median(s['steps']):.2f}"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        lr_jax_worker(json.loads(Path(sys.argv[2]).read_text()))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default="1024,4096", help="prompt lengths in tokens")
    ap.add_argument("--modes", default="full,lora", help="full and/or lora")
    ap.add_argument("--response", type=int, default=RESPONSE, help="tokens per response (EOS included)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per side (median)")
    ap.add_argument("--max-step-s", type=float, default=300.0, help="a side slower than this is not re-run")
    ap.add_argument("--block", type=int, default=256, help="lr_jax blockwise attention block")
    ap.add_argument("--remat", default="none,full",
                    help="lr_jax remat policy, or one per prompt length (default: none at 1k; full at 4k, "
                    "where no remat needs ~9 GiB of activations beside TRL and other jobs)")
    ap.add_argument("--chunk", type=int, default=512, help="lr_jax log-prob chunk (positions)")
    ap.add_argument("--sequential", action="store_true",
                    help="run the sides one after the other (when both at once would not fit in memory)")
    ap.add_argument("--trl-gc", choices=("on", "off"), default="on", help="TRL gradient checkpointing")
    ap.add_argument("--trl-python", default=os.environ.get(rc.TRL_PYTHON_ENV, rc.DEFAULT_TRL_PYTHON),
                    help="python of a venv with torch, transformers, trl, peft")
    ap.add_argument("--smoke", action="store_true", help="tiny random Llama, short prompts: seconds")
    args = ap.parse_args()
    trl_skip = "" if Path(args.trl_python).is_file() else \
        f"skipped: no TRL venv at {args.trl_python} (--trl-python / ${rc.TRL_PYTHON_ENV})"
    names = ["lr_jax"] if trl_skip else ["lr_jax", "trl"]
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="real_dpo_step-") as tmp:
        work = Path(tmp)
        if args.smoke:
            hf_dir = rc.smoke_model_dir(work / "model")
            flax_src = str(hf_dir)
            prompts = [48]
            args.response, args.block, args.warmup, args.repeats = 8, 32, 1, 1
            args.remat = args.remat.split(",")[0]
        else:
            flax_dir, hf_dir = rc.real_model_dirs()
            flax_src = str(flax_dir)
            prompts = [int(x) for x in args.prompts.split(",")]
        tok = AutoTokenizer.from_pretrained(str(hf_dir))
        remats = args.remat.split(",")
        if len(remats) not in (1, len(prompts)):
            sys.exit(f"real_dpo_step.py: error: --remat {args.remat}: one policy, or one per prompt length")
        remat_of = dict(zip(prompts, remats * len(prompts) if len(remats) == 1 else remats, strict=True))
        print(f"# {'smoke: tiny random Llama' if args.smoke else 'SmolLM2-135M-Instruct'}; "
              f"{rc.machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"# load average before (1/5/15 min): {rc.load_average()}")
        print(f"# lr_jax: shared-prefix row, blockwise attention (block {args.block}); TRL: gradient "
              f"checkpointing {args.trl_gc}, fp32; warm-up {args.warmup}, median of {args.repeats}; sides "
              f"{'one after the other' if args.sequential else 'interleaved'}\n")
        print("| prompt | params trained | side | tokens / step | step time (s) | peak RSS (MiB) | "
              "lr_jax speed-up | loss at steps 1, 2 |")
        print("|---:|---|---|---:|---:|---:|---:|---:|", flush=True)
        versions = ""
        for prompt in prompts:
            for mode in args.modes.split(","):
                sides = _case(argparse.Namespace(**{**vars(args), "remat": remat_of[prompt]}), work, flax_src,
                              hf_dir, tok, prompt, mode, names)
                versions = "; ".join(s["versions"] for s in sides.values())
                _print_rows(prompt, mode, sides, remat_of[prompt], args.max_step_s, trl_skip)
        print(f"\n# load average after: {rc.load_average()}")
        print(f"# versions: {versions}")


def _losses(s: dict[str, Any]) -> str:
    return ", ".join(f"{x:.5f}" for x in s["losses"][:2])


def _print_rows(prompt: int, mode: str, sides: dict[str, Any], remat: str, max_step_s: float,
                trl_skip: str) -> None:
    """The table's two rows of one case (lr_jax, then TRL or why it was skipped)."""
    lj, trl = sides["lr_jax"], sides.get("trl")
    speed = "—"
    if trl and lj["steps"] and trl["steps"]:
        speed = f"{rc.median(trl['steps']) / rc.median(lj['steps']):.2f}×"
    what = "all" if mode == "full" else f"LoRA r{LORA['rank']}"
    print(f"| {prompt} | {what} ({lj['trainable_params'] / 1e6:.2f} M) | lr_jax (remat {remat}) | "
          f"{lj['real_tokens']} (row {lj['seq_tokens']}) | {_fmt_steps(lj, max_step_s)} | "
          f"{lj['peak_rss_mib']:.0f} | {speed} | {_losses(lj)} |")
    if trl is None:
        print(f"| {prompt} | {what} | TRL | {trl_skip} | | | | |", flush=True)
    else:
        print(f"| {prompt} | {what} ({trl['trainable_params'] / 1e6:.2f} M) | TRL | {trl['seq_tokens']} | "
              f"{_fmt_steps(trl, max_step_s)} | {trl['peak_rss_mib']:.0f} | | {_losses(trl)} |", flush=True)

if __name__ == "__main__":
    main()

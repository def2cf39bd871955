"""`python -m lr_jax.plan --config CONFIG --topology v5p-8 [--config.x=...]`: will this run fit a TPU slice?

Compiles the exact jitted step `lr_jax.train` would run (or, with `--job sample`, `lr_jax.sample`'s prefill
and decode) for the slice's compile-only TPU devices, from abstract shapes only — no TPU, weights or data —
and prints per chip: parameters, optimizer state, batch, temporaries and the total against the chip's HBM,
plus analytic FLOPs per step and a compute-roofline step time. Exit 0 when it fits, 1 when it does not (the
message names changes that would help), 2 for bad input (one `error:` line). `--sweep` compiles it for every
slice of the generation (and `--seq_lens`) and prints the smallest that fits. Needs `libtpu` (`.[plan]`).
"""

from __future__ import annotations

import dataclasses
import os
import sys

# Before JAX starts: compile-only TPU devices come from libtpu's topology API, not from a TPU backend (there
# is none here; on a TPU VM, planning must not take the chips a training run is about to use).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

from lr_jax.errors import ConfigError

FLAGS_HELP = """usage: python -m lr_jax.plan --config FILE --topology SLICE [--config.SECTION.FIELD=V ...]

  --config PATH        a configs/*.py file with get_config() (e.g. configs/llama3_8b_dpo_64k.py)
  --topology SLICE     v5p-8, v5p-16, ..., v5e-16, v5litepod-32, or a shape such as v5p:2x2x1
  --job JOB            train (default: the config's DPO or SFT step) or sample (prefill + decode)
  --sweep              compile for every slice of the topology's generation, print the smallest that fits
  --seq_lens N,N,...   with --sweep: also sweep data.seq_len (default: the config's)
  --prompts N          --job sample: prompts per batch (default: one per data x fsdp shard)
  --num_samples N      --job sample: responses per prompt (default 10, the paper's)
  --max_new_tokens N   --job sample: decode length (default 1024)

Exit status: 0 fits, 1 does not fit (the message names what would), 2 bad input. Needs libtpu:
  pip install -e '.[plan]'"""


def _parse(argv: list[str]) -> tuple[object, dict[str, object]]:
    """(the config dict, the plan's own options) from `argv` (without the program name)."""
    from lr_jax.cli import arg_parser, load_config

    raw, rest = load_config(argv, example="configs/llama3_8b_dpo_64k.py")
    p = arg_parser("lr_jax.plan")
    p.add_argument("--topology", default=None)
    p.add_argument("--job", default="train", choices=["train", "sample"])
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--seq_lens", default="")
    for name, default in (("--prompts", 0), ("--num_samples", 10), ("--max_new_tokens", 1024)):
        p.add_argument(name, type=int, default=default)
    a = p.parse_args(rest)
    if not a.topology:
        raise ConfigError("--topology is required (e.g. --topology v5p-8)")
    try:
        seq_lens = [int(s) for s in a.seq_lens.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seq_lens {a.seq_lens!r}: want comma-separated integers") from None
    for name, values, low in (("--seq_lens", seq_lens, 1), ("--prompts", [a.prompts], 0),
                              ("--num_samples", [a.num_samples], 1),
                              ("--max_new_tokens", [a.max_new_tokens], 1)):
        bad = [v for v in values if v < low]
        if bad:
            raise ConfigError(f"{name}: must be >= {low}, got {bad[0]}")
    opts = {"topology": a.topology, "job": a.job, "sweep": a.sweep, "seq_lens": seq_lens,
            "prompts": a.prompts, "num_samples": a.num_samples, "max_new_tokens": a.max_new_tokens}
    return raw, opts


def _one(cfg: object, topology: str, opts: dict[str, object]) -> list[object]:
    from lr_jax.training import plan

    if opts["job"] == "sample":
        return plan.plan_sample(cfg, topology, prompts=opts["prompts"], num_samples=opts["num_samples"],
                                max_new_tokens=opts["max_new_tokens"])
    return [plan.plan_train(cfg, topology)]


def main(argv: list[str] | None = None) -> int:
    """Console entry point: 0 fits, 1 does not fit, 2 bad input."""
    from lr_jax.cli import run

    argv = sys.argv if argv is None else argv
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(FLAGS_HELP)
        return 0
    return run(lambda: _plan(list(argv[1:])))


def _plan(argv: list[str]) -> int:
    """The plan (or the sweep) of the config; 0 fits, 1 does not."""
    from absl import logging

    raw, opts = _parse(argv)
    logging.set_verbosity(logging.WARNING)
    from lr_jax.training import plan
    from lr_jax.training.config import from_config_dict

    cfg = from_config_dict(raw)
    plan.topology_name(opts["topology"])  # bad slice names fail before any compile
    if not opts["sweep"]:
        reports = _one(cfg, opts["topology"], opts)
        for r in reports:
            print(r.table(), flush=True)
        bad = [r for r in reports if not r.fits]
        if bad:
            print(f"error: the {bad[0].job} step does not fit {opts['topology']} "
                  f"({bad[0].total / plan.GiB:.1f} GiB per chip > {bad[0].hbm / plan.GiB:.2f} GiB HBM); "
                  "what would help:", file=sys.stderr)
            for s in plan.suggestions(cfg, bad[0]):
                print(f"  - {s}", file=sys.stderr)
            return 1
        return 0
    gen = plan.topology_name(opts["topology"]).split(":")[0]
    seq_lens = opts["seq_lens"] or [cfg.data.seq_len]
    print(f"{'seq_len':>8} {'slice':>9} {'chips':>5} {'mesh d,f,t,s':>13} {'accum':>5} {'GiB/chip':>9} "
          f"{'HBM':>6}  fits", flush=True)
    smallest: dict[int, str] = {}
    for s in seq_lens:
        c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=s))
        for topo in plan.SWEEP[gen]:
            try:
                reports = _one(c, topo, opts)
            except ConfigError as e:  # the config cannot run on this many chips
                print(f"{s:>8} {topo:>9}   -- not runnable: {e}", flush=True)
                continue
            fits = all(r.fits for r in reports)
            for r in reports:
                mesh = ",".join(str(v) for v in r.mesh.values())
                print(f"{s:>8} {topo:>9} {r.chips:>5} {mesh:>13} {r.accum:>5} {r.total / plan.GiB:>9.1f} "
                      f"{r.hbm / plan.GiB:>6.2f}  {'yes' if r.fits else 'no'}"
                      + (f" ({r.job})" if len(reports) > 1 else ""), flush=True)
            if fits:
                smallest[s] = topo
                break
    for s in seq_lens:
        print(f"smallest {gen} slice for seq_len {s}: {smallest.get(s, 'none in the sweep')}")
    return 0 if len(smallest) == len(seq_lens) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Which TPU slices the shipped 64k DPO configs fit: the real train step compiled for each slice on CPU.

    python bench/plan_fit.py [--configs configs/llama3_8b_dpo_64k.py,configs/glm4_9b_dpo_64k.py]
                             [--topologies v5p-8,v5p-16,v5p-32,v5p-64,v5p-128,v5e-16,v5e-32,v5e-64]
                             [--set optim.grad_accum=2 ...]

Needs libtpu (`pip install -e '.[plan]'`). One `lr_jax.training.plan.plan_train` per (config, slice), in
one process: the same compile as `python -m lr_jax.plan --config C --topology T`. Prints a markdown table
(per-chip GiB from XLA's `memory_analysis()`, or the compiler's out-of-memory count) with date, host and
commit. Each 8B/9B 64k compile took 1-16 minutes on 2 busy CPU cores. The step time is the compute roofline
(hardware FLOPs / (peak x chips)): a lower bound, not a measurement.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import ast
import contextlib
import datetime
import platform
import runpy
import subprocess
import time

from lr_jax.training import plan
from lr_jax.training.config import from_config_dict

CONFIGS = "configs/llama3_8b_dpo_64k.py,configs/glm4_9b_dpo_64k.py"
TOPOLOGIES = "v5p-8,v5p-16,v5p-32,v5p-64,v5p-128,v5e-16,v5e-32,v5e-64"


def load(path: str, sets: list[str]):
    """The typed config of a configs/*.py file with `section.field=value` overrides."""
    raw = runpy.run_path(path)["get_config"]()
    for s in sets:
        key, value = s.split("=", 1)
        section, field = key.split(".", 1)
        with contextlib.suppress(ValueError, SyntaxError):  # a bare string stays a string
            value = ast.literal_eval(value)
        setattr(raw[section], field, value)
    return from_config_dict(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=CONFIGS)
    ap.add_argument("--topologies", default=TOPOLOGIES)
    ap.add_argument("--set", action="append", default=[], help="section.field=value override")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} "
          f"({os.cpu_count()} CPUs), commit {commit.strip()}, overrides {args.set or 'none'}\n")
    print("| config | slice | chips | mesh d,f,t,s | accum | params+opt GiB | temps GiB | total GiB "
          "| HBM GiB | fits | roofline step s | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    errors: list[str] = []
    for path in args.configs.split(","):
        for topo in args.topologies.split(","):
            cfg = load(path, args.set)
            t0 = time.time()
            try:
                r = plan.plan_train(cfg, topo)
            except Exception as e:  # a mesh the config cannot use on this many chips
                name = os.path.basename(path)
                print(f"| {name} | {topo} | | | | | | | | not runnable: {e} | | |", flush=True)
                continue
            rows = dict(r.rows)
            state = rows.get("parameters", 0) + rows.get("optimizer state", 0)
            temps = rows.get("temporaries", rows.get("temporaries (compiler's count)", float("nan")))
            mesh = ",".join(str(v) for v in r.mesh.values())
            G = plan.GiB
            print(f"| {os.path.basename(path)} | {topo} | {r.chips} | {mesh} | {r.accum} | {state / G:.1f} | "
                  f"{temps / G:.1f} | {r.total / G:.1f} | {r.hbm / G:.2f} | "
                  f"{'yes' if r.fits else '**no**'} | {r.flops['step_time_s']:.1f} | "
                  f"{time.time() - t0:.0f} |", flush=True)
            if r.error:
                errors.append(f"{os.path.basename(path)} {topo}: {r.error}")

    for e in errors:  # the compiler's own words for each slice that does not fit
        print(f"\n- {e}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The main job end-to-end on CPU (README): sets up .venv, then runs the whole LongReward loop with the CPU
# test-mode config on 8 simulated devices: demo data -> SFT a tiny model -> sample -> score with the scripted
# judge server -> best-vs-worst pairs -> DPO -> held-out eval of the SFT vs the DPO policy. Writes everything
# under runs/cpu_longreward/ (summary.json, summary.md, eval.png); a re-run resumes. Extra arguments are config
# overrides, e.g. --config.demo.seed=1. The DPO-only demo is: python -m lr_jax.train --config configs/cpu_dpo.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/python -m lr_jax.longreward --config configs/cpu_longreward.py --config.run_dir=runs/cpu_longreward "$@"

#!/usr/bin/env bash
# The main job end-to-end on CPU (README): sets up .venv, builds synthetic long-context preference data and a tiny
# tokenizer, trains DPO with the CPU test-mode config on 8 simulated devices, writes metrics, checkpoints and a plot
# under runs/cpu_dpo/. Extra arguments are config overrides, e.g. --config.train.steps=50.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/python -m lr_jax.train --config configs/cpu_dpo.py --config.train.out_dir=runs/cpu_dpo "$@"

#!/usr/bin/env bash
# The test command (README): sets up .venv, checks style, runs the whole suite on CPU with 8 simulated devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"

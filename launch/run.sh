#!/usr/bin/env bash
# Start training on every worker, detached (survives ssh disconnects), logging to ~/lr_jax.log on each host.
# Usage: launch/run.sh configs/llama3_8b_dpo_64k.py [--config.train.checkpoint_dir=gs://bucket/run ...]
source "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || { echo "usage: $0 CONFIG [--config.key=value ...]" >&2; exit 2; }
args=$(printf ' %q' "$@")
on_all_workers "cd $REPO_DIR && nohup .venv/bin/python -m lr_jax.train --config$args > ~/lr_jax.log 2>&1 &"
echo "started on all workers of $TPU_NAME; follow with launch/logs.sh"

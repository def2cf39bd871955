#!/usr/bin/env bash
# Follow the training log of one worker (default 0, the one that writes metrics and checkpoints metadata).
# Usage: launch/logs.sh [--dry-run] [WORKER]
source "$(dirname "$0")/common.sh"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker="${ARGS[0]:-0}" \
  --command "tail -n 200 -f ~/lr_jax.log"

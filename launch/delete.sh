#!/usr/bin/env bash
# Delete the slice (checkpoints on gs:// are kept). Usage: launch/delete.sh [--dry-run] [--queued]
#   --queued (or TPU_QUEUED=1): delete the queued resource $TPU_NAME-qr and its slice
source "$(dirname "$0")/common.sh"
queued=$TPU_QUEUED
for a in "${ARGS[@]+"${ARGS[@]}"}"; do
  if [ "$a" = --queued ]; then queued=1; else echo "error: unknown option $a" >&2; exit 2; fi
done
if [ "$queued" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$QR_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --quiet
fi

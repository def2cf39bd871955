#!/usr/bin/env bash
# Create the TPU VM / pod slice $TPU_NAME of type $TPU_TYPE.
# Usage: launch/create.sh [--dry-run] [--queued] [--spot | --preemptible] [extra gcloud flags ...]
#   --queued       as a queued resource ($TPU_NAME-qr): waits in line for capacity instead of failing
#   --spot         spot capacity (cheaper, can be reclaimed: the trainer saves on SIGTERM and resumes)
#   --preemptible  the older preemptible VMs (not with --queued; use --spot there)
source "$(dirname "$0")/common.sh"
queued=$TPU_QUEUED capacity="" extra=()
for a in "${ARGS[@]+"${ARGS[@]}"}"; do
  case "$a" in
    --queued) queued=1 ;;
    --spot) capacity=--spot ;;
    --preemptible) capacity=--preemptible ;;
    *) extra+=("$a") ;;
  esac
done
cap=()
if [ -n "$capacity" ]; then cap=("$capacity"); fi
if [ "$queued" = 1 ]; then
  if [ "$capacity" = --preemptible ]; then
    echo "error: --preemptible: queued resources take --spot instead" >&2; exit 2
  fi
  run gcloud compute tpus queued-resources create "$QR_NAME" --node-id "$TPU_NAME" --zone "$TPU_ZONE" \
    "${PROJECT_FLAG[@]}" --accelerator-type "$TPU_TYPE" --runtime-version "$TPU_VERSION" \
    "${cap[@]+"${cap[@]}"}" "${extra[@]+"${extra[@]}"}"
  echo "queued $QR_NAME; watch it with: gcloud compute tpus queued-resources describe $QR_NAME --zone $TPU_ZONE" >&2
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" \
    --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION" "${cap[@]+"${cap[@]}"}" "${extra[@]+"${extra[@]}"}"
fi

#!/usr/bin/env bash
# Create a TPU VM / pod slice. Pass --preemptible (or --spot) to get a cheaper, preemptible slice: the trainer
# saves a checkpoint on SIGTERM and resumes from it when re-run.
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION" "$@"

#!/usr/bin/env bash
# Delete the slice (checkpoints live in the run's out_dir, e.g. gs://, and are kept).
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --quiet

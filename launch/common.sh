#!/usr/bin/env bash
# Settings shared by the launch scripts; override any of them in the environment.
#   TPU_NAME     name of the TPU VM / pod slice          (default: lr-jax-$USER)
#   TPU_ZONE     zone                                      (default: us-central2-b)
#   TPU_TYPE     accelerator type, e.g. v4-64, v5p-128     (default: v4-32)
#   TPU_VERSION  runtime image                             (default: tpu-ubuntu2204-base)
#   TPU_PROJECT  GCP project (default: gcloud's configured project)
#   REPO_DIR     where the repo lives on every worker      (default: ~/lr_jax)
set -euo pipefail
TPU_NAME=${TPU_NAME:-lr-jax-${USER:-me}}
TPU_ZONE=${TPU_ZONE:-us-central2-b}
TPU_TYPE=${TPU_TYPE:-v4-32}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
REPO_DIR=${REPO_DIR:-'~/lr_jax'}
PROJECT_FLAG=()
if [ -n "${TPU_PROJECT:-}" ]; then PROJECT_FLAG=(--project "$TPU_PROJECT"); fi

# Run a command on every worker of the slice (multi-host JAX needs the same program started on all hosts).
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$1"
}

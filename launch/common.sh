#!/usr/bin/env bash
# Settings shared by the launch scripts; override any of them in the environment.
#   TPU_NAME     name of the TPU VM / pod slice              (default: lr-jax-$USER)
#   TPU_TYPE     accelerator type, e.g. v5p-8, v5p-64, v5litepod-32 (v5e)   (default: v5p-8)
#   TPU_ZONE     zone                  (default by type: v5p us-east5-a, v5e us-west4-a, v4 us-central2-b)
#   TPU_VERSION  runtime image         (default by type: v2-alpha-tpuv5, v2-alpha-tpuv5-lite, tpu-ubuntu2204-base)
#   TPU_PROJECT  GCP project           (default: gcloud's configured project)
#   TPU_QUEUED   1 = the slice is a queued resource named $TPU_NAME-qr (create.sh --queued sets it per call)
#   REPO_DIR     where the repo lives on every worker          (default: ~/lr_jax)
#   LOCAL_PYTHON the local venv's python: install.sh pins its package versions, run.sh runs the plan with it
#                (default: .venv/bin/python of this checkout, else python3)
# Every script takes --dry-run (or DRY_RUN=1): print each command instead of running it.
set -euo pipefail
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$LAUNCH_DIR/.." && pwd)
TPU_NAME=${TPU_NAME:-lr-jax-${USER:-me}}
TPU_TYPE=${TPU_TYPE:-v5p-8}
case "$TPU_TYPE" in
  v5p-*) _zone=us-east5-a; _version=v2-alpha-tpuv5 ;;
  v5litepod-*|v5e-*) _zone=us-west4-a; _version=v2-alpha-tpuv5-lite ;;
  v6e-*) _zone=us-east5-b; _version=v2-alpha-tpuv6e ;;
  *) _zone=us-central2-b; _version=tpu-ubuntu2204-base ;;
esac
# gcloud calls v5e slices v5litepod-N.
if [[ "$TPU_TYPE" == v5e-* ]]; then TPU_TYPE="v5litepod-${TPU_TYPE#v5e-}"; fi
TPU_ZONE=${TPU_ZONE:-$_zone}
TPU_VERSION=${TPU_VERSION:-$_version}
TPU_QUEUED=${TPU_QUEUED:-0}
QR_NAME=${QR_NAME:-$TPU_NAME-qr}
REPO_DIR=${REPO_DIR:-'~/lr_jax'}
if [ -z "${LOCAL_PYTHON:-}" ]; then
  if [ -x "$ROOT_DIR/.venv/bin/python" ]; then LOCAL_PYTHON="$ROOT_DIR/.venv/bin/python"; else LOCAL_PYTHON=python3; fi
fi
PROJECT_FLAG=()
if [ -n "${TPU_PROJECT:-}" ]; then PROJECT_FLAG=(--project "$TPU_PROJECT"); fi
DRY_RUN=${DRY_RUN:-0}

# Remove --dry-run from the arguments; the rest are left in ARGS.
ARGS=()
for _a in "$@"; do
  if [ "$_a" = "--dry-run" ]; then DRY_RUN=1; else ARGS+=("$_a"); fi
done

# Run a command, or with --dry-run print it (shell-quoted, one line) instead.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    local out="" w
    for w in "$@"; do out+=" $(printf '%q' "$w")"; done
    echo "${out# }"
  else
    "$@"
  fi
}

# Run a command on every worker of the slice (multi-host JAX needs the same program started on all hosts).
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker=all \
    --command "$1"
}

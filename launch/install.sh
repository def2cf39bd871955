#!/usr/bin/env bash
# Copy this checkout to every worker and install lr_jax with the TPU extra into a venv there.
source "$(dirname "$0")/common.sh"
root=$(cd "$(dirname "$0")/.." && pwd)
tarball=$(mktemp --suffix=.tar.gz)
git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:/tmp/lr_jax.tar.gz" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" \
  --worker=all
on_all_workers "mkdir -p $REPO_DIR && tar -xzf /tmp/lr_jax.tar.gz -C $REPO_DIR && cd $REPO_DIR && \
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu,judge]'"
rm -f "$tarball"

#!/usr/bin/env bash
# Copy this checkout to every worker and install lr_jax with the TPU extra into a venv there, pinned to the
# package versions of the local venv ($LOCAL_PYTHON's `pip freeze`, as pip constraints), so the slice runs
# the jax / libtpu / flax / optax / orbax versions the plan and the tests ran with.
# Usage: launch/install.sh [--dry-run]
source "$(dirname "$0")/common.sh"
tarball=/tmp/lr_jax-$TPU_NAME.tar.gz
constraints=/tmp/lr_jax-$TPU_NAME-constraints.txt
# Editable installs and local paths (lr_jax itself, anything "@ file://") cannot be pinned on a worker.
"$LOCAL_PYTHON" -m pip freeze --exclude-editable 2>/dev/null | grep -v -i -E '^(lr[-_]jax)([=@ ]|$)|@ file:' \
  > "$constraints.new" || true
mv "$constraints.new" "$constraints"
[ -s "$constraints" ] || { echo "error: $LOCAL_PYTHON -m pip freeze gave no packages to pin (set LOCAL_PYTHON)" >&2; exit 2; }
echo "pinning $(wc -l < "$constraints") packages from $LOCAL_PYTHON (jax $(grep -i '^jax==' "$constraints" | cut -d= -f3))" >&2
run git -C "$ROOT_DIR" archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$constraints" "$TPU_NAME:/tmp/" --zone "$TPU_ZONE" \
  "${PROJECT_FLAG[@]}" --worker=all
on_all_workers "mkdir -p $REPO_DIR && tar -xzf /tmp/$(basename "$tarball") -C $REPO_DIR && cd $REPO_DIR && \
python3 -m venv .venv && .venv/bin/pip install -q -c /tmp/$(basename "$constraints") -e '.[tpu,judge]'"
run rm -f "$tarball"

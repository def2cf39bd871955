#!/usr/bin/env bash
# Start training on every worker, detached (survives ssh disconnects), logging to ~/lr_jax.log on each host.
# First compiles the step for $TPU_TYPE here (python -m lr_jax.plan, needs libtpu: pip install -e '.[plan]')
# and refuses a config that does not fit the slice's HBM.
# Usage: launch/run.sh [--dry-run] [--skip-plan] CONFIG [--config.key=value ...]   (SKIP_PLAN=1 = --skip-plan)
source "$(dirname "$0")/common.sh"
skip_plan=${SKIP_PLAN:-0} rest=()
for a in "${ARGS[@]+"${ARGS[@]}"}"; do
  if [ "$a" = --skip-plan ]; then skip_plan=1; else rest+=("$a"); fi
done
[ ${#rest[@]} -ge 1 ] || { echo "usage: $0 [--dry-run] [--skip-plan] CONFIG [--config.key=value ...]" >&2; exit 2; }
if [ "$skip_plan" != 1 ]; then
  if ! (cd "$ROOT_DIR" && run "$LOCAL_PYTHON" -m lr_jax.plan --config "${rest[0]}" --topology "$TPU_TYPE" \
        "${rest[@]:1}"); then
    echo "error: ${rest[0]} does not fit $TPU_TYPE (lr_jax.plan above); not starting. --skip-plan overrides." >&2
    exit 1
  fi
fi
args=$(printf ' %q' "${rest[@]}")
on_all_workers "cd $REPO_DIR && nohup .venv/bin/python -m lr_jax.train --config$args > ~/lr_jax.log 2>&1 &"
[ "$DRY_RUN" = 1 ] || echo "started on all workers of $TPU_NAME; follow with launch/logs.sh"

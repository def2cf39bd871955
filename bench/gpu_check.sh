#!/usr/bin/env bash
# One prepared GPU check (issue: "a GPU check ready to run"), for a lent NVIDIA machine with JAX + CUDA:
#   1. the cuDNN attention tests (the real kernel against the float64 reference),
#   2. cuDNN vs blockwise attention, fwd+bwd, bf16, at 8k and 32k tokens,
#   3. a DPO step (~1.1B decoder, bf16, one shared-prefix pair) at 8k and 32k: tokens/s and MFU,
#   4. sampling tokens/s (one 2k-token prompt, 1 and 8 samples, shared-prefix KV cache).
# Each step has its own time limit (about 7 minutes in all); every table goes to OUT (default $OUT, else
# bench/gpu_results), with gpu_check.md collecting them. It installs nothing from the network and needs no
# `pip install -e .`: it runs the checkout through PYTHONPATH. Packages the GPU image lacks can travel as
# wheels in bench/wheels/ (installed with --no-index when that folder exists).
#
#   bash bench/gpu_check.sh              # run it
#   bash bench/gpu_check.sh --dry-run    # print what it would run, run nothing
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT_DIR=${OUT:-bench/gpu_results}
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR=$2; shift ;;
    --python) PY=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# name | seconds | command
STEPS=(
  "env|30|nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c 'import jax; print(jax.__version__, jax.devices())'; $PY -m pip show jax jaxlib 2>/dev/null | grep -E '^(Name|Version|Requires)'"
  "cudnn_tests|120|$PY -m pytest -q -p no:cacheprovider tests/model/attention/test_cudnn.py -rs"
  "attention|90|$PY bench/gpu_bench.py attention --seqs 8192,32768 --backends cudnn,blockwise"
  "dpo_step|180|$PY bench/gpu_bench.py dpo --seqs 8192,32768 --backends cudnn,blockwise"
  "sample|60|$PY bench/gpu_bench.py sample --prompt-len 2048 --samples 1,8 --new 128"
)

if [ "$DRY" = 1 ]; then
  echo "gpu_check.sh --dry-run: would write to $OUT_DIR/ and run, each under its time limit:"
  [ -d bench/wheels ] && echo "  [wheels] $PY -m pip install --no-index --find-links bench/wheels bench/wheels/*.whl"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name secs cmd <<< "$s"
    echo "  [$name] (${secs} s) $cmd"
  done
  exit 0
fi

mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -d bench/wheels ]; then
  $PY -m pip install -q --no-index --find-links bench/wheels bench/wheels/*.whl > "$OUT_DIR/wheels.log" 2>&1
fi
summary="$OUT_DIR/gpu_check.md"
{ echo "# GPU check, $(date -u +%F\ %H:%M) UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"; } > "$summary"
status=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name secs cmd <<< "$s"
  echo "== $name (limit ${secs} s)"
  start=$(date +%s)
  timeout "$secs" bash -c "$cmd" > "$OUT_DIR/$name.md" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  [ "$rc" = 0 ] || status=1
  { echo; echo "## $name (rc $rc, ${took} s)"; echo; cat "$OUT_DIR/$name.md"; } >> "$summary"
  tail -n 12 "$OUT_DIR/$name.md"
done
echo "tables: $summary"
exit $status

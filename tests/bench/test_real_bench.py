"""bench/real_dpo_step.py and bench/real_sample.py run end to end at smoke shapes (a tiny random Llama): both
sides start, the interleaved steps run and the Markdown table comes out. The DPO step's first loss checks
that lr_jax's step is the DPO step: with the reference equal to the policy the DPO term is exactly log 2, so
the loss is log 2 + 0.1 x (the chosen NLL > 0); where the TRL venv exists, TRL's first loss on the same
weights and token ids must equal lr_jax's (CI has no TRL venv: that side is skipped and says why)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import real_common

TRL_PYTHON = os.environ.get(real_common.TRL_PYTHON_ENV, real_common.DEFAULT_TRL_PYTHON)


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    r = subprocess.run([sys.executable, f"bench/{script}", "--smoke", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines()
            if ln.startswith("| ") and not ln.startswith("| prompt") and not ln.startswith("| samples")]


def test_dpo_step_smoke_lr_jax_loss_is_the_dpo_loss_and_matches_trl() -> None:
    out = _run("real_dpo_step.py", "--modes", "lora", "--trl-python", TRL_PYTHON)
    rows = {r[2].split()[0]: r for r in _rows(out)}
    lj = rows["lr_jax"]
    assert float(lj[4]) > 0 and float(lj[5]) > 0  # a step time and a peak RSS
    loss = float(lj[7].split(",")[0])
    assert math.log(2) < loss < math.log(2) + 0.1 * 2 * math.log(512)  # log 2 + 0.1 x a random model's NLL
    if not Path(TRL_PYTHON).is_file():
        assert rows["TRL"][3].startswith("skipped: no TRL venv")
        pytest.skip(f"TRL side not run: no TRL venv at {TRL_PYTHON}")
    trl = rows["TRL"]
    assert float(trl[4]) > 0 and float(trl[5]) > 0
    # same weights, same ids: the same loss, and after one identical AdamW update the same again
    losses = lambda row: [float(x) for x in row[7].split(",")]
    assert losses(trl) == pytest.approx(losses(lj), rel=1e-4)


def test_sample_smoke_both_sides_make_every_token() -> None:
    out = _run("real_sample.py")
    rows = _rows(out)
    assert [r[1] for r in rows] == ["lr_jax", "transformers"]
    for r in rows:
        assert r[0] == "2" and float(r[2]) > 0 and float(r[3]) > 0 and float(r[4]) > 0
    # 2 samples x 8 new tokens each: the workers assert the token counts; tokens/s = 16 / wall time
    assert float(rows[0][3]) == pytest.approx(16 / float(rows[0][2]), rel=0.15)  # wall time printed to 0.01 s
    assert re.search(r"^# load average before", out, re.M)

"""bench/real_dpo_step.py and bench/real_sample.py run end to end at smoke shapes (a tiny random Llama): both
sides start, the interleaved steps run and the Markdown table comes out. The DPO step's first loss checks
that lr_jax's step is the DPO step: with the reference equal to the policy the DPO term is exactly log 2, so
the loss is log 2 + 0.1 x (the chosen NLL > 0); where the TRL venv exists, TRL's losses at steps 1 and 2 on
the same weights and token ids must equal lr_jax's (CI has no TRL venv: that part is skipped, with the reason,
after the rest has been checked)."""

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


def _start(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen([sys.executable, f"bench/{script}", "--smoke", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _output(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines()
            if ln.startswith("| ") and not ln.startswith("| prompt") and not ln.startswith("| samples")]


@pytest.mark.slow  # 5 processes that import JAX or torch: ~50 CPU-seconds, ~25-30 s on the idle 2 cores
def test_real_bench_smoke_modes() -> None:
    # Both scripts at once: their processes mostly import and compile, which the two cores overlap.
    dpo = _start("real_dpo_step.py", "--modes", "full", "--trl-python", TRL_PYTHON)
    sample = _start("real_sample.py")
    try:
        compared_trl = _check_dpo(_output(dpo))
        _check_sample(_output(sample))
    finally:  # a failed or timed-out check leaves no orchestrator running (it ends its own workers)
        for proc in (dpo, sample):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not compared_trl:  # everything else above was checked; say that this part was not
        pytest.skip(f"TRL side not compared (the rest passed): no TRL venv at {TRL_PYTHON}")


def _check_dpo(out: str) -> bool:
    """Check the DPO table; False when the TRL side was skipped (no venv)."""
    rows = {r[2].split()[0]: r for r in _rows(out)}
    lj = rows["lr_jax"]
    assert float(lj[4]) > 0 and float(lj[5]) > 0  # a step time and a peak RSS
    losses = lambda row: [float(x) for x in row[7].split(",")]
    # reference = policy at step 1: the DPO term is exactly log 2, plus 0.1 x a random model's chosen NLL
    assert math.log(2) < losses(lj)[0] < math.log(2) + 0.1 * 2 * math.log(512)
    if not Path(TRL_PYTHON).is_file():
        assert rows["TRL"][3].startswith("skipped: no TRL venv")
        return False
    trl = rows["TRL"]
    assert float(trl[4]) > 0 and float(trl[5]) > 0
    # same weights, same ids: the same loss, and after one identical AdamW update (clip 1, β2 0.999) the same
    # again (full fine-tuning: LoRA adapters start from different random A on the two sides)
    assert losses(trl) == pytest.approx(losses(lj), rel=1e-4)
    return True


def _check_sample(out: str) -> None:
    rows = _rows(out)
    assert [r[1] for r in rows] == ["lr_jax", "transformers"]
    for r in rows:
        assert r[0] == "2" and float(r[2]) > 0 and float(r[3]) > 0 and float(r[4]) > 0  # time, tok/s, RSS
    # 2 samples x 8 new tokens each: the workers assert the token counts; tokens/s = 16 / wall time
    t, tps = float(rows[0][2]), float(rows[0][3])  # the wall time is printed to 0.01 s: +-0.005 s
    assert 16 / (t + 0.005) <= tps * 1.001 and tps <= 16 / max(t - 0.005, 1e-9) * 1.001
    assert re.search(r"^# load average before", out, re.M)

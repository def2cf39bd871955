"""bench/gpu_check.sh is ready for a lent GPU: its dry run lists every step with its limit and names only
files that exist, and bench/gpu_bench.py runs each section at tiny shapes on this CPU (cuDNN rows skipped
with the reason), so a broken bench is found here, not on the GPU machine's short clock."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers.paths import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_dry_run_lists_steps_with_limits_and_existing_files(tmp_path) -> None:
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    steps = re.findall(r"^  \[(\w+)\] \((\d+) s\) (.*)$", r.stdout, re.M)
    assert [s[0] for s in steps] == ["env", "cudnn_tests", "attention", "dpo_step", "sample"]
    assert sum(int(s[1]) for s in steps) <= 8 * 60  # the budget for one GPU check
    for path in re.findall(r"\b((?:bench|tests)/[\w/]+\.py)\b", r.stdout):
        assert (ROOT / path).is_file(), path
    assert not (tmp_path / "o").exists()  # a dry run writes nothing
    bad = subprocess.run(["bash", str(SCRIPT), "--nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--nope" in bad.stderr


def test_every_bench_section_runs_at_smoke_shapes_on_cpu() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    r = subprocess.run([sys.executable, "bench/gpu_bench.py", "all", "--smoke"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for section in ("attention", "dpo", "sample"):
        assert f"## {section}" in r.stdout
    assert re.search(r"^\| cudnn \| 256 \| skipped: .*GPU", r.stdout, re.M)  # no GPU here: said, not faked
    assert re.search(r"^\| blockwise \| 256 \| [\d.]+ \| [\d,]+ \|", r.stdout, re.M)  # a DPO step ran
    # 8 samples of the 64-token prompt decoded, 8 new tokens each
    assert re.search(r"^\| 8 \| 64 \| 8 \| [\d.]+ \| [\d.]+ \| [\d,]+ \|$", r.stdout, re.M)

"""launch/*.sh --dry-run: the exact gcloud commands for a v5p-8 and a v5e-32 job (no gcloud needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry(script: str, *args: str, **env: str) -> list[str]:
    full = {**os.environ, "TPU_NAME": "lr-test", "LOCAL_PYTHON": sys.executable, **env}
    full.pop("TPU_ZONE", None)
    full.pop("TPU_VERSION", None)
    out = subprocess.run(["bash", str(ROOT / "launch" / script), "--dry-run", *args], capture_output=True,
                         text=True, env=full, cwd=ROOT, check=True)
    return out.stdout.strip().splitlines()


@pytest.mark.parametrize("tpu_type, zone, version, gcloud_type", [
    ("v5p-8", "us-east5-a", "v2-alpha-tpuv5", "v5p-8"),
    ("v5e-32", "us-west4-a", "v2-alpha-tpuv5-lite", "v5litepod-32"),
])
def test_dry_run_commands(tpu_type: str, zone: str, version: str, gcloud_type: str) -> None:
    env = {"TPU_TYPE": tpu_type}
    assert _dry("create.sh", **env) == [
        f"gcloud compute tpus tpu-vm create lr-test --zone {zone} --accelerator-type {gcloud_type} "
        f"--version {version}"]
    assert _dry("create.sh", "--spot", **env)[0].endswith(f"--version {version} --spot")
    assert _dry("create.sh", "--queued", "--spot", **env) == [
        f"gcloud compute tpus queued-resources create lr-test-qr --node-id lr-test --zone {zone} "
        f"--accelerator-type {gcloud_type} --runtime-version {version} --spot"]
    run = _dry("run.sh", "configs/llama3_8b_dpo_64k.py", "--config.train.checkpoint_dir=gs://b/r", **env)
    assert run[0] == (f"{sys.executable} -m lr_jax.plan --config configs/llama3_8b_dpo_64k.py --topology "
                      f"{gcloud_type} --config.train.checkpoint_dir=gs://b/r")
    assert run[1].startswith(f"gcloud compute tpus tpu-vm ssh lr-test --zone {zone} --worker=all --command ")
    assert "lr_jax.train\\ --config\\ configs/llama3_8b_dpo_64k.py\\ --config.train.checkpoint_dir=gs://b/r" \
        in run[1]
    assert len(_dry("run.sh", "--skip-plan", "configs/llama3_8b_dpo_64k.py", **env)) == 1
    install = _dry("install.sh", **env)
    assert install[1] == (f"gcloud compute tpus tpu-vm scp /tmp/lr_jax-lr-test.tar.gz "
                          f"/tmp/lr_jax-lr-test-constraints.txt lr-test:/tmp/ --zone {zone} --worker=all")
    assert "pip\\ install\\ -q\\ -c\\ /tmp/lr_jax-lr-test-constraints.txt" in install[2]
    assert _dry("delete.sh", "--queued", **env) == [
        f"gcloud compute tpus queued-resources delete lr-test-qr --zone {zone} --force --quiet"]


def test_install_pins_the_local_venv() -> None:
    _dry("install.sh", TPU_TYPE="v5p-8")
    pins = Path("/tmp/lr_jax-lr-test-constraints.txt").read_text().splitlines()
    import jax

    assert f"jax=={jax.__version__}" in pins
    assert not [p for p in pins if p.lower().startswith(("lr_jax", "lr-jax"))]


def test_run_refuses_a_config_that_does_not_fit(tmp_path: Path) -> None:
    fake = tmp_path / "python"  # stands in for the plan: exits 1 like a step over HBM
    fake.write_text("#!/bin/sh\necho 'error: does not fit' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "TPU_NAME": "lr-test", "LOCAL_PYTHON": str(fake), "TPU_TYPE": "v5p-8",
           "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    # Not a dry run: the plan runs and fails, and gcloud must never be reached.
    (tmp_path / "gcloud").write_text("#!/bin/sh\necho GCLOUD-CALLED\n")
    (tmp_path / "gcloud").chmod(0o755)
    out = subprocess.run(["bash", str(ROOT / "launch" / "run.sh"), "configs/llama3_8b_dpo_64k.py"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 1
    assert "GCLOUD-CALLED" not in out.stdout
    assert "does not fit v5p-8" in out.stderr

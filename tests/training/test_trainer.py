"""End-to-end `lr_jax.train` on 8 simulated CPU devices: kill/resume reproducibility, options, errors."""

import dataclasses
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lr_jax.parallel.cpu_mode import xla_flags
from lr_jax.training.config import from_config_dict
from lr_jax.training.metrics import read_metrics
from tests.helpers.paths import ROOT

# A short, fast variant of configs/cpu_dpo.py (same mesh: data 2 x fsdp 2 x sequence 2).
SMALL = ["--config.train.steps=40", "--config.train.save_every=5", "--config.train.log_every=1",
         "--config.train.eval_every=0", "--config.data.synthetic_pairs=256", "--config.data.batch_size=8",
         "--config.data.synthetic_eval_pairs=16", "--config.model.hidden_size=32",
         "--config.model.intermediate_size=64", "--config.model.num_layers=1", "--config.model.head_dim=16",
         "--config.train.progress_bar=false", "--config.train.tensorboard=false"]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"], env["JAX_PLATFORMS"] = xla_flags(8), "cpu"
    env["PYTHONPATH"] = str(ROOT)
    return env


def _cmd(out_dir, *extra):
    return [sys.executable, "-m", "lr_jax.train", "--config", str(ROOT / "configs/cpu_dpo.py"),
            f"--config.train.out_dir={out_dir}", *SMALL, *extra]


def _losses(out_dir):
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out_dir, "metrics.jsonl"))}


def _ckpt_steps(out_dir):
    d = pathlib.Path(out_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _wait_for(pred, proc, timeout=240):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.returncode}\n{proc.stderr.read()[-3000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_and_sigterm_then_resume_reproduces_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(ref_dir), env=_env(), check=True, capture_output=True, timeout=600)
    want = _losses(ref_dir)
    assert sorted(want) == list(range(1, 41))
    rows = read_metrics(os.path.join(ref_dir, "metrics.jsonl"))
    for key in ("step", "loss", "reward_accuracy", "reward_margin", "tokens_per_sec", "mfu",
                "eval_reward_accuracy", "eval_loss"):
        assert key in rows[-1], key
    assert (ref_dir / "curves.png").stat().st_size > 1000

    # 1) SIGKILL as soon as the first checkpoint is committed (mid-run, no chance to clean up).
    p = subprocess.Popen(_cmd(run_dir), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _ckpt_steps(run_dir), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = max(_losses(run_dir))
    assert killed_at < 40, "run finished before it could be killed"
    # 2) Resume; SIGTERM once it has logged a new step: it must save a checkpoint and exit cleanly.
    first = max(_ckpt_steps(run_dir))
    p = subprocess.Popen(_cmd(run_dir), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(s > killed_at for s in _losses(run_dir)), p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=300) == 0
    term_step = max(_ckpt_steps(run_dir))
    assert term_step > first
    if term_step < 40:
        assert "SIGTERM" in p.stderr.read()
    # 3) Resume to the end.
    subprocess.run(_cmd(run_dir), env=_env(), check=True, capture_output=True, timeout=600)
    got = _losses(run_dir)
    assert sorted(got) == sorted(want)
    steps = sorted(want)
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=0, atol=1e-6)


def test_config_typo_is_one_clean_error_line(tmp_path):
    cfg_file = tmp_path / "typo.py"
    cfg_file.write_text(
        "import importlib.util, pathlib\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'configs/cpu_dpo.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "def get_config():\n"
        "    c = m.get_config()\n"
        "    c.optim.learning_rate = 1e-3\n"
        "    return c\n")
    out = subprocess.run([sys.executable, "-m", "lr_jax.train", "--config", str(cfg_file),
                          f"--config.train.out_dir={tmp_path / 'o'}"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == ["error: config.optim.learning_rate: unknown key; did you mean 'lr'?"], out.stderr
    assert not (tmp_path / "o").exists()  # failed before anything was created


def test_bad_override_type_is_one_clean_error_line(tmp_path):
    out = subprocess.run(_cmd(tmp_path / "o", "--config.dpo.beta=high"), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: flag --config.dpo.beta=high")


def test_config_roundtrip_written_to_run_dir_is_loadable(tmp_path):
    """config.json beside the checkpoints re-validates to the same Config (what a resumed run used)."""
    from lr_jax.training.config import default_config_dict

    cfg = from_config_dict(default_config_dict())
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert from_config_dict(json.loads((tmp_path / "config.json").read_text())) == cfg


def _cpu_cfg(name, tmp_path, **overrides):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config().to_dict()
    c["model"].update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=16, tie_embeddings=False)
    c["data"].update(synthetic_pairs=32, synthetic_eval_pairs=8)
    c["train"].update(steps=2, log_every=1, eval_every=0, save_every=0, out_dir=str(tmp_path / "run"),
                      progress_bar=False, tensorboard=False, plot=False)
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return from_config_dict(c)


def test_init_from_hf_reference_model_in_step_and_export(tmp_path):
    """init_from an HF dir + dpo.reference="model" + grad_accum 2 + export_hf_dir, through the real loop."""
    import jax

    from lr_jax import convert
    from lr_jax.model import init_params

    base = _cpu_cfg("cpu_dpo", tmp_path)
    params0 = jax.tree.map(np.asarray, init_params(base.model, jax.random.key(7)))
    convert.to_hf(base.model, params0, tmp_path / "hf_in")
    # At cpu_dpo's batch 32 this step (ref model + grad_accum 2) deadlocked XLA:CPU's collectives on 8
    # simulated devices, in-process and as a CLI alike: all 8 intra-op pool threads block in rendezvous
    # (a collective-permute vs an all-gather) and XLA aborts after 40 s ("Fatal Python error: Aborted").
    # --xla_cpu_enable_concurrency_optimized_scheduler=false (in _env()) avoids it; keep batch 32 here so
    # this test guards that flag.
    args = [f"--config.train.init_from={tmp_path / 'hf_in'}",
            f"--config.train.export_hf_dir={tmp_path / 'hf_out'}",
            "--config.dpo.reference=model", "--config.optim.grad_accum=2",
            f"--config.train.checkpoint_dir={tmp_path / 'ckpts'}", "--config.train.steps=2",
            "--config.data.synthetic_pairs=32", "--config.data.synthetic_eval_pairs=8",
            "--config.train.plot=false", "--config.train.eval_every=0", "--config.train.save_every=0"]
    drop = ("--config.train.steps", "--config.data.synth", "--config.train.save_every",
            "--config.data.batch_size")
    cmd = [c for c in _cmd(tmp_path / "run") if not c.startswith(drop)]
    subprocess.run([*cmd, *args], env=_env(), check=True, capture_output=True, timeout=600)
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    # Step 1: policy == reference == the imported weights, so the DPO part is exactly log 2.
    np.testing.assert_allclose(rows[0]["dpo_loss"], np.log(2), rtol=1e-6)
    assert not (tmp_path / "run" / "reference_logps.p0.npz").exists()  # in-step reference: no cache
    assert (tmp_path / "ckpts" / "2").is_dir() and not (tmp_path / "run" / "checkpoints").exists()
    cfg_out, params_out = convert.from_hf(tmp_path / "hf_out")
    assert cfg_out.num_layers == base.model.num_layers and cfg_out.vocab_size == base.model.vocab_size
    diffs = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(params_out),
                                                          strict=True)]
    assert max(diffs) > 0  # trained
    assert max(diffs) < 0.1  # ...from the imported weights, not from a fresh init


def test_resume_with_init_from_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """Issue 19 case 1: DPO from an HF dir, resumed from a checkpoint, gives the uninterrupted run's losses
    bit for bit, and restores without placing the HF weights on the devices (the cached reference log-probs
    cover the rest of the run, so the initial params are not needed)."""
    import shutil

    import jax

    from lr_jax import convert
    from lr_jax.model import init_params
    from lr_jax.training.trainer import Trainer

    base = _cpu_cfg("cpu_dpo", tmp_path)
    convert.to_hf(base.model, jax.tree.map(np.asarray, init_params(base.model, jax.random.key(3))),
                  tmp_path / "hf")
    cfg = _cpu_cfg("cpu_dpo", tmp_path, train__steps=3, train__save_every=1, data__batch_size=8,
                   data__synthetic_eval_pairs=0,
                   train__init_from=str(tmp_path / "hf"), train__out_dir=str(tmp_path / "full"))
    Trainer(cfg).run()
    want = _losses(tmp_path / "full")
    # The disk as SIGKILL right after checkpoint 1 leaves it (metrics of steps 2-3 included: a killed run
    # logs past its last checkpoint).
    shutil.copytree(tmp_path / "full", tmp_path / "killed", ignore=shutil.ignore_patterns("2", "3"))
    placed = []
    monkeypatch.setattr(Trainer, "_initial_params", lambda self: placed.append(1))
    killed = dataclasses.replace(cfg.train, out_dir=str(tmp_path / "killed"))
    Trainer(dataclasses.replace(cfg, train=killed)).run()
    assert placed == []
    got = _losses(tmp_path / "killed")
    assert sorted(got) == sorted(want) == [1, 2, 3]
    assert [got[s] for s in (1, 2, 3)] == [want[s] for s in (1, 2, 3)]  # bit for bit


def test_sft_objective_runs_through_the_loop(tmp_path):
    from lr_jax.training.trainer import run

    last = run(_cpu_cfg("cpu_sft", tmp_path))
    assert last["step"] == 2 and np.isfinite(last["loss"]) and "reward_accuracy" not in last
    assert last["eval_sft_nll"] > 0 and not (tmp_path / "run" / "reference_logps.p0.npz").exists()


def test_short_cpu_dpo_run_held_out_reward_accuracy_rises(tmp_path):
    """configs/cpu_dpo.py on an easier demo task (one fact, 16-token document): eval accuracy 0.5 -> ~1."""
    from lr_jax.training.trainer import run

    spec = importlib.util.spec_from_file_location("cpu_dpo", ROOT / "configs" / "cpu_dpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config().to_dict()
    c["data"].update(seq_len=64, synthetic_context_len=16, synthetic_num_facts=1, synthetic_pairs=1024,
                     synthetic_eval_pairs=32)
    c["train"].update(steps=60, eval_every=30, log_every=10, save_every=0, out_dir=str(tmp_path / "run"),
                      progress_bar=False, tensorboard=False, plot=False)
    run(from_config_dict(c))
    evals = [r for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if "eval_reward_accuracy" in r]
    accs = [r["eval_reward_accuracy"] for r in evals]
    assert [r["step"] for r in evals] == [30, 60]
    assert accs[1] > accs[0] and accs[1] >= 0.8, accs
    assert evals[1]["eval_reward_margin"] > evals[0]["eval_reward_margin"] > 0


def test_ring_attention_loop_matches_blockwise_losses(tmp_path):
    """`attention_backend=ring` on data 2 x fsdp 2 x sequence 2: rows go to the ring's zig-zag order and the
    trained losses equal the natural-order blockwise run's (same init, same data)."""
    few = ["--config.train.steps=3", "--config.train.save_every=0", "--config.train.plot=false"]
    runs = {}
    for backend in ("blockwise", "ring"):
        out = tmp_path / backend
        subprocess.run(_cmd(out, *few, f"--config.model.attention_backend={backend}"), env=_env(), check=True,
                       capture_output=True, timeout=600)
        runs[backend] = _losses(out)
    assert sorted(runs["ring"]) == [1, 2, 3]
    for step, loss in runs["blockwise"].items():
        np.testing.assert_allclose(runs["ring"][step], loss, rtol=1e-5, atol=1e-6)


def test_ring_rows_are_zigzag_permutations_of_natural_rows(tmp_path):
    from lr_jax.model.attention.layout import ring_permutation
    from lr_jax.training import data as train_data

    cfg = _cpu_cfg("cpu_dpo", tmp_path, data__batch_size=8)
    natural = next(train_data.build(cfg).train_iterator())
    ring = next(train_data.build(cfg, ring_shards=2).train_iterator())
    perm = ring_permutation(cfg.data.seq_len, 2)
    assert not np.array_equal(perm, np.arange(cfg.data.seq_len))
    for key, value in natural.items():
        expected = value[:, perm] if value.shape[1] == cfg.data.seq_len else value  # pair_valid is [batch, P]
        np.testing.assert_array_equal(ring[key], expected, err_msg=key)


def test_relative_out_dir_checkpoints_and_resumes(tmp_path):
    """The README runs with `out_dir=runs/cpu_dpo`: relative paths must work for orbax too."""
    cmd = _cmd("runs/rel", "--config.train.steps=2", "--config.train.save_every=1",
               "--config.train.plot=false")
    subprocess.run(cmd, env=_env(), cwd=tmp_path, check=True, capture_output=True, timeout=600)
    assert _ckpt_steps(tmp_path / "runs/rel") == [1, 2]
    # Re-running the finished run restores its last checkpoint through the same relative path.
    subprocess.run(cmd, env=_env(), cwd=tmp_path, check=True, capture_output=True, timeout=600)
    assert sorted(_losses(tmp_path / "runs/rel")) == [1, 2]

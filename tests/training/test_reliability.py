"""The trainer never trains on bad numbers, never saves a NaN state, and says what is wrong in one line.

Each test here failed on the code before issue 10: NaN / inf config values passed validation (NaN is not
<= 0), a loss that turned NaN trained to the end with exit 0 and saved over good checkpoints, a resumed run
repeated metric rows, an unwritable out_dir surfaced after the reference pass, a changed model shape gave
pages of orbax tracebacks, a missing data.path blamed a crashed writer.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lr_jax.errors import ConfigError, LrJaxError
from lr_jax.model import ModelConfig, init_params
from lr_jax.parallel.cpu_mode import xla_flags
from lr_jax.training.config import default_config_dict, from_config_dict
from lr_jax.training.metrics import MetricsWriter, read_metrics
from tests.helpers.paths import ROOT

# The CPU demo, shrunk: a few steps of the tiny model on 64 synthetic pairs.
SMALL = ["--config.train.progress_bar=false", "--config.train.tensorboard=false", "--config.train.plot=false",
         "--config.data.synthetic_pairs=64", "--config.data.synthetic_eval_pairs=8"]


def _cli(out_dir, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": xla_flags(8), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lr_jax.train", "--config", str(ROOT / "configs/cpu_dpo.py"),
           f"--config.train.out_dir={out_dir}", *SMALL, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(("key", "value"), [("optim.lr", math.nan), ("optim.lr", math.inf),
                                            ("dpo.beta", math.nan), ("optim.grad_clip", -math.inf),
                                            ("model.rope_theta", math.nan), ("data.eval_fraction", math.nan)])
def test_non_finite_config_values_are_refused_by_name(key, value):
    c = default_config_dict()
    section, name = key.split(".")
    setattr(getattr(c, section), name, value)
    with pytest.raises(ConfigError, match=rf"config\.{key}: must be a finite number"):
        from_config_dict(c)


def test_non_finite_values_in_a_config_built_in_code_are_refused():
    cfg = from_config_dict(default_config_dict())
    import dataclasses

    bad = dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, beta=math.nan))
    with pytest.raises(ConfigError, match=r"config\.dpo\.beta: must be a finite number"):
        bad.validate()


def test_cli_nan_learning_rate_is_one_line(tmp_path):
    r = _cli(tmp_path / "run", "--config.optim.lr=nan")
    assert r.returncode == 2, r.stderr[-2000:]
    assert _errors(r.stderr) == ["error: config.optim.lr: must be a finite number, got nan"]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work


def test_a_non_finite_step_never_updates_the_weights():
    from lr_jax.data.batch import Batch
    from lr_jax.training.step import LossSpec, train_step

    model = ModelConfig.tiny(num_layers=1, attention_backend="reference")
    params = init_params(model, jax.random.key(0))
    opt = optax.adam(1e-2)
    state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}
    S = 16
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 200, (2, S)), jnp.int32)
    branch = jnp.asarray(np.r_[np.zeros(8), np.ones(4), np.full(4, 2)][None].repeat(2, 0), jnp.int32)
    pos = jnp.asarray(np.r_[np.arange(8), 8 + np.arange(4), 8 + np.arange(4)][None].repeat(2, 0), jnp.int32)
    base = Batch(tokens=ids, targets=ids, loss_mask=(branch > 0).astype(jnp.int32), positions=pos,
                 segment_ids=jnp.ones((2, S), jnp.int32), branch_ids=branch,
                 pair_valid=jnp.ones((2, 1), jnp.int32), ref_chosen_logps=jnp.zeros((2, 1)),
                 ref_rejected_logps=jnp.zeros((2, 1)))
    step = jax.jit(lambda s, b: train_step(LossSpec(model), opt, s, b))
    good, m_good = step(state, base)
    assert float(m_good["nonfinite"]) == 0.0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(good["params"]),
                                                         jax.tree.leaves(params), strict=True))
    bad, m_bad = step(state, base.replace(ref_chosen_logps=jnp.full((2, 1), jnp.nan)))
    assert float(m_bad["nonfinite"]) == 1.0 and not math.isfinite(float(m_bad["loss"]))
    for a, b in zip(jax.tree.leaves((bad["params"], bad["opt_state"])),
                    jax.tree.leaves((state["params"], state["opt_state"])), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(bad["step"]) == 1  # the batch is consumed either way


def _restore_params(step_dir) -> list[np.ndarray]:
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(os.path.join(step_dir, "state"))
    return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


def test_loss_turning_nan_mid_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr 1e6 without clipping: Adam's first step moves every weight by ~1e6, so the next forward pass
    # overflows float32 (step 2: loss or grad norm inf / nan) — overflow, not chaos, so it is deterministic.
    out = tmp_path / "run"
    r = _cli(out, "--config.train.steps=6", "--config.train.save_every=1", "--config.optim.lr=1e6",
             "--config.optim.grad_clip=0", "--config.optim.warmup_steps=0")
    assert r.returncode == 2, r.stderr[-2000:]
    (err,) = _errors(r.stderr)
    bad_step = int(err.split("step ")[1].split(":")[0])
    assert "not finite; stopped without saving" in err and bad_step >= 2
    saved = sorted(int(d) for d in os.listdir(out / "checkpoints") if d.isdigit())
    assert saved and max(saved) < bad_step and f"last checkpoint: step {max(saved)}" in err
    assert all(np.isfinite(p).all() for p in _restore_params(out / "checkpoints" / str(max(saved))))
    # With skip_step the same run goes to the end and its weights stay finite.
    r = _cli(tmp_path / "skip", "--config.train.steps=4", "--config.train.save_every=4",
             "--config.optim.lr=1e6", "--config.optim.grad_clip=0", "--config.optim.warmup_steps=0",
             "--config.train.nan_policy=skip_step")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "update skipped (train.nan_policy=skip_step)" in r.stderr
    assert all(np.isfinite(p).all() for p in _restore_params(tmp_path / "skip" / "checkpoints" / "4"))


def test_resume_drops_metric_rows_logged_after_the_checkpoint(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    for s in range(1, 11):
        w.write(s, {"loss": 1.0 / s})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "lo')  # the torn line a kill leaves
    w = MetricsWriter(str(tmp_path), tensorboard=False, resume_step=6)
    for s in range(7, 9):
        w.write(s, {"loss": 0.0})
    w.close()
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == list(range(1, 9))


def test_unwritable_or_file_out_dir_fails_before_any_work(tmp_path):
    from lr_jax.training.trainer import Trainer

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    c = default_config_dict()
    c.train.out_dir = str(blocker)
    with pytest.raises(ConfigError, match=r"config\.train\.out_dir: cannot write to .*a-file"):
        Trainer(from_config_dict(c))
    c.train.out_dir = str(tmp_path / "ok")
    c.train.export_hf_dir = str(blocker / "sub")
    with pytest.raises(ConfigError, match=r"config\.train\.export_hf_dir: cannot write"):
        Trainer(from_config_dict(c))


def test_restoring_into_another_model_shape_is_one_error(tmp_path):
    from lr_jax.training.checkpoint import Checkpointer, abstract_like

    ck = Checkpointer(str(tmp_path / "ck"), keep=1, async_save=False)
    ck.save(1, {"w": jnp.ones((4, 8))}, {"epoch": 0}, force=True)
    ck.wait()
    with pytest.raises(ConfigError, match=r"checkpoint step 1 does not fit this config's model"):
        ck.restore(1, abstract_like({"w": jnp.ones((4, 6))}))
    ck.close()


def test_another_model_shape_is_refused_before_any_read_without_event_loop_tracebacks(tmp_path, capfd):
    """Issue 19 case 8: the error line used to be followed by ~50 "Event loop is closed" tracebacks from
    orbax's reads still in flight; now the tree is compared from the metadata and nothing is read."""
    import time

    from lr_jax.training.checkpoint import Checkpointer, abstract_like

    ck = Checkpointer(str(tmp_path / "ck"), keep=1, async_save=False)
    state = {"params": {f"w{i}": jnp.ones((64, 8)) for i in range(24)}, "step": jnp.zeros((), jnp.int32)}
    ck.save(3, state, {"epoch": 0}, force=True)
    ck.close()
    ck = Checkpointer(str(tmp_path / "ck"), keep=1, async_save=False)
    other = {"params": {f"w{i}": jnp.ones((64, 6)) for i in range(24)}, "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(ConfigError, match=r"step 3 does not fit .*params\.w0 is float32\[64, 8\] in the "
                                          r"checkpoint, float32\[64, 6\] in this config"):
        ck.restore(3, abstract_like(other))
    fewer = {"params": {"w0": jnp.ones((64, 8))}, "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(ConfigError, match=r"arrays only in the checkpoint: params\.w1"):
        ck.restore(3, abstract_like(fewer))
    ck.close()
    time.sleep(0.5)  # the stray callbacks of the old code printed within milliseconds
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-2000:]


def test_missing_data_path_and_judge_output_as_data_are_named(tmp_path):
    from lr_jax.training import data as train_data

    c = default_config_dict()
    c.train.out_dir = str(tmp_path / "run")
    c.data.path = str(tmp_path / "no-such-pairs")
    with pytest.raises(LrJaxError, match=r"config\.data\.path: .*no-such-pairs does not exist"):
        train_data.build(from_config_dict(c))
    scored = tmp_path / "scored.jsonl"
    scored.write_text(json.dumps({"id": "p-0", "prompt_id": "p", "query": "q", "response": "r",
                                  "scores": {"reward": 5.0}}) + "\n")
    c.data.path = str(scored)
    c.dpo.objective = "sft"
    c.model.vocab_size = 512  # the demo tokenizer's 369 tokens fit
    with pytest.raises(LrJaxError, match=r"scored.jsonl: line 1: this looks like judge.score output"):
        train_data.build(from_config_dict(c))


def test_eval_path_that_is_empty_or_unused_and_a_missing_init_from_are_named(tmp_path):
    """Found trying the CLI as a new user (issue 19): an empty data.eval_path trained with no eval at all, and
    one set beside the synthetic demo data was ignored; a missing init_from said only "no config.json"."""
    from lr_jax.training import data as train_data
    from lr_jax.training.trainer import Trainer

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    c = default_config_dict()
    c.train.out_dir = str(tmp_path / "run")
    c.data.eval_path = str(empty)
    with pytest.raises(ConfigError, match=r"config\.data\.eval_path: read only with data\.path"):
        from_config_dict(c)
    prompts = tmp_path / "prompts.jsonl"
    row = {"context": "a b", "query": "q", "answer": "a"}
    prompts.write_text("".join(json.dumps({"id": f"p{i}", **row}) + "\n" for i in range(16)))
    c.data.path, c.dpo.objective, c.model.vocab_size = str(prompts), "sft", 512
    with pytest.raises(LrJaxError, match=r"config\.data\.eval_path: .*empty\.jsonl holds no sft examples"):
        train_data.build(from_config_dict(c))
    c = default_config_dict()
    c.train.out_dir, c.train.init_from = str(tmp_path / "run"), str(tmp_path / "no-such-hf")
    with pytest.raises(ConfigError, match=r"config\.train\.init_from: .*no-such-hf is missing; want a"):
        Trainer(from_config_dict(c))

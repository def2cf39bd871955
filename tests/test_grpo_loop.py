"""`lr_jax.longreward` with ``config.algorithm = "grpo"``: the online loop end to end on the demo data with
the scripted judge (2 iterations, in process), and its resume after a kill between iterations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lr_jax.data import demo
from tests.helpers.params import random_params


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """A tiny random policy over the demo tokenizer's vocabulary, as an HF dir (config.init_from)."""
    from lr_jax import convert
    from lr_jax.data.tokenization import ChatTokenizer
    from lr_jax.model import ModelConfig

    root = tmp_path_factory.mktemp("grpo_start")
    demo.build_tiny_tokenizer(str(root / "tokenizer"))
    tok = ChatTokenizer.from_dir(str(root / "tokenizer"))
    cfg = ModelConfig.tiny(vocab_size=len(tok.tokenizer), hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=2, num_kv_heads=1, attention_backend="reference",
                           max_position_embeddings=256, eos_token_id=tok.eos_id)
    convert.to_hf(cfg, random_params(cfg, 0.2), root / "hf")
    return root / "hf"


def _config(run_dir: Path, start: Path):
    from lr_jax.longreward.config import default_config

    c = default_config()
    c.run_dir, c.algorithm, c.init_from = str(run_dir), "grpo", str(start)
    c.demo.sft_examples, c.demo.train_prompts, c.demo.eval_prompts, c.demo.context_tokens = 4, 6, 4, 16
    c.sample.num_samples, c.sample.max_new_tokens, c.sample.batch_size, c.sample.pad_to = 4, 6, 4, 64
    # held-out decoding of the rollouts' shape (4 prompts x 4 samples): the compiled sampler is reused
    c.eval.sample.temperature, c.eval.sample.num_samples = 1.0, 4
    c.grpo.iterations, c.grpo.prompts_per_iteration, c.grpo.lr = 2, 4, 3e-3
    c.grpo.kl_coef = 0.05  # the KL's reference: the starting policy's weights
    c.score.scripted, c.score.args = True, "--concurrency 8"
    return c


def _run(cfg) -> dict:
    from lr_jax.longreward.config import parse_stages
    from lr_jax.longreward.loop import Loop

    return Loop(cfg, parse_stages(""), 1).run()


@pytest.fixture(scope="module")
def resumed(start, tmp_path_factory) -> Path:
    """The job killed right after iteration 0's checkpoint (its marker never written), then re-run to the
    end (one run of the job stands for both the end-to-end and the resume test: each costs seconds of
    judge subprocesses)."""
    from lr_jax.longreward import markers, online

    d = tmp_path_factory.mktemp("grpo_loop") / "run"

    def dies_at_iteration_0(path, info):
        if Path(path).name == "iter_0000":
            raise KeyboardInterrupt("killed")
        markers.commit(path, info)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(online, "commit", dies_at_iteration_0)
        with pytest.raises(KeyboardInterrupt):
            _run(_config(d, start))
    it0 = d / "grpo/iter_0000"
    assert not (it0 / "DONE.json").exists() and (it0 / "metrics.json").exists()
    killed = {name: (it0 / name).read_bytes() for name in ("samples.jsonl", "scored.jsonl", "metrics.json")}
    _run(_config(d, start))
    # The finished iteration is committed from its record, not run again (no re-sampling, no re-scoring).
    assert {name: (it0 / name).read_bytes() for name in killed} == killed
    assert json.loads((it0 / "DONE.json").read_text()) == json.loads(killed["metrics.json"])
    return d


def test_two_iterations_end_to_end_and_resumed_after_a_kill(resumed):
    d = resumed
    s = json.loads((d / "summary.json").read_text())
    assert s["algorithm"] == "grpo" and [m["iteration"] for m in s["iterations"]] == [0, 1]
    for m in s["iterations"]:
        for k in ("reward/mean", "reward/std", "kl", "clip_ratio", "entropy", "loss", "grad_norm"):
            assert np.isfinite(m[k]), (k, m)
        assert m["groups"] == 4 and m["groups_failed"] == 0
    first, second = s["iterations"]
    # Each iteration's first step runs at the policy its samples came from, so ratio 1: nothing clipped.
    # Iteration 0 is the starting policy = the KL's reference (KL 0); iteration 1 (after the kill) sampled
    # from the checkpointed, updated policy (KL > 0): the job resumed from iteration 0's weights, not from
    # the start, and its sampler and update saw the same weights.
    assert first["clip_ratio"] == second["clip_ratio"] == 0.0
    assert first["kl"] < 1e-6 < second["kl"]
    for i, m in enumerate(s["iterations"]):
        it = d / "grpo" / f"iter_{i:04d}"
        samples = [json.loads(x) for x in (it / "samples.jsonl").read_text().splitlines()]
        scored = {r["id"]: r for r in map(json.loads, (it / "scored.jsonl").read_text().splitlines())}
        assert len(samples) == 16 and scored.keys() == {r["id"] for r in samples}
        assert all(len(r["token_ids"]) == len(r["logprobs"]) > 0 for r in samples)
        # The logged reward is the mean of this iteration's judged rewards.
        judged = [r["scores"]["reward"] for r in scored.values()]
        np.testing.assert_allclose(m["reward/mean"], np.mean(judged), rtol=1e-5)
    # The prompts cycle through the training file: iteration 1 starts where iteration 0 stopped.
    pids = [{json.loads(x)["prompt_id"] for x in (d / f"grpo/iter_{i:04d}/samples.jsonl").open()}
            for i in range(2)]
    assert len(pids[0] | pids[1]) == 6
    before, after = s["eval"]["before"], s["eval"]["after"]
    assert before["prompts"] == after["prompts"] == 4 and before["scored"] == after["scored"] == 16
    assert (d / "grpo/hf").is_dir() and (d / "grpo/metrics.jsonl").read_text().count("\n") == 2
    assert "| GRPO (after) |" in (d / "summary.md").read_text()


@pytest.mark.parametrize("change,needle", [
    ({"algorithm": "ppo"}, "config.algorithm: must be one of dpo, grpo, got 'ppo'"),
    ({"grpo.epsilon_low": -0.1}, "config.grpo.epsilon_low: must be >= 0 and <= 1, got -0.1"),
    ({"grpo.reference_metric": "bleu"}, "config.grpo.reference_metric: must be one of exact, match, f1"),
    ({"grpo.lr": float("nan")}, "config.grpo.lr: must be a finite number, got nan"),
    ({"grpo.iterations": 0}, "config.grpo.iterations: must be >= 1, got 0"),
    ({"sample.num_samples": 1}, "config.sample.num_samples: GRPO compares a group's answers, so it needs"),
])
def test_bad_grpo_options_are_one_line_before_anything_runs(change, needle, tmp_path):
    from lr_jax.errors import ConfigError
    from lr_jax.longreward.config import default_config
    from lr_jax.longreward.loop import Loop

    c = default_config()
    c.run_dir, c.algorithm = str(tmp_path / "run"), "grpo"
    for dotted, v in change.items():
        *path, last = dotted.split(".")
        node = c
        for k in path:
            node = node[k]
        node[last] = v
    with pytest.raises(ConfigError) as e:
        Loop(c, ("sft",), 1)  # checks every section it will use; sft alone skips the judge's checks
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()
    c.algorithm, c.grpo.iterations, c.grpo.epsilon_low, c.grpo.lr = "grpo", 2, 0.2, 1e-5
    c.grpo.reference_metric, c.sample.num_samples = "match", 4
    with pytest.raises(ConfigError, match="rounds must be 1"):
        Loop(c, ("sft",), 2)
    with pytest.raises(ConfigError, match=r"--stages: score, dpo is not a stage of config.algorithm='grpo' "
                                          r"\(its stages: sft, grpo, eval\)"):
        Loop(c, ("sft", "score", "dpo"), 1)
    c.algorithm = "dpo"
    with pytest.raises(ConfigError, match=r"--stages: grpo is not a stage of config.algorithm='dpo'"):
        Loop(c, ("grpo",), 1)


def test_dpo_stage_settings_do_not_see_the_grpo_options():
    """DPO's recorded stage settings (its DONE markers) are as before: config.grpo is the grpo stage's."""
    from lr_jax.longreward.config import STAGES, default_config, settings

    c = default_config()
    base = {s: settings(c, s) for s in STAGES}
    assert not any(k.startswith(("grpo.", "algorithm")) for v in base.values() for k in v)
    c.grpo.lr, c.grpo.iterations = 0.5, 3
    assert {s: settings(c, s) for s in STAGES} == base
    c.algorithm = "grpo"
    grpo = settings(c, "grpo")
    assert grpo["grpo.lr"] == 0.5 and grpo["algorithm"] == "grpo" and "sample.temperature" in grpo
    assert "pairs.args" not in settings(c, "eval") and settings(c, "eval")["grpo.iterations"] == 3

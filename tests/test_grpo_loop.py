"""`lr_jax.longreward` with ``config.algorithm = "grpo"``: the online loop end to end on the demo data with
the scripted judge (2 iterations, in process), and its resume after a kill between iterations."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from lr_jax.data import demo


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """A tiny random policy over the demo tokenizer's vocabulary, as an HF dir (config.init_from)."""
    from lr_jax import convert
    from lr_jax.data.tokenization import ChatTokenizer
    from lr_jax.model import ModelConfig, init_params

    root = tmp_path_factory.mktemp("grpo_start")
    demo.build_tiny_tokenizer(str(root / "tokenizer"))
    tok = ChatTokenizer.from_dir(str(root / "tokenizer"))
    cfg = ModelConfig.tiny(vocab_size=len(tok.tokenizer), hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=2, num_kv_heads=1, attention_backend="reference",
                           max_position_embeddings=256, eos_token_id=tok.eos_id)
    params = jax.tree.map(lambda a: a * 10 if a.ndim >= 2 else a, init_params(cfg, jax.random.key(0)))
    convert.to_hf(cfg, jax.tree.map(np.asarray, params), root / "hf")
    return root / "hf"


def _config(run_dir: Path, start: Path):
    from lr_jax.longreward.config import default_config

    c = default_config()
    c.run_dir, c.algorithm, c.init_from = str(run_dir), "grpo", str(start)
    c.demo.sft_examples, c.demo.train_prompts, c.demo.eval_prompts, c.demo.context_tokens = 4, 6, 3, 16
    c.sample.num_samples, c.sample.max_new_tokens, c.sample.batch_size, c.sample.pad_to = 4, 6, 4, 64
    c.eval.sample.temperature, c.eval.sample.num_samples = 1.0, 2
    c.grpo.iterations, c.grpo.prompts_per_iteration, c.grpo.lr = 2, 4, 3e-3
    c.grpo.kl_coef = 0.05  # the KL's reference: the starting policy's weights
    c.score.scripted, c.score.args = True, "--concurrency 8"
    return c


def _run(cfg) -> dict:
    from lr_jax.longreward.config import parse_stages
    from lr_jax.longreward.loop import Loop

    return Loop(cfg, parse_stages(""), 1).run()


@pytest.fixture(scope="module")
def reference(start, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("grpo_loop") / "run"
    _run(_config(d, start))
    return d


def test_two_iterations_end_to_end(reference):
    d = reference
    s = json.loads((d / "summary.json").read_text())
    assert s["algorithm"] == "grpo" and [m["iteration"] for m in s["iterations"]] == [0, 1]
    for m in s["iterations"]:
        for k in ("reward/mean", "reward/std", "kl", "clip_ratio", "entropy", "loss", "grad_norm"):
            assert np.isfinite(m[k]), (k, m)
        assert m["groups"] == 4 and m["groups_failed"] == 0
    first, second = s["iterations"]
    # Iteration 0 updates the starting policy against its own sampled log-probs: ratio 1, nothing clipped,
    # no KL yet; iteration 1 samples from the updated policy, which has moved away from the reference.
    assert first["clip_ratio"] == 0.0 and first["kl"] < 1e-6 and second["kl"] > first["kl"]
    for i, m in enumerate(s["iterations"]):
        it = d / "grpo" / f"iter_{i:04d}"
        samples = [json.loads(x) for x in (it / "samples.jsonl").read_text().splitlines()]
        scored = {r["id"]: r for r in map(json.loads, (it / "scored.jsonl").read_text().splitlines())}
        assert len(samples) == 16 and scored.keys() == {r["id"] for r in samples}
        assert all(len(r["token_ids"]) == len(r["logprobs"]) > 0 for r in samples)
        # The logged reward is the mean of this iteration's judged rewards.
        np.testing.assert_allclose(m["reward/mean"], np.mean([r["scores"]["reward"] for r in scored.values()]),
                                   rtol=1e-5)
    # The prompts cycle through the training file: iteration 1 starts where iteration 0 stopped.
    pids = [sorted({json.loads(x)["prompt_id"] for x in (d / f"grpo/iter_{i:04d}/samples.jsonl").open()})
            for i in range(2)]
    assert len(set(pids[0]) | set(pids[1])) == 6
    before, after = s["eval"]["before"], s["eval"]["after"]
    assert before["prompts"] == after["prompts"] == 3 and before["scored"] == after["scored"] == 6
    assert (d / "grpo/hf").is_dir() and (d / "grpo/metrics.jsonl").read_text().count("\n") == 2
    assert "| GRPO (after) |" in (d / "summary.md").read_text()


def test_killed_after_a_checkpoint_resumes_to_the_same_policy(reference, start, tmp_path, monkeypatch):
    """Killed right after iteration 0's checkpoint (its marker never written), then re-run: the same
    samples, rewards and final weights as the uninterrupted run, no judge question paid twice."""
    from lr_jax.longreward import markers, online

    d = tmp_path / "run"
    real = markers.commit

    def dies_at_iteration_0(path, info):
        if Path(path).name == "iter_0000":
            raise KeyboardInterrupt("killed")
        real(path, info)

    monkeypatch.setattr(online, "commit", dies_at_iteration_0)
    with pytest.raises(KeyboardInterrupt):
        _run(_config(d, start))
    monkeypatch.setattr(online, "commit", real)
    assert not (d / "grpo/iter_0000/DONE.json").exists() and (d / "grpo/iter_0000/metrics.json").exists()
    _run(_config(d, start))
    for i in range(2):
        for name in ("samples.jsonl", "metrics.json"):
            assert (d / f"grpo/iter_{i:04d}" / name).read_bytes() == (
                reference / f"grpo/iter_{i:04d}" / name).read_bytes(), (i, name)
    from safetensors.numpy import load_file

    a, b = load_file(d / "grpo/hf/model.safetensors"), load_file(reference / "grpo/hf/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

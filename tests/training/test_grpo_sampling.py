"""The sampler's recorded log-probs (GRPO's old log-probs) == a teacher-forced forward of the same tokens."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.data import demo
from lr_jax.model import ModelConfig, hidden_states, init_params, unembed
from lr_jax.training import losses


def _teacher_forced(cfg, params, seqs, starts):
    """Per sequence, log p(seq[t] | seq[:t]) for t >= its start, by ONE plain causal forward over the
    sequences right-padded to one length (padding = segment 0: one compiled program for every row)."""
    S = max(len(s) for s in seqs)
    tokens = np.zeros((len(seqs), S), np.int32)
    seg = np.zeros((len(seqs), S), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)], seg[i, :len(s)] = s, 1
    pos = np.broadcast_to(np.arange(S, dtype=np.int32), tokens.shape)
    h = hidden_states(cfg, params, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg),
                      jnp.zeros_like(jnp.asarray(seg)))
    tok = np.asarray(losses.token_logprobs(h, unembed(cfg, params).astype(h.dtype),
                                           jnp.roll(jnp.asarray(tokens), -1, axis=1)))
    return [tok[i, st - 1: len(s) - 1] for i, (s, st) in enumerate(zip(seqs, starts, strict=True))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random lr_jax model dir over the demo tokenizer (weights scaled up: logits O(1))."""
    from lr_jax.convert import save_flax

    root = tmp_path_factory.mktemp("grpo_sampler")
    demo.build_tiny_tokenizer(str(root / "tokenizer"))
    from lr_jax.data.tokenization import ChatTokenizer

    tok = ChatTokenizer.from_dir(str(root / "tokenizer"))
    cfg = ModelConfig.tiny(vocab_size=len(tok.tokenizer), attention_backend="reference",
                           max_position_embeddings=256, eos_token_id=tok.eos_id)
    params = jax.tree.map(lambda a: a * 10 if a.ndim > 2 else a, init_params(cfg, jax.random.key(0)))
    save_flax(cfg, params, root / "model")
    return root


def test_samples_jsonl_logprobs_equal_a_teacher_forced_forward(model_dir, tmp_path):
    from lr_jax.convert import load_flax
    from lr_jax.data.tokenization import ChatTokenizer
    from lr_jax.sample import SampleOptions, decoding_fields, run

    words = demo.vocabulary_texts()[0].split()
    prompts = [{"id": f"p{i}", "context": " ".join(words[5 * i: 5 * i + 20]), "query": "What is the key ?"}
               for i in range(2)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    out = tmp_path / "samples.jsonl"
    # Warped sampling (T 0.7, top-p 0.9): the record must still be the temperature-1 policy's log-prob
    # (the teacher-forced forward below is at temperature 1; T 0.7's would differ by far more than 1e-5).
    opts = dict(model=str(model_dir / "model"), prompts=str(tmp_path / "prompts.jsonl"), out=str(out),
                tokenizer=str(model_dir / "tokenizer"), num_samples=3, temperature=0.7, top_p=0.9,
                max_new_tokens=12, pad_to=16, no_progress=True, mesh="1,1,1")
    run(SampleOptions(**opts, logprobs=True))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6
    cfg, params = load_flax(model_dir / "model")
    tok = ChatTokenizer.from_dir(str(model_dir / "tokenizer"))
    by_id = {p["id"]: tok.encode_prompt(p["context"], p["query"]).ids.tolist() for p in prompts}
    for r in rows:
        stop = r["finish_reason"] == "stop"
        assert len(r["token_ids"]) == len(r["logprobs"]) == r["num_tokens"] + stop
        assert (r["token_ids"][-1] == tok.eos_id) == stop
    want = _teacher_forced(cfg, params, [by_id[r["prompt_id"]] + r["token_ids"] for r in rows],
                           [len(by_id[r["prompt_id"]]) for r in rows])
    for r, w in zip(rows, want, strict=True):
        np.testing.assert_allclose(r["logprobs"], w, rtol=1e-5, atol=1e-5)
    assert len({tuple(r["token_ids"]) for r in rows}) > 1
    # Off by default, and no sampling option of the loop: DPO's Samples rows are as before.
    assert SampleOptions(model="m", prompts="p", out="o").logprobs is False
    assert "logprobs" not in decoding_fields()

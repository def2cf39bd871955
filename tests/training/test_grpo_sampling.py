"""The sampler's recorded log-probs (GRPO's old log-probs) == a teacher-forced forward of the same tokens."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np

from lr_jax.model import ModelConfig, hidden_states, unembed
from lr_jax.model.decode import row_key
from lr_jax.sample import Policy, SampleOptions, decoding_fields
from lr_jax.training import losses
from tests.helpers.params import random_params

EOS = tuple(range(3, 256, 32))  # 8 of 256 ids end a row: some rows stop early, some run on




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
                                           jnp.roll(jnp.asarray(tokens), -1, axis=1), chunk_size=32))
    return [tok[i, st - 1: len(s) - 1] for i, (s, st) in enumerate(zip(seqs, starts, strict=True))]


def test_completion_logprobs_equal_a_teacher_forced_forward():
    # test_grpo.py's tiny model, weights large enough that logits are O(1) and rows stop at EOS at times.
    cfg = ModelConfig.tiny(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, attention_backend="reference")
    params = random_params(cfg, 0.6, array=jnp.asarray)
    decode = lambda ids, skip_special_tokens: " ".join(map(str, ids))
    tok = SimpleNamespace(pad_id=0, tokenizer=SimpleNamespace(decode=decode))
    policy = Policy(cfg, params, tok, None, EOS, None, 1)
    prompts = [[5, 9, 11, 200, 31], [40, 41, 42]]
    n = 4
    keys = [row_key(0, f"p{i}", k) for i in range(len(prompts)) for k in range(n)]
    # Warped sampling (T 0.7, top-k 20, top-p 0.9): the record must still be the temperature-1 policy's
    # log-prob (the teacher-forced forward is at temperature 1; T 0.7's differs by far more than 1e-5).
    outs = policy.complete(prompts, keys, num_samples=n, max_new_tokens=10, temperature=0.7, top_k=20,
                           top_p=0.9, pad_to=8, logprobs=True)
    rows = [(p, c) for p, cs in zip(prompts, outs, strict=True) for c in cs]
    for _, c in rows:
        ids = list(c.token_ids)
        assert len(ids) == len(c.logprobs) == c.num_tokens + c.finished and (ids[-1] in EOS) == c.finished
        assert c.text == decode(ids[:c.num_tokens], True)  # the text leaves the EOS out, the ids keep it
    assert 0 < sum(c.finished for _, c in rows) < len(rows) and len({c.token_ids for _, c in rows}) > 1
    want = _teacher_forced(cfg, params, [p + list(c.token_ids) for p, c in rows], [len(p) for p, _ in rows])
    for (_, c), w in zip(rows, want, strict=True):
        np.testing.assert_allclose(c.logprobs, w, rtol=1e-5, atol=1e-5)
    # Asked for only: plain completions carry no log-probs.
    plain = policy.complete(prompts, keys, num_samples=n, max_new_tokens=10, temperature=0.7, top_k=20,
                            top_p=0.9, pad_to=8)
    assert [c.token_ids for cs in plain for c in cs] == [c.token_ids for _, c in rows]
    assert all(c.logprobs is None for cs in plain for c in cs)
    # Off by default, and no loop config.sample field: DPO's Samples rows are as before.
    assert SampleOptions(model="m", prompts="p", out="o").logprobs is False
    assert "logprobs" not in decoding_fields()

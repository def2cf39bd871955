"""The GRPO train step: shared-prefix group rows == separate rows (loss, metrics, update; full and LoRA with
the KL to the reference), ratio 1 against the sampler's own log-probs, and the update's sign."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lr_jax.data.packing import PackingConfig, layout, pack, stack_rows
from lr_jax.model import AbstractModel, LoRAConfig, ModelConfig, lora
from lr_jax.training.grpo import GRPOConfig
from lr_jax.training.grpo_step import GRPOSpec, make_batch, response_logps, train_step
from lr_jax.training.step import trainable
from tests.helpers.params import random_params

VOCAB, G, T, SEQ, P, ROWS = 256, 4, 6, 96, 2, 12




def _model(rank=0):
    cfg = ModelConfig.tiny(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, attention_backend="reference",
                           lora=LoRAConfig(rank=rank, alpha=8.0) if rank else None)
    params = random_params(cfg, 0.02, array=jnp.asarray)
    if rank:  # adapters moved off B = 0, so the policy differs from its base (the KL's reference)
        ad, base = lora.partition(AbstractModel.of(cfg), params)
        rng = np.random.default_rng(7)
        ad = jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.3, x.shape).astype(np.float32), ad)
        params = lora.combine(ad, base)
    return cfg, params


def _groups(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, VOCAB, rng.integers(5, 12)).tolist(),
             [rng.integers(1, VOCAB, rng.integers(1, T + 1)).tolist() for _ in range(G)]) for _ in range(n)]


def _separate(groups, rewards, old):
    """One row per (group, response), the prompt repeated; response j is branch j + 1 of group i."""
    pc = PackingConfig(seq_len=SEQ, max_pairs_per_row=P)
    rows = []
    for i, (p, rs) in enumerate(groups):
        for j, r in enumerate(rs):
            seg = layout(np.asarray(p), [np.asarray(r)], pad_id=0, example_id=i)
            rows.append(pack([dataclasses.replace(seg, branch_ids=seg.branch_ids * (j + 1))], pc)[0])
    out = stack_rows(rows, ROWS, pc)
    b = {k: out[k] for k in ("tokens", "targets", "loss_mask", "positions", "segment_ids", "branch_ids")}
    return {**b, "group_ids": out["example_ids"], "rewards": np.asarray(rewards, np.float32),
            "old_logps": np.asarray(old, np.float32)}


def test_shared_prefix_step_equals_separate_rows_step():
    """LoRA with the KL to its base weights (the full-parameter loss and gradients: test_grpo.py)."""
    rank = 4
    cfg, params = _model(rank)
    groups = _groups()
    rng = np.random.default_rng(1)
    rewards = rng.uniform(0, 1, (len(groups), G))
    old = rng.normal(-5.5, 0.3, (len(groups), G, T))  # near the model's log-probs: some ratios clip
    old_lists = [[o[j, :len(r)] for j, r in enumerate(rs)] for o, (_, rs) in zip(old, groups, strict=True)]
    shared = make_batch([p for p, _ in groups], [rs for _, rs in groups], rewards, old_lists,
                        seq_len=SEQ, max_len=T, segments_per_row=P, rows=ROWS)
    sep = _separate(groups, rewards, np.where(np.arange(T) < np.asarray(
        [[len(r) for r in rs] for _, rs in groups])[..., None], old, 0.0))
    assert (shared["tokens"] > 0).sum() < (sep["tokens"] > 0).sum()  # the prompt once per group, not G times
    spec = GRPOSpec(cfg, GRPOConfig(kl_coef=0.1, epsilon_high=0.28), group_size=G, max_len=T,
                    segments_per_row=P, logprob_chunk_size=32, entropy=False)
    opt = optax.sgd(1.0)  # the update is minus the gradient: compares the gradients themselves
    state = {"params": params, "opt_state": opt.init(trainable(spec.model, params)), "step": jnp.int32(0)}
    step = jax.jit(lambda s, b: train_step(spec, opt, s, b))
    s_sh, m_sh = step(state, {k: jnp.asarray(v) for k, v in shared.items()})
    s_sep, m_sep = step(state, {k: jnp.asarray(v) for k, v in sep.items()})
    assert float(m_sep["clip_ratio"]) > 0 and float(m_sep["kl"]) > 1e-4
    for k in m_sep:
        np.testing.assert_allclose(float(m_sh[k]), float(m_sep[k]), rtol=1e-4, atol=1e-6, err_msg=k)
    moved = 0.0
    for a, b, p0 in zip(*(jax.tree.leaves(s["params"]) for s in (s_sh, s_sep, state)), strict=True):
        d_sh, d_sep = np.asarray(a) - np.asarray(p0), np.asarray(b) - np.asarray(p0)
        scale = float(np.abs(d_sep).max())
        np.testing.assert_allclose(d_sh, d_sep, rtol=1e-4, atol=1e-4 * scale + 1e-9)
        moved = max(moved, scale)
    assert moved > 0
    base0 = lora.partition(spec.model, params)[1]  # only the adapters move
    after = lora.partition(spec.model, s_sh["params"])[1]
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(base0), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_update_raises_the_high_advantage_response():
    """One group, rewards 3 > 1 > 0 = 0; old log-probs are the policy's own (ratio 1 at the first update,
    nothing clipped). A few steps raise the best response's log-prob and lower the worst ones'."""
    cfg, params = _model()
    (prompt, rs), = _groups(1, seed=5)
    rewards = np.asarray([[3.0, 0.0, 1.0, 0.0]])
    spec = GRPOSpec(cfg, GRPOConfig(), group_size=G, max_len=T, logprob_chunk_size=32, entropy=False)
    zero = [[[0.0] * len(r) for r in rs]]
    batch = {k: jnp.asarray(v) for k, v in make_batch([prompt], [rs], rewards, zero, seq_len=64,
                                                        max_len=T).items()}
    logps = jax.jit(lambda p: response_logps(spec, p, batch)[:2])
    lp0, mask = logps(params)
    batch["old_logps"] = lp0  # what the sampler recorded for these tokens
    opt = optax.adam(3e-3)
    state = {"params": params, "opt_state": opt.init(params), "step": jnp.int32(0)}
    step = jax.jit(lambda s: train_step(spec, opt, s, batch))
    state, m = step(state)  # metrics of the first update: at the sampling policy
    assert float(m["clip_ratio"]) == 0.0
    a = (rewards[0] - rewards[0].mean()) / (rewards[0].std(ddof=1) + 1e-4)
    n = np.asarray(mask[0].sum(-1))
    np.testing.assert_allclose(float(m["loss"]), -(a * n).sum() / n.sum(), rtol=1e-5, atol=1e-6)  # ρ = 1
    for _ in range(3):
        state, m = step(state)
    gain = np.asarray(((logps(state["params"])[0] - lp0) * mask).sum(-1))[0]
    assert gain[0] > 0.05 and gain[1] < -0.05 and gain[3] < -0.05, gain
    assert gain[0] > gain[2] > min(gain[1], gain[3]), gain

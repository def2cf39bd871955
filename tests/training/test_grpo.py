"""GRPO objective vs a naive float64 NumPy reference; shared-prefix group rows vs separate rows."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.data.packing import PackingConfig, layout, pack, stack_rows
from lr_jax.errors import ConfigError
from lr_jax.model import ModelConfig, hidden_states, init_params, unembed
from lr_jax.training import losses
from lr_jax.training.grpo import GRPOConfig, group_advantages, grpo_loss, row_responses

# ---------------------------------------------------------------------------------------------- reference


def naive_grpo(logp, old, ref, mask, rewards, cfg):
    """Loss and d loss / d logp by loops over groups, responses and tokens (float64 NumPy)."""
    N, G, T = logp.shape
    adv = np.zeros((N, G))
    kept = np.zeros(N, bool)
    all_r = [rewards[i, j] for i in range(N) for j in range(G) if mask[i].sum() > 0]
    bmean = sum(all_r) / len(all_r)
    bstd = math.sqrt(sum((r - bmean) ** 2 for r in all_r) / (len(all_r) - 1))
    for i in range(N):
        valid = mask[i].sum() > 0
        r = list(rewards[i])
        mean = sum(r) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1))
        equal = max(r) == min(r)
        kept[i] = valid and not (cfg.drop_equal_groups and equal)
        for j in range(G):
            if equal or not valid:
                continue
            a = r[j] - mean
            if cfg.scale_rewards == "group":
                a /= std + cfg.std_eps
            elif cfg.scale_rewards == "batch":
                a /= bstd + cfg.std_eps
            adv[i, j] = a
    terms, grads = np.zeros_like(logp), np.zeros_like(logp)
    for i in range(N):
        for j in range(G):
            for t in range(T):
                if not (kept[i] and mask[i, j, t]):
                    continue
                rho = math.exp(logp[i, j, t] - old[i, j, t])
                a = adv[i, j]
                c = min(max(rho, 1 - cfg.epsilon_low), 1 + cfg.epsilon_high)
                if rho * a <= c * a:
                    terms[i, j, t], grads[i, j, t] = -rho * a, -rho * a
                else:
                    terms[i, j, t] = -c * a
                if cfg.kl_coef:
                    d = ref[i, j, t] - logp[i, j, t]
                    terms[i, j, t] += cfg.kl_coef * (math.exp(d) - d - 1)
                    grads[i, j, t] += cfg.kl_coef * (1 - math.exp(d))
    if cfg.normalization == "token":
        n = sum(mask[i, j, t] for i in range(N) for j in range(G) for t in range(T) if kept[i])
        return terms.sum() / n, grads / n, adv
    loss, grad, n_resp = 0.0, np.zeros_like(logp), 0
    for i in range(N):
        for j in range(G):
            n_tok = mask[i, j].sum()
            if kept[i] and n_tok:
                n_resp += 1
                loss += terms[i, j].sum() / n_tok
                grad[i, j] = grads[i, j] / n_tok
    return loss / n_resp, grad / n_resp, adv


def _data(seed=0, N=5, G=4, T=7):
    """Random arrays; group 1 has all-equal rewards, group N-1 is padding (no tokens)."""
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.1, 3.0, (N, G, T))
    old = logp + rng.normal(0, 0.3, (N, G, T))  # ratios spread across both clip bounds
    ref = logp + rng.normal(0, 0.3, (N, G, T))
    lens = rng.integers(1, T + 1, (N, G))
    mask = (np.arange(T) < lens[..., None]).astype(np.float64)
    mask[-1] = 0
    rewards = rng.integers(0, 4, (N, G)).astype(np.float64) + rng.uniform(0, 1, (N, G)) * (seed % 2)
    rewards[1] = 0.5
    return logp, old, ref, mask, rewards


@jax.jit(static_argnums=0)
def _loss_and_grad(cfg, logp, old, ref, mask, rewards, entropies, denominator, advantages):
    fn = lambda lp: grpo_loss(lp, old, mask, rewards, cfg, ref_logps=ref, entropies=entropies,
                              denominator=denominator, advantages=advantages)
    return jax.value_and_grad(fn, has_aux=True)(logp)


def _jax_loss(cfg, logp, old, ref, mask, rewards, entropies=None, denominator=None, advantages=None):
    (loss, metrics), grad = _loss_and_grad(cfg, logp, old, ref, mask, rewards, entropies, denominator,
                                           advantages)
    return float(loss), np.asarray(grad), {k: float(v) for k, v in metrics.items()}


CASES = [
    dict(),
    dict(normalization="sequence"),
    dict(epsilon_low=0.2, epsilon_high=0.28, kl_coef=0.1),
    dict(scale_rewards="none", normalization="sequence", kl_coef=0.05, drop_equal_groups=True),
    dict(scale_rewards="batch", drop_equal_groups=True, epsilon_low=0.1, epsilon_high=0.5),
    dict(scale_rewards="group", std_eps=0.0, kl_coef=1.0, epsilon_high=0.0, epsilon_low=0.0),
]


@pytest.mark.parametrize("opts", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_grad_match_naive_float64(opts, seed):
    cfg = GRPOConfig(**opts)
    logp, old, ref, mask, rewards = _data(seed)
    want_loss, want_grad, want_adv = naive_grpo(logp, old, ref, mask, rewards, cfg)
    with jax.enable_x64(True):
        loss, grad, m = _jax_loss(cfg, logp, old, ref, mask, rewards)
        adv, _, equal = group_advantages(jnp.asarray(rewards), cfg, jnp.asarray(mask.sum((1, 2)) > 0))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-12, atol=1e-14)
    assert np.asarray(equal).tolist() == [False, True, False, False, False]
    # The clip metrics are the fractions of counted tokens clipped on the advantage's side.
    assert 0.0 < m["clip_ratio"] <= 1.0
    np.testing.assert_allclose(m["clip_ratio"], m["clip_ratio/low_mean"] + m["clip_ratio/high_mean"],
                               rtol=1e-12)
    assert ("kl" in m) == bool(cfg.kl_coef)


def test_metrics_match_naive():
    cfg = GRPOConfig(kl_coef=0.1)
    logp, old, ref, mask, rewards = _data(2)
    ent = np.random.default_rng(5).uniform(0, 2, logp.shape)
    with jax.enable_x64(True):
        _, _, m = _jax_loss(cfg, logp, old, ref, mask, rewards, entropies=ent)
    valid = mask.sum((1, 2)) > 0  # groups 0..3
    r = rewards[valid]
    np.testing.assert_allclose(m["reward/mean"], r.mean(), rtol=1e-12)
    np.testing.assert_allclose(m["reward/std"], r.std(axis=1, ddof=1).mean(), rtol=1e-12)
    assert m["frac_reward_zero_std"] == 0.25
    w = mask.astype(bool)
    d = ref - logp
    np.testing.assert_allclose(m["kl"], (np.exp(d) - d - 1)[w].mean(), rtol=1e-12)
    np.testing.assert_allclose(m["entropy"], ent[w].mean(), rtol=1e-12)
    rho = np.exp(logp - old)
    _, _, adv = naive_grpo(logp, old, ref, mask, rewards, cfg)
    a = np.broadcast_to(adv[..., None], logp.shape)
    np.testing.assert_allclose(m["clip_ratio/low_mean"], ((rho < 0.8) & (a < 0))[w].mean(), rtol=1e-12)
    np.testing.assert_allclose(m["clip_ratio/high_mean"], ((rho > 1.2) & (a > 0))[w].mean(), rtol=1e-12)
    has = mask.sum(-1) > 0
    np.testing.assert_allclose(m["advantages/mean"], adv[has].mean(), atol=1e-12)
    assert m["advantages/max"] == adv[has].max() and m["advantages/min"] == adv[has].min()
    np.testing.assert_allclose(m["completions/mean_length"], mask.sum(-1)[valid].mean(), rtol=1e-12)


def test_clipped_tokens_have_zero_gradient_on_the_advantages_side():
    cfg = GRPOConfig(epsilon_low=0.2, epsilon_high=0.28)
    rewards = np.array([[1.0, 0.0]])  # response 0: A > 0, response 1: A < 0
    ratios = np.array([1.5, 1.1, 0.9, 0.5])  # above, inside (twice), below the clip range [0.8, 1.28]
    logp = np.full((1, 2, 4), -1.0)
    old = logp - np.log(ratios)
    loss = lambda lp: grpo_loss(lp, old, np.ones_like(logp), rewards, cfg)[0]
    grad = np.asarray(jax.jit(jax.grad(loss))(logp))
    pos, neg = grad[0, 0], grad[0, 1]
    assert pos[0] == 0.0 and neg[3] == 0.0  # pushed past the bound in the advantage's direction: no signal
    assert (pos[1:] < 0).all()  # A > 0: raise logp (the loss falls) wherever not clipped, also below 1 - ε
    assert (neg[:3] > 0).all()  # A < 0: lower it, also when the ratio already exceeds 1 + ε


def test_equal_groups_dropped_vs_kept():
    logp, old, ref, mask, rewards = _data(0)
    keep, drop = GRPOConfig(), GRPOConfig(drop_equal_groups=True)
    l_keep, g_keep, m_keep = _jax_loss(keep, logp, old, ref, mask, rewards)
    l_drop, g_drop, m_drop = _jax_loss(drop, logp, old, ref, mask, rewards)
    n_all, n_eq = mask.sum(), mask[1].sum()
    # Kept, the equal group has A = 0: no gradient of its own, but its tokens dilute the token mean.
    np.testing.assert_allclose(l_keep, l_drop * (n_all - n_eq) / n_all, rtol=1e-5)
    assert not g_keep[1].any() and not g_drop[1].any()
    np.testing.assert_allclose(g_keep[0], g_drop[0] * (n_all - n_eq) / n_all, rtol=1e-5)
    assert m_keep["frac_reward_zero_std"] == m_drop["frac_reward_zero_std"] == 0.25


@pytest.mark.parametrize(("normalization", "scale"), [("token", "batch"), ("sequence", "group")])
def test_micro_batches_with_the_whole_batch_denominator_add_up(normalization, scale):
    """Gradient accumulation: groups split into micro-batches, each divided by the whole batch's count (and,
    for the batch std, given its slice of the whole batch's advantages)."""
    cfg = GRPOConfig(normalization=normalization, scale_rewards=scale, kl_coef=0.1, drop_equal_groups=True)
    logp, old, ref, mask, rewards = _data(4)
    full, g_full, _ = _jax_loss(cfg, logp, old, ref, mask, rewards)
    kept = np.array([True, False, True, True, False])  # group 1: equal rewards (dropped); group 4: padding
    denom = mask[kept].sum() if normalization == "token" else (mask[kept].sum(-1) > 0).sum()
    adv = np.asarray(group_advantages(jnp.asarray(rewards), cfg, jnp.asarray(mask.sum((1, 2)) > 0))[0])
    parts = [_jax_loss(cfg, *(x[sl] for x in (logp, old, ref, mask, rewards)), denominator=float(denom),
                       advantages=adv[sl] if scale == "batch" else None)
             for sl in (slice(0, 2), slice(2, 5))]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], full, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([parts[0][1], parts[1][1]]), g_full, rtol=1e-5, atol=1e-8)


def test_kl_coef_zero_ignores_the_reference():
    logp, old, ref, mask, rewards = _data(1)
    cfg = GRPOConfig()
    with_ref = _jax_loss(cfg, logp, old, np.full_like(ref, np.nan), mask, rewards)
    without = _jax_loss(cfg, logp, old, None, mask, rewards)
    assert with_ref[0] == without[0] and np.array_equal(with_ref[1], without[1]) and "kl" not in without[2]
    with pytest.raises(ConfigError, match="ref_logps"):
        _jax_loss(GRPOConfig(kl_coef=0.1), logp, old, None, mask, rewards)


def test_padding_values_never_leak_into_loss_or_gradient():
    """Masked tokens may hold garbage (the sampler's padding): inf / NaN there change nothing."""
    cfg = GRPOConfig(kl_coef=0.1, normalization="sequence")
    logp, old, ref, mask, rewards = _data(3)
    ent = np.ones_like(logp)
    clean = _jax_loss(cfg, logp, old, ref, mask, rewards, entropies=ent)
    pad = mask == 0
    dirty = _jax_loss(cfg, np.where(pad, -np.inf, logp), np.where(pad, np.nan, old), np.where(pad, 1e4, ref),
                      mask, rewards, entropies=np.where(pad, np.nan, ent))
    assert np.isfinite(clean[0]) and clean[0] == dirty[0] and np.array_equal(clean[1], dirty[1])
    assert clean[2] == dirty[2] and dirty[2]["entropy"] == 1.0


def test_config_bounds_are_checked():
    with pytest.raises(ConfigError, match="epsilon_low"):
        GRPOConfig(epsilon_low=-0.1)
    with pytest.raises(ConfigError, match="normalization"):
        GRPOConfig(normalization="group")
    with pytest.raises(ConfigError, match="kl_coef"):
        GRPOConfig(kl_coef=float("nan"))
    with pytest.raises(ConfigError, match="at least 2"):
        group_advantages(jnp.ones((3, 1)), GRPOConfig())


# ------------------------------------------------------------------------------ shared-prefix group rows

VOCAB, G, T, SEQ, P = 256, 4, 6, 96, 2


def _model():
    cfg = ModelConfig.tiny(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, attention_backend="reference")
    return cfg, init_params(cfg, jax.random.key(0))


def _groups(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, VOCAB, rng.integers(5, 12)),
             [rng.integers(1, VOCAB, rng.integers(1, T + 1)) for _ in range(G)]) for _ in range(n)]


ROWS = 12  # both layouts padded to [ROWS, SEQ] with P slots, so one compiled program serves both


def _as_batch(rows):
    pc = PackingConfig(seq_len=SEQ, max_pairs_per_row=P)
    return {k: jnp.asarray(v) for k, v in stack_rows(rows, ROWS, pc).items()}


def test_shared_prefix_group_rows_equal_separate_rows_loss_and_grads():
    cfg, params = _model()
    groups = _groups()
    n = len(groups)
    pc = PackingConfig(seq_len=SEQ, max_pairs_per_row=P)
    # Shared: each group is one segment (prompt once, G branches); 3 groups in 2 rows of 2 segments.
    shared = _as_batch(pack([layout(p, rs, pad_id=0, example_id=i) for i, (p, rs) in enumerate(groups)], pc))
    # Separate: one row per (group, response), the prompt repeated; response j is branch j + 1 of group i.
    sep_rows = []
    for i, (p, rs) in enumerate(groups):
        for j, r in enumerate(rs):
            seg = layout(p, [r], pad_id=0, example_id=i)
            row = pack([dataclasses.replace(seg, branch_ids=seg.branch_ids * (j + 1))], pc)[0]
            sep_rows.append(row)
    sep = _as_batch(sep_rows)
    # Token counts (pad id 0 is never drawn): L - 1 + sum(1 + |r|) per group shared, sum(L + |r|) separate.
    n_shared = sum(len(p) - 1 + sum(1 + len(r) for r in rs) for p, rs in groups)
    assert int((shared["tokens"] > 0).sum()) == n_shared
    assert int((sep["tokens"] > 0).sum()) == sum(len(p) + len(r) for p, rs in groups for r in rs)

    rng = np.random.default_rng(1)
    old = rng.normal(-5.5, 0.3, (n, G, T))  # near the tiny model's log-probs (≈ -log 256): some ratios clip
    ref = rng.normal(-5.5, 0.3, (n, G, T))
    rewards = rng.uniform(0, 1, (n, G))
    gcfgs = (GRPOConfig(kl_coef=0.05, epsilon_high=0.28), GRPOConfig(normalization="sequence"))

    @jax.jit
    def run(prm, b):
        """Per-response log-probs and mask from ONE forward over the rows, each config's loss and metrics,
        and the parameter gradients of every loss (one backward, batched over the losses)."""
        def all_losses(p2):
            h = hidden_states(cfg, p2, b["tokens"], b["positions"], b["segment_ids"], b["branch_ids"])
            tok = losses.token_logprobs(h, unembed(cfg, p2).astype(h.dtype), b["targets"], chunk_size=32)
            lp, m = row_responses(tok, b["positions"], b["segment_ids"], b["branch_ids"], b["loss_mask"],
                                  num_segments=P, group_size=G, max_len=T, group_ids=b["example_ids"],
                                  num_groups=n)
            outs = [grpo_loss(lp, old, m, rewards, c, ref_logps=ref) for c in gcfgs]
            vals = jnp.stack([x[0] for x in outs])
            return vals, (vals, lp, m, [x[1] for x in outs])
        grads, (vals, lp, m, metrics) = jax.jacrev(all_losses, has_aux=True)(prm)
        return lp, m, [((vals[i], metrics[i]), jax.tree.map(lambda x, i=i: x[i], grads))
                       for i in range(len(gcfgs))]

    lp_sh, m_sh, out_sh = run(params, shared)
    lp_sep, m_sep, out_sep = run(params, sep)

    # Per-token log-probs of every branch == those of its separate row (the sampler's log-probs are reusable).
    np.testing.assert_array_equal(m_sh, m_sep)
    assert m_sep.sum() == sum(len(r) for _, rs in groups for r in rs)  # no response lost its tail
    np.testing.assert_allclose(lp_sh, lp_sep, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(lp_sep).min(where=m_sep > 0, initial=np.inf)) > 0  # real log-probs, not zeros

    for ((l_sh, met_sh), g_sh), ((l_sep, met_sep), g_sep) in zip(out_sh, out_sep, strict=True):
        np.testing.assert_allclose(float(l_sh), float(l_sep), rtol=1e-5)
        assert float(met_sh["clip_ratio"]) > 0 and abs(float(l_sep)) > 1e-3
        for k in met_sep:
            np.testing.assert_allclose(float(met_sh[k]), float(met_sep[k]), rtol=1e-5, atol=1e-6, err_msg=k)
        leaves_sh, leaves_sep = jax.tree.leaves(g_sh), jax.tree.leaves(g_sep)
        assert len(leaves_sh) == len(leaves_sep)
        for a, b in zip(leaves_sh, leaves_sep, strict=True):
            scale = float(jnp.abs(b).max())
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale + 1e-9)
        assert max(float(jnp.abs(x).max()) for x in leaves_sep) > 0


def test_row_responses_order_independent():
    """Token order in the row does not matter (ring attention permutes tokens; ranks come from positions)."""
    groups = _groups(2, seed=3)
    pc = PackingConfig(seq_len=SEQ, max_pairs_per_row=P)
    b = stack_rows(pack([layout(p, rs, pad_id=0) for p, rs in groups], pc), 1, pc)
    vals = np.random.default_rng(0).normal(size=b["tokens"].shape).astype(np.float32)
    perm = np.random.default_rng(1).permutation(SEQ)
    args = lambda x: [jnp.asarray(x[k]) for k in ("positions", "segment_ids", "branch_ids", "loss_mask")]
    fn = jax.jit(lambda *a: row_responses(*a, num_segments=P, group_size=G, max_len=T))
    v0, m0 = fn(jnp.asarray(vals), *args(b))
    permuted = {k: v[:, perm] for k, v in b.items() if v.shape == vals.shape}
    v1, m1 = fn(jnp.asarray(vals[:, perm]), *args(permuted))
    np.testing.assert_array_equal(v0, v1)
    np.testing.assert_array_equal(m0, m1)
    for gi, (_, rs) in enumerate(groups):  # response g's token t is the value at its place in the row
        for j, r in enumerate(rs):
            seg = (b["segment_ids"][0] == gi + 1) & (b["branch_ids"][0] == j + 1) & (b["loss_mask"][0] > 0)
            np.testing.assert_array_equal(np.asarray(v0[gi, j, :len(r)]), vals[0][seg])
            assert m0[gi, j].sum() == len(r)

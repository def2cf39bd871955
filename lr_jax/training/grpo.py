"""Pure-JAX GRPO objective (Shao et al. 2024) with DAPO's options (Yu et al. 2025), and the map from a
shared-prefix row (one prompt + its group's G responses as branches 1..G) to per-response token arrays.

Arrays (N groups of G responses, T = longest response, in tokens):

* ``logps``      `[N, G, T]` the policy's log-prob of each response token (gradients flow through these),
* ``old_logps``  `[N, G, T]` the sampling policy's log-probs of the same tokens (no gradient),
* ``ref_logps``  `[N, G, T]` the reference's (read only when ``kl_coef > 0``),
* ``mask``       `[N, G, T]` 1 where the token counts (response tokens; 0 = padding),
* ``rewards``    `[N, G]` one scalar reward per response.

Per token, with the group-relative advantage ``A`` of its response and ``ρ = exp(logp - old_logp)``::

    loss_t = -min(ρ·A, clip(ρ, 1 - ε_low, 1 + ε_high)·A) + β·k3,   k3 = exp(ref - logp) - (ref - logp) - 1

``A = r - mean_group(r)``, divided by ``std + std_eps`` when ``scale_rewards`` is ``"group"`` (the group's
unbiased std, as TRL and verl compute it) or ``"batch"`` (the std of all rewards of the batch); ``"none"``
(Dr. GRPO) leaves it unscaled. A group whose rewards are all equal has ``A = 0`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from lr_jax.errors import ConfigError
from lr_jax.options import option, validate

NORMALIZATIONS = ("token", "sequence")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass(frozen=True)
class GRPOConfig:
    """Options of the GRPO objective (the sampling options — G, temperature — belong to the sampler)."""

    epsilon_low: float = option(0.2, ge=0.0, le=1.0,
                                help="lower clip: ratios below 1 - epsilon_low stop pushing a negative "
                                     "advantage")
    epsilon_high: float = option(0.2, ge=0.0,
                                 help="upper clip: ratios above 1 + epsilon_high stop pushing a positive "
                                      "advantage (DAPO's clip-higher: 0.28)")
    scale_rewards: str = option("group", choices=SCALE_REWARDS,
                                help="divide advantages by the group's reward std (GRPO), the batch's, or "
                                     "not at all (Dr. GRPO)")
    std_eps: float = option(1e-4, ge=0.0, help="added to the std before dividing (TRL's 1e-4)")
    drop_equal_groups: bool = option(False, help="mask out groups whose rewards are all equal (DAPO's "
                                                 "dynamic sampling): they carry no signal, only dilute the "
                                                 "normalisation")
    normalization: str = option("token", choices=NORMALIZATIONS,
                                help="token: sum over every counted token / their number (DAPO); sequence: "
                                     "mean per response, then over responses (GRPO paper)")
    kl_coef: float = option(0.0, ge=0.0, help="β of the k3 KL to the reference; 0 needs no reference")

    def __post_init__(self) -> None:
        validate(self, ConfigError)


def group_advantages(rewards: jax.Array, cfg: GRPOConfig, group_valid: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Group-relative advantages.

    Args:
      rewards: `[N, G]` float, G ≥ 2.
      group_valid: `[N]` bool, False for padding groups (ignored by the batch std); default all True.
    Returns:
      advantages `[N, G]` float32 (0 for all-equal and invalid groups), group std `[N]` (unbiased),
      equal `[N]` bool (all of the group's rewards are equal).
    """
    rewards = jnp.asarray(rewards)
    rewards = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
    n, g = rewards.shape
    if g < 2:
        raise ConfigError(f"GRPO needs at least 2 responses per group, got {g}")
    valid = jnp.ones((n,), bool) if group_valid is None else jnp.asarray(group_valid, bool)
    mean = jnp.mean(rewards, axis=1, keepdims=True)
    std = jnp.std(rewards, axis=1, ddof=1)  # unbiased, as torch.std in TRL / verl
    equal = jnp.max(rewards, axis=1) == jnp.min(rewards, axis=1)
    centred = rewards - mean
    if cfg.scale_rewards == "group":
        centred = centred / (std[:, None] + cfg.std_eps)
    elif cfg.scale_rewards == "batch":
        w = jnp.broadcast_to(valid[:, None], rewards.shape).astype(rewards.dtype)
        count = jnp.maximum(jnp.sum(w), 2.0)
        bmean = jnp.sum(rewards * w) / jnp.sum(w).clip(1.0)
        bstd = jnp.sqrt(jnp.sum(w * (rewards - bmean) ** 2) / (count - 1.0))
        centred = centred / (bstd + cfg.std_eps)
    adv = jnp.where((equal | ~valid)[:, None], 0.0, centred)
    return adv, std, equal


def grpo_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    mask: jax.Array,
    rewards: jax.Array,
    cfg: GRPOConfig,
    *,
    ref_logps: jax.Array | None = None,
    entropies: jax.Array | None = None,
    group_valid: jax.Array | None = None,
    denominator: jax.Array | float | None = None,
    advantages: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss (a scalar) and its metrics, named as TRL logs them.

    Shapes as in the module docstring; `entropies` `[N, G, T]` (metric only); `group_valid` `[N]` bool
    (default: the group has a counted token). `denominator` overrides the divisor — the number of counted
    tokens (token normalisation) or of counted responses (sequence) — so gradient-accumulation micro-batches
    can be normalised by the whole batch's count; `advantages` `[N, G]` overrides those computed from
    `rewards` (for ``scale_rewards="batch"``: a micro-batch's slice of `group_advantages` of the whole batch).

    Normalisation: ``"token"`` (the default, DAPO's) divides the sum over every counted token of the batch
    by their number, so every token weighs the same whatever its response's length: with the per-response
    mean of the GRPO paper, a token of a 4k-token answer weighs 1/4000 of a 1-token answer's, so long
    rambling or repeated answers are barely penalised — the length bias DAPO and Dr. GRPO point out, and
    long-context answers vary most in length. ``"sequence"``: the mean over each response's tokens, then
    over responses.

    Metrics (scalars): ``reward/mean``, ``reward/std`` (mean over groups of the group std, TRL's
    ``reward_std``), ``frac_reward_zero_std``, ``advantages/{mean,min,max}`` (over counted responses),
    ``clip_ratio/low_mean`` (negative-advantage tokens with ρ < 1 - ε_low), ``clip_ratio/high_mean``
    (positive-advantage tokens with ρ > 1 + ε_high), ``clip_ratio/region_mean`` and ``clip_ratio`` (either),
    ``completions/mean_length``, ``kl`` (token mean of k3, when ``kl_coef > 0``), ``entropy`` (token mean,
    when `entropies` is given).
    """
    f32 = lambda x: jnp.asarray(x, jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))
    logps, old_logps, rewards = f32(logps), f32(old_logps), f32(rewards)
    mask = jnp.asarray(mask).astype(logps.dtype)
    n_tok = jnp.sum(mask, axis=-1)  # [N, G]
    if group_valid is None:
        group_valid = jnp.any(n_tok > 0, axis=1)
    group_valid = jnp.asarray(group_valid, bool)
    adv, std, equal = group_advantages(rewards, cfg, group_valid)
    if advantages is not None:
        adv = jnp.asarray(advantages, adv.dtype)
    kept = group_valid & ~equal if cfg.drop_equal_groups else group_valid
    w = mask * kept[:, None, None].astype(mask.dtype)  # [N, G, T] tokens that count
    a = jax.lax.stop_gradient(adv)[:, :, None]

    # Masked tokens (padding) may hold anything, inf or NaN included: zero them before exp, so neither the
    # loss nor its gradient can pick up a 0 * inf.
    counted = w > 0
    ratio = jnp.exp(jnp.where(counted, logps - jax.lax.stop_gradient(old_logps), 0.0))
    clipped = jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
    per_token = -jnp.minimum(ratio * a, clipped * a)
    metrics: dict[str, jax.Array] = {}
    tok_count = jnp.sum(w)
    n_counted = jnp.maximum(tok_count, 1.0)
    tok_mean = lambda x: jnp.sum(jnp.where(counted, jax.lax.stop_gradient(x), 0.0)) / n_counted
    if cfg.kl_coef > 0:
        if ref_logps is None:
            raise ConfigError("GRPO kl_coef > 0 needs the reference's log-probs (ref_logps)")
        diff = jnp.where(counted, jax.lax.stop_gradient(f32(ref_logps)) - logps, 0.0)
        k3 = jnp.exp(diff) - diff - 1.0
        per_token = per_token + cfg.kl_coef * k3
        metrics["kl"] = tok_mean(k3)

    if cfg.normalization == "token":
        denom = tok_count if denominator is None else denominator
        loss = jnp.sum(per_token * w) / jnp.maximum(denom, 1.0)
    elif cfg.normalization == "sequence":
        resp_tok = jnp.sum(w, axis=-1)  # [N, G]
        per_resp = jnp.sum(per_token * w, axis=-1) / jnp.maximum(resp_tok, 1.0)
        denom = jnp.sum(resp_tok > 0) if denominator is None else denominator
        loss = jnp.sum(per_resp) / jnp.maximum(denom, 1.0)
    else:
        raise ConfigError(f"unknown GRPO normalization {cfg.normalization!r}; "
                          f"expected one of {NORMALIZATIONS}")

    low = (ratio < 1.0 - cfg.epsilon_low) & (a < 0)
    high = (ratio > 1.0 + cfg.epsilon_high) & (a > 0)
    gv = group_valid.astype(rewards.dtype)
    n_groups = jnp.maximum(jnp.sum(gv), 1.0)
    resp_w = ((n_tok > 0) & kept[:, None]).astype(rewards.dtype)  # [N, G] responses that count
    n_resp = jnp.maximum(jnp.sum(resp_w), 1.0)
    big = jnp.finfo(adv.dtype).max
    metrics.update({
        "reward/mean": jnp.sum(jnp.mean(rewards, axis=1) * gv) / n_groups,
        "reward/std": jnp.sum(std * gv) / n_groups,
        "frac_reward_zero_std": jnp.sum(equal * gv) / n_groups,
        "advantages/mean": jnp.sum(adv * resp_w) / n_resp,
        "advantages/min": jnp.min(jnp.where(resp_w > 0, adv, big)) * (jnp.sum(resp_w) > 0),
        "advantages/max": jnp.max(jnp.where(resp_w > 0, adv, -big)) * (jnp.sum(resp_w) > 0),
        "clip_ratio/low_mean": tok_mean(low.astype(w.dtype)),
        "clip_ratio/high_mean": tok_mean(high.astype(w.dtype)),
        "clip_ratio/region_mean": tok_mean((low | high).astype(w.dtype)),
        "completions/mean_length": jnp.sum(n_tok * gv[:, None]) / jnp.maximum(n_groups * n_tok.shape[1], 1.0),
    })
    metrics["clip_ratio"] = metrics["clip_ratio/region_mean"]
    if entropies is not None:
        metrics["entropy"] = tok_mean(f32(entropies))
    return loss, metrics


def row_responses(
    values: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    branch_ids: jax.Array,
    loss_mask: jax.Array,
    *,
    num_segments: int,
    group_size: int,
    max_len: int,
    group_ids: jax.Array | None = None,
    num_groups: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-token values of shared-prefix rows → per-response token arrays.

    A row holds up to P segments (`lr_jax.data.packing.layout`), each a prompt and its group's responses as
    branches 1..G; response token ``t`` of a branch (the one predicting the response's ``t``-th token) sits
    at position ``L - 1 + t``, L the prompt length, so ``t = position - min(position of the segment's branch
    tokens)`` — valid in any token order (ring attention's permuted layout included).

    Args:
      values: `[B, S]` float (e.g. `losses.token_logprobs`); gradients flow back through the gather.
      positions, segment_ids, branch_ids, loss_mask: `[B, S]` int, the row's layout.
      num_segments: P. group_size: G. max_len: T ≥ the longest response (longer responses lose their tail:
        compare ``mask.sum()`` with ``loss_mask.sum()`` where that can happen).
      group_ids: `[B, P]` int, the group segment ``p + 1`` of row ``b`` holds (e.g. the batch's
        `example_ids`; < 0 = empty slot); several rows may feed one group, each with its own branches (G
        separate rows of one response each). Default: ``b·P + p``.
      num_groups: N, needed with `group_ids` (default ``B·P``).
    Returns:
      values `[N, G, T]` (0 where masked) and mask `[N, G, T]` float32.
    """
    b = values.shape[0]
    p, g, t = num_segments, group_size, max_len
    seg = segment_ids.astype(jnp.int32)
    br = branch_ids.astype(jnp.int32)
    pos = positions.astype(jnp.int32)
    resp = (br > 0) & (seg > 0)
    seg_onehot = jax.nn.one_hot(seg - 1, p, dtype=bool)  # [B, S, P]; segment 0 → all False
    big = jnp.iinfo(jnp.int32).max
    start = jnp.min(jnp.where(seg_onehot & resp[..., None], pos[..., None], big), axis=1)  # [B, P]
    slot = jnp.clip(seg - 1, 0, p - 1)
    rank = pos - jnp.take_along_axis(start, slot, axis=1)
    if group_ids is None:
        n = b * p
        group = jnp.arange(b, dtype=jnp.int32)[:, None] * p + slot
    else:
        if num_groups is None:
            raise ValueError("row_responses: group_ids needs num_groups")
        n = num_groups
        group = jnp.take_along_axis(jnp.asarray(group_ids, jnp.int32), slot, axis=1)
    keep = (resp & (loss_mask > 0) & (br <= g) & (seg <= p) & (rank >= 0) & (rank < t)
            & (group >= 0) & (group < n))
    flat = jnp.where(keep, (group * g + br - 1) * t + rank, n * g * t).reshape(-1)  # out of range → dropped
    out = jnp.zeros((n * g * t,), values.dtype).at[flat].set(values.reshape(-1), mode="drop")
    m = jnp.zeros((n * g * t,), jnp.float32).at[flat].set(1.0, mode="drop")
    return out.reshape(n, g, t), m.reshape(n, g, t)

"""Pure-JAX losses: chunked target log-probs, per-sequence reduction, the DPO family and the SFT term.

Everything here is a pure function of arrays; nothing knows about meshes (under `jit` XLA inserts the
cross-shard reductions for sums over a sharded sequence axis).

Formulas (``h = (pi_c - ref_c) - (pi_r - ref_r)``, the difference of policy/reference log-ratios):

* ``sigmoid`` (DPO, Rafailov et al. 2023) with label smoothing ε (conservative DPO, Mitchell 2023):
  ``-(1-ε)·log σ(β h) - ε·log σ(-β h)``; ε = 0 is plain DPO.
* ``robust`` (Chowdhury et al. 2024, "Provably robust DPO"), unbiased under label-flip rate ε < 0.5:
  ``(-(1-ε)·log σ(β h) + ε·log σ(-β h)) / (1 - 2ε)``.
* ``ipo`` (Azar et al. 2023): ``(h - 1/(2β))²``.
* ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 - β h)``.

Rewards are the implicit DPO rewards ``β (pi - ref)`` for each response.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
SFT_NORMALIZATIONS = ("token", "sequence")

CHOSEN_BRANCH = 1  # branch id of the chosen response (SFT: the answer)
REJECTED_BRANCH = 2


def token_logprobs(
    hidden: jax.Array, unembed: jax.Array, targets: jax.Array, *, chunk_size: int = 1024
) -> jax.Array:
    """Log-probability of each target token, without ever materialising `[seq, vocab]` logits.

    The sequence is processed in chunks of `chunk_size` positions by `lax.map`; each chunk's body is
    wrapped in `jax.checkpoint`, so the backward pass recomputes that chunk's logits instead of keeping
    them: peak logits memory is `[batch, chunk_size, vocab]` in both passes.

    Args:
      hidden: `[batch, seq, hidden]` final hidden states (after the final norm), any float dtype.
      unembed: `[hidden, vocab]` output projection.
      targets: `[batch, seq]` int target token for each position (any value where it is masked out later,
        but it must be a valid index in `[0, vocab)`).
      chunk_size: positions per chunk; need not divide `seq` (the tail is padded, then dropped).
    Returns:
      `[batch, seq]` float32 `log softmax(hidden @ unembed)[target]`.
    """
    batch, seq, dim = hidden.shape
    chunk = max(1, min(int(chunk_size), seq))
    n_chunks = -(-seq // chunk)
    pad = n_chunks * chunk - seq
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [n_chunks, batch, chunk, ...]: lax.map iterates over the leading axis.
    h_chunks = hidden.reshape(batch, n_chunks, chunk, dim).swapaxes(0, 1)
    t_chunks = targets.reshape(batch, n_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        h, t = args  # [batch, chunk, hidden], [batch, chunk]
        logits = jnp.einsum("bcd,dv->bcv", h, unembed, preferred_element_type=jnp.float32)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return picked - logz

    out = jax.lax.map(one_chunk, (h_chunks, t_chunks))  # [n_chunks, batch, chunk]
    return out.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :seq]


def _branch_sums(
    values: jax.Array, weights: jax.Array, segment_ids: jax.Array, branch_ids: jax.Array, num_segments: int
) -> tuple[jax.Array, jax.Array]:
    """Sum `values * weights` per (segment 1..P, branch) → chosen `[batch, P]`, rejected `[batch, P]`."""
    seg_onehot = jax.nn.one_hot(segment_ids - 1, num_segments, dtype=jnp.float32)  # seg 0 → all-zero row
    w = weights.astype(jnp.float32)
    vals = values.astype(jnp.float32) * w
    chosen = jnp.einsum("bs,bsp->bp", jnp.where(branch_ids == CHOSEN_BRANCH, vals, 0.0), seg_onehot)
    rejected = jnp.einsum("bs,bsp->bp", jnp.where(branch_ids == REJECTED_BRANCH, vals, 0.0), seg_onehot)
    return chosen, rejected


def segment_token_counts(
    loss_mask: jax.Array, segment_ids: jax.Array, branch_ids: jax.Array, num_segments: int
) -> tuple[jax.Array, jax.Array]:
    """Number of counted target tokens per pair: chosen `[batch, P]`, rejected `[batch, P]` (float32)."""
    ones = jnp.ones_like(loss_mask, jnp.float32)
    return _branch_sums(ones, loss_mask, segment_ids, branch_ids, num_segments)


def segment_logps(
    token_logps: jax.Array,
    loss_mask: jax.Array,
    segment_ids: jax.Array,
    branch_ids: jax.Array,
    num_segments: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Reduce token log-probs to per-response sums.

    Args:
      token_logps: `[batch, seq]` float log-prob of each position's target.
      loss_mask: `[batch, seq]` 1 where the target is a response token that counts.
      segment_ids: `[batch, seq]` pair index 1..P within the row; 0 = padding.
      branch_ids: `[batch, seq]` 0 prompt, 1 chosen, 2 rejected.
      num_segments: P, the most pairs packed in one row.
    Returns:
      chosen `[batch, P]`, rejected `[batch, P]` (float32 sums), valid `[batch, P]` bool: the pair has at
      least one counted chosen and one counted rejected token.
    """
    chosen, rejected = _branch_sums(token_logps, loss_mask, segment_ids, branch_ids, num_segments)
    n_c, n_r = segment_token_counts(loss_mask, segment_ids, branch_ids, num_segments)
    return chosen, rejected, (n_c > 0) & (n_r > 0)


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-pair DPO-family loss (elementwise over any shape, e.g. `[batch]` or `[batch, P]`).

    Returns `(losses, chosen_rewards, rejected_rewards)`, each the input shape, float32. Rewards are
    `β·(policy - reference)` and carry no gradient. `label_smoothing` (ε) is read by `sigmoid` and
    `robust` only; a non-zero ε with `ipo`/`hinge` is an error rather than silently ignored.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type in ("ipo", "hinge"):
        raise ValueError(f"label_smoothing is not defined for loss_type {loss_type!r}")
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    pc, pr = f32(policy_chosen_logps), f32(policy_rejected_logps)
    rc, rr = f32(ref_chosen_logps), f32(ref_rejected_logps)
    h = (pc - rc) - (pr - rr)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1.0 - eps) * jax.nn.log_sigmoid(beta * h) + eps * jax.nn.log_sigmoid(-beta * h)) / (
            1.0 - 2.0 * eps
        )
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:  # hinge
        losses = jax.nn.relu(1.0 - beta * h)
    chosen_rewards = jax.lax.stop_gradient(beta * (pc - rc))
    rejected_rewards = jax.lax.stop_gradient(beta * (pr - rr))
    return losses, chosen_rewards, rejected_rewards


def sft_loss(
    token_logps: jax.Array,
    loss_mask: jax.Array,
    branch_ids: jax.Array,
    segment_ids: jax.Array | None = None,
    *,
    normalization: str = "token",
    num_segments: int = 1,
    denominator: jax.Array | float | None = None,
) -> jax.Array:
    """Negative log-likelihood of the chosen (branch 1) tokens, a scalar.

    Normalisation (the LongReward paper does not publish it):

    * ``"token"`` (default): sum of NLL over every counted chosen token in the batch divided by the number
      of those tokens — a per-token mean, so long answers weigh more than short ones.
    * ``"sequence"``: each chosen response's mean token NLL, averaged over responses.

    `denominator` overrides the divisor (token count, or number of responses) so gradient-accumulation
    micro-batches can be normalised by the whole batch's count; default: this batch's own count.
    """
    if normalization not in SFT_NORMALIZATIONS:
        raise ValueError(f"unknown SFT normalization {normalization!r}; expected one of {SFT_NORMALIZATIONS}")
    chosen_w = jnp.where(branch_ids == CHOSEN_BRANCH, loss_mask.astype(jnp.float32), 0.0)
    nll = -token_logps.astype(jnp.float32) * chosen_w
    if normalization == "token":
        denom = jnp.sum(chosen_w) if denominator is None else denominator
        return jnp.sum(nll) / jnp.maximum(denom, 1.0)
    if segment_ids is None:
        raise ValueError("sequence-normalised SFT loss needs segment_ids")
    sums, _ = _branch_sums(-token_logps, loss_mask, segment_ids, branch_ids, num_segments)
    counts, _ = segment_token_counts(loss_mask, segment_ids, branch_ids, num_segments)
    per_seq = sums / jnp.maximum(counts, 1.0)
    has = counts > 0
    denom = jnp.sum(has) if denominator is None else denominator
    return jnp.sum(jnp.where(has, per_seq, 0.0)) / jnp.maximum(denom, 1.0)


class RewardMetrics(NamedTuple):
    """Means over valid pairs (scalars, float32)."""

    chosen_reward: jax.Array
    rejected_reward: jax.Array
    accuracy: jax.Array  # fraction of pairs with chosen reward > rejected reward
    margin: jax.Array  # mean of chosen - rejected reward


def reward_metrics(chosen_rewards: jax.Array, rejected_rewards: jax.Array, valid: jax.Array) -> RewardMetrics:
    """Reward metrics from per-pair rewards (any shape) and a same-shape validity mask."""
    w = valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = lambda x: jnp.sum(x * w) / n
    return RewardMetrics(
        chosen_reward=mean(chosen_rewards),
        rejected_reward=mean(rejected_rewards),
        accuracy=mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        margin=mean(chosen_rewards - rejected_rewards),
    )

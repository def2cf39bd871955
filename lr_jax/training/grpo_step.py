"""One GRPO optimizer step over shared-prefix group rows: every response's per-token log-probs from one
forward, `grpo.grpo_loss` on them, the update.

A row holds up to P segments (`lr_jax.data.packing.layout`): a prompt once and its group's G responses as
branches 1..G, so a group of G answers to a long prompt costs one prompt's forward, not G. The batch is a
dict of arrays (`GRPOBatch` names them):

* the `lr_jax.data.batch.TOKEN_FIELDS` `[B, S]` int32 and ``group_ids`` `[B, P]` int32 (which group each
  segment holds, `stack_rows`' ``example_ids``; < 0 = empty slot),
* ``rewards`` `[N, G]` float32 (N groups), ``old_logps`` `[N, G, T]` float32: the sampling policy's log-probs
  of the response tokens (`lr_jax.sample --logprobs`, temperature 1): no second forward for them; while the
  policy has not moved since sampling, the importance ratio is exactly what the forward gives against them,
  1 up to float rounding,
* ``ref_logps`` `[N, G, T]` (only with ``kl_coef > 0`` and neither LoRA nor reference params: precomputed).

The KL's reference is found as DPO's is (`lr_jax.training.step`): with LoRA, the policy's own base weights
with the adapters switched off (`lora.base_model`, no second parameter tree); else `ref_params` when given;
else the batch's ``ref_logps``. With LoRA only the adapters are differentiated and updated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lr_jax.data.batch import TOKEN_FIELDS
from lr_jax.data.packing import PackingConfig, layout, pack, stack_rows
from lr_jax.model import AbstractModel, ModelConfig, lora
from lr_jax.training import losses
from lr_jax.training.grpo import GRPOConfig, grpo_loss, row_responses

GRPOBatch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class GRPOSpec:
    """What the step reads: the abstract model, the objective's options and the row layout's static sizes
    (G responses per group, T = the longest response's tokens, P segments per row). Frozen: jit closes
    over it."""

    model: AbstractModel
    grpo: GRPOConfig
    group_size: int
    max_len: int
    segments_per_row: int = 1
    logprob_chunk_size: int = 1024
    entropy: bool = True  # the ``entropy`` metric: one more pass over the unembedding, no gradient
    dropout_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, ModelConfig):
            object.__setattr__(self, "model", AbstractModel.of(self.model))

    @property
    def reference_from_base(self) -> bool:
        """KL with a LoRA model: the reference is the policy's base weights (adapters off)."""
        return self.grpo.kl_coef > 0 and self.model.cfg.lora is not None


def make_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]],
               rewards: Any, old_logps: Sequence[Sequence[Sequence[float]]], *, seq_len: int, max_len: int,
               segments_per_row: int = 1, rows: int | None = None, pad_id: int = 0,
               num_groups: int | None = None) -> dict[str, np.ndarray]:
    """Host batch of N groups: group i = `prompts[i]` (ids) with its G `responses[i]` (ids, the ending EOS
    included) as branches 1..G, next-fit packed into `[rows, seq_len]` (default: as many rows as needed);
    `rewards` `[N, G]`; `old_logps[i][j]` one float per token of response j (`lr_jax.sample --logprobs`),
    laid out `[N, G, max_len]`. `num_groups` ≥ N pads the group arrays with empty groups (no tokens: they
    count nowhere) so that every batch has one shape. A group that does not fit in a row is an error
    (`DataError`)."""
    g = len(responses[0])
    n = len(prompts) if num_groups is None else num_groups
    segs = [layout(np.asarray(p, np.int32), [np.asarray(r, np.int32) for r in rs], pad_id=pad_id,
                   example_id=i) for i, (p, rs) in enumerate(zip(prompts, responses, strict=True))]
    pc = PackingConfig(seq_len=seq_len, max_pairs_per_row=segments_per_row, pad_id=pad_id)
    packed = pack(segs, pc)
    out = stack_rows(packed, rows if rows is not None else len(packed), pc)
    old = np.zeros((n, g, max_len), np.float32)
    for i, group in enumerate(old_logps):
        for j, lp in enumerate(group):
            old[i, j, :len(lp)] = np.asarray(lp, np.float32)[:max_len]
    batch = {k: out[k] for k in TOKEN_FIELDS}
    r = np.zeros((n, g), np.float32)
    r[:len(prompts)] = np.asarray(rewards, np.float32)
    batch.update(group_ids=out["example_ids"], rewards=r, old_logps=old)
    return batch


def token_entropy(hidden: jax.Array, unembed: jax.Array, *, chunk_size: int = 1024) -> jax.Array:
    """Entropy of the next-token distribution at each position, `[B, S]` float32, chunked over S as
    `losses.token_logprobs` is (peak logits `[B, chunk, vocab]`). hidden `[B, S, D]`, unembed `[D, V]`."""
    b, s, d = hidden.shape
    chunk = max(1, min(int(chunk_size), s))
    n = -(-s // chunk)
    h = jnp.pad(hidden, ((0, 0), (0, n * chunk - s), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)

    def one(hc: jax.Array) -> jax.Array:
        lp = jax.nn.log_softmax(jnp.einsum("bcd,dv->bcv", hc, unembed, preferred_element_type=jnp.float32))
        return -jnp.sum(jnp.exp(lp) * lp, axis=-1)

    return jax.lax.map(one, h).swapaxes(0, 1).reshape(b, n * chunk)[:, :s]


def response_logps(spec: GRPOSpec, params: Any, batch: GRPOBatch, dropout_key: jax.Array | None = None,
                   *, entropy: bool = False) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(logps `[N, G, T]`, mask `[N, G, T]`, entropies `[N, G, T]` or None) of every response of the
    batch, from one forward over its rows (N = ``rewards.shape[0]``)."""
    model = spec.model.merge(params)
    h = model(batch["tokens"], batch["positions"], batch["segment_ids"], batch["branch_ids"],
              dropout_key=dropout_key)
    w = model.unembed().astype(h.dtype)
    tok = losses.token_logprobs(h, w, batch["targets"], chunk_size=spec.logprob_chunk_size)
    layout = dict(num_segments=spec.segments_per_row, group_size=spec.group_size, max_len=spec.max_len,
                  group_ids=batch["group_ids"], num_groups=batch["rewards"].shape[0])
    rows = (batch["positions"], batch["segment_ids"], batch["branch_ids"], batch["loss_mask"])
    logps, mask = row_responses(tok, *rows, **layout)
    ent = None
    if entropy:
        e = token_entropy(jax.lax.stop_gradient(h), jax.lax.stop_gradient(w),
                          chunk_size=spec.logprob_chunk_size)
        ent = row_responses(e, *rows, **layout)[0]
    return logps, mask, ent


def reference_logps(spec: GRPOSpec, params: Any, batch: GRPOBatch, ref_params: Any | None
                    ) -> jax.Array | None:
    """`[N, G, T]` reference log-probs for the KL term (None when ``kl_coef`` is 0), found as DPO's
    reference is: LoRA base weights, else `ref_params`, else the batch's ``ref_logps``."""
    if spec.grpo.kl_coef <= 0:
        return None
    if spec.reference_from_base:
        base = jax.lax.stop_gradient(lora.partition(spec.model, params)[1])
        ref = response_logps(dataclasses.replace(spec, model=lora.base_model(spec.model)), base, batch)[0]
    elif ref_params is not None:
        ref = response_logps(spec, jax.lax.stop_gradient(ref_params), batch)[0]
    else:
        ref = batch["ref_logps"]
    return jax.lax.stop_gradient(ref)


def loss_fn(spec: GRPOSpec, params: Any, batch: GRPOBatch, ref_params: Any | None = None,
            dropout_key: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss of the batch (a scalar) and its metrics (TRL's names, `grpo.grpo_loss`)."""
    logps, mask, ent = response_logps(spec, params, batch, dropout_key, entropy=spec.entropy)
    ref = reference_logps(spec, params, batch, ref_params)
    loss, metrics = grpo_loss(logps, batch["old_logps"], mask, batch["rewards"], spec.grpo, ref_logps=ref,
                              entropies=ent)
    metrics["loss"] = loss
    return loss, metrics


def train_step(spec: GRPOSpec, optimizer: optax.GradientTransformation, state: dict[str, Any],
               batch: GRPOBatch, ref_params: Any | None = None
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One optimizer step. state: {"params", "opt_state", "step"}; the optimizer state is of
    `step.trainable(spec.model, params)` (the adapters alone with LoRA). A non-finite loss or gradient keeps
    the old weights and moments (``nonfinite`` = 1), as the DPO step does."""
    full = state["params"]
    params, frozen = full, None
    if spec.model.cfg.lora is not None:
        params, frozen = lora.partition(spec.model, full)
    join = (lambda t: t) if frozen is None else (lambda t: lora.combine(t, frozen))
    key = None
    lora_cfg = spec.model.cfg.lora
    if lora_cfg is not None and lora_cfg.dropout > 0:
        key = jax.random.fold_in(jax.random.PRNGKey(spec.dropout_seed), state["step"])
    grads, metrics = jax.grad(lambda p: loss_fn(spec, join(p), batch, ref_params, key), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics["nonfinite"] = (~finite).astype(jnp.float32)
    return ({"params": join(keep(new_params, params)), "opt_state": keep(opt_state, state["opt_state"]),
             "step": state["step"] + 1}, metrics)

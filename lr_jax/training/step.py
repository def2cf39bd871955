"""The jitted pieces of the loop: per-sequence log-probs, the loss, one optimizer step, eval, reference pass.

Pure functions of a `LossSpec` (the abstract model and the loss options), params and a typed
`lr_jax.data.batch.Batch` (`[batch, seq]` token fields plus, for DPO with precomputed references,
``ref_chosen_logps`` / ``ref_rejected_logps`` `[batch, P]` float32). The model is the NNX `Decoder`,
``spec.model.merge(params)`` of the params' pure-dict tree.

With LoRA (`ModelConfig.lora`) the step differentiates, clips and updates only the adapters (the
`LoRAParam`s, `lr_jax.model.lora.partition`); the optimizer state holds only theirs; the base weights pass
through unchanged. Its in-step DPO reference (``dpo.reference = "model"``) is the same base weights with the
adapters switched off (`lora.base_model`): no second parameter tree is held.

Gradient accumulation splits the batch into `accum` micro-batches and scans over them; every term is
normalised by counts taken from the *whole* batch (pairs, chosen tokens), so the summed micro-batch gradients
equal the full-batch gradient exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lr_jax.data.batch import Batch
from lr_jax.model import AbstractModel, ModelConfig, lora
from lr_jax.training import losses
from lr_jax.training.config import Config, DPOConfig, OptimConfig


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What the step functions read from a run: the abstract model, the loss options (the run's `DPOConfig`
    itself, read as ``spec.dpo.beta`` ...), `pairs_per_row` (P) and the LoRA-dropout seed. Frozen, so jit can
    close over it.

    `model` is the program's `AbstractModel`; a `ModelConfig` given here is made abstract once, on the spot.
    """

    model: AbstractModel
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    pairs_per_row: int = 1  # DataConfig.pairs_per_row
    dropout_seed: int = 0  # TrainConfig.seed: LoRA dropout's key is fold_in(key(seed), step, micro-batch)

    def __post_init__(self) -> None:
        if isinstance(self.model, ModelConfig):
            object.__setattr__(self, "model", AbstractModel.of(self.model))

    @classmethod
    def of(cls, cfg: Config, model: AbstractModel | None = None) -> LossSpec:
        """The spec of a validated run config; `model`: its abstract model when the caller holds one."""
        return cls(model or AbstractModel.of(cfg.model), cfg.dpo, cfg.data.pairs_per_row, cfg.train.seed)

    @property
    def reference_from_base(self) -> bool:
        """DPO with a LoRA model and an in-step reference: the reference is the policy's base weights."""
        d = self.dpo
        return d.objective == "dpo" and d.reference == "model" and self.model.cfg.lora is not None


def make_optimizer(o: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup then cosine / linear decay (or constant), global-norm clipping first."""
    warm = max(0, min(o.warmup_steps, total_steps))
    decay_steps = max(1, total_steps - warm)
    end = o.lr * o.end_lr_ratio
    if o.schedule == "cosine":
        decay = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.end_lr_ratio)
    elif o.schedule == "linear":
        decay = optax.linear_schedule(o.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(o.lr)
    if warm:
        # Step i < warm uses lr·(i+1)/warm: the first step already moves the weights, step warm-1 hits lr.
        warmup = optax.linear_schedule(o.lr / warm, o.lr, max(1, warm - 1))
        schedule = optax.join_schedules([warmup, decay], [warm])
    else:
        schedule = decay
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    return optax.chain(*parts), schedule


def sequence_logps(spec: LossSpec, params: Any, batch: Batch, dropout_key: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Policy log-probs: token `[B, S]`, chosen `[B, P]`, rejected `[B, P]`, valid `[B, P]`.
    `dropout_key`: LoRA dropout (training steps only)."""
    model = spec.model.merge(params)
    h = model(batch.tokens, batch.positions, batch.segment_ids, batch.branch_ids, dropout_key=dropout_key)
    tok = losses.token_logprobs(h, model.unembed().astype(h.dtype), batch.targets,
                                chunk_size=spec.dpo.logprob_chunk_size)
    mask = batch.loss_mask * (batch.segment_ids > 0)
    chosen, rejected, valid = losses.segment_logps(tok, mask, batch.segment_ids, batch.branch_ids,
                                                   spec.pairs_per_row)
    return tok, chosen, rejected, valid


def denominators(spec: LossSpec, batch: Batch) -> dict[str, jax.Array]:
    """Whole-batch counts (data only, no parameters) used to normalise every micro-batch."""
    mask = batch.loss_mask * (batch.segment_ids > 0)
    n_c, n_r = losses.segment_token_counts(mask, batch.segment_ids, batch.branch_ids, spec.pairs_per_row)
    chosen_tok = jnp.sum(n_c)
    sft_denom = chosen_tok if spec.dpo.sft_normalization == "token" else jnp.sum(n_c > 0)
    pairs = jnp.sum((n_c > 0) & (n_r > 0))
    return {"pairs": jnp.maximum(pairs, 1).astype(jnp.float32),
            "sft": jnp.maximum(sft_denom, 1).astype(jnp.float32)}


def _micro_loss(spec: LossSpec, params: Any, mb: Batch, denom: dict[str, jax.Array],
                ref_params: Any | None, dropout_key: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss of one micro-batch (already divided by whole-batch counts) and summed metric numerators.
    `dropout_key` drops out the policy's LoRA inputs only: the reference pass never sees dropout."""
    tok, chosen, rejected, valid = sequence_logps(spec, params, mb, dropout_key)
    ref_c = ref_r = None
    if spec.dpo.objective == "dpo":
        if spec.reference_from_base:  # the same weights, adapters off
            base = jax.lax.stop_gradient(lora.partition(spec.model, params)[1])
            base_spec = dataclasses.replace(spec, model=lora.base_model(spec.model))
            _, ref_c, ref_r, _ = sequence_logps(base_spec, base, mb)
            ref_c, ref_r = jax.lax.stop_gradient(ref_c), jax.lax.stop_gradient(ref_r)
        elif ref_params is not None:
            _, ref_c, ref_r, _ = sequence_logps(spec, jax.lax.stop_gradient(ref_params), mb)
            ref_c, ref_r = jax.lax.stop_gradient(ref_c), jax.lax.stop_gradient(ref_r)
        else:
            ref_c, ref_r = mb.ref_chosen_logps, mb.ref_rejected_logps
    return objective(spec, mb, tok, chosen, rejected, valid, ref_c, ref_r, denom)


def objective(spec: LossSpec, mb: Batch, tok: jax.Array, chosen: jax.Array, rejected: jax.Array,
              valid: jax.Array, ref_c: jax.Array | None, ref_r: jax.Array | None,
              denom: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss from log-probs: DPO family + weighted SFT term, or SFT alone (`spec.dpo`'s loss options).

    tok `[B, S]`; chosen/rejected/valid and ref_c/ref_r `[B, P]`; `denom` from `denominators`.
    """
    p = spec.dpo
    mask = mb.loss_mask * (mb.segment_ids > 0)
    sft = losses.sft_loss(tok, mask, mb.branch_ids, mb.segment_ids, normalization=p.sft_normalization,
                          num_segments=spec.pairs_per_row, denominator=denom["sft"])
    chosen_w = (mask * (mb.branch_ids == losses.CHOSEN_BRANCH)).astype(jnp.float32)
    sums = {"sft_nll_sum": -jnp.sum(tok * chosen_w), "chosen_tokens": jnp.sum(chosen_w),
            "tokens": jnp.sum(mb.segment_ids > 0).astype(jnp.float32)}
    if p.objective == "sft":
        return sft, {**sums, "loss": sft}
    if mb.pair_valid is not None:
        valid = valid & (mb.pair_valid > 0)
    per_pair, c_rew, r_rew = losses.dpo_loss(chosen, rejected, ref_c, ref_r, beta=p.beta,
                                             loss_type=p.loss_type, label_smoothing=p.label_smoothing)
    w = valid.astype(jnp.float32)
    dpo = jnp.sum(per_pair * w) / denom["pairs"]
    loss = dpo + p.sft_weight * sft
    sums.update({
        "loss": loss, "dpo_loss": dpo, "pairs": jnp.sum(w),
        "correct": jnp.sum((c_rew > r_rew) * w), "margin_sum": jnp.sum((c_rew - r_rew) * w),
        "chosen_reward_sum": jnp.sum(c_rew * w), "rejected_reward_sum": jnp.sum(r_rew * w),
        "chosen_logps_sum": jnp.sum(chosen * w), "rejected_logps_sum": jnp.sum(rejected * w),
    })
    return loss, sums


def finish_metrics(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Turn summed numerators into means (reward accuracy, margin, ...)."""
    out = {"loss": sums["loss"], "tokens": sums["tokens"],
           "sft_nll": sums["sft_nll_sum"] / jnp.maximum(sums["chosen_tokens"], 1.0)}
    if "pairs" in sums:
        n = jnp.maximum(sums["pairs"], 1.0)
        out.update({
            "dpo_loss": sums["dpo_loss"], "pairs": sums["pairs"],
            "reward_accuracy": sums["correct"] / n, "reward_margin": sums["margin_sum"] / n,
            "chosen_reward": sums["chosen_reward_sum"] / n,
            "rejected_reward": sums["rejected_reward_sum"] / n,
            "chosen_logps": sums["chosen_logps_sum"] / n, "rejected_logps": sums["rejected_logps_sum"] / n,
        })
    return out


def _split(batch: Batch, accum: int) -> Batch:
    """`[B, ...]` -> `[accum, B/accum, ...]` (row i of micro-batch a is row a*B/accum + i)."""
    return jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)


def batch_loss(spec: LossSpec, params: Any, batch: Batch, ref_params: Any | None = None,
               accum: int = 1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Whole-batch loss (no gradient) and metrics, micro-batched like the train step."""
    denom = denominators(spec, batch)
    mbs = _split(batch, accum)

    def body(carry: dict[str, jax.Array], mb: Batch) -> tuple[dict[str, jax.Array], None]:
        _, sums = _micro_loss(spec, params, mb, denom, ref_params)
        return jax.tree.map(jnp.add, carry, sums), None

    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: _micro_loss(spec, params, jax.tree.map(
        lambda x: x[0], mbs), denom, ref_params)[1]))
    sums, _ = jax.lax.scan(body, zero, mbs)
    return sums["loss"], finish_metrics(sums)


def train_step(spec: LossSpec, optimizer: optax.GradientTransformation, state: dict[str, Any],
               batch: Batch, ref_params: Any | None = None,
               accum: int = 1) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One optimizer step over `accum` micro-batches. state: {"params", "opt_state", "step"}; the optimizer
    state is of `trainable(spec.model, params)` (the adapters alone with LoRA)."""
    full_params = state["params"]
    params, frozen = full_params, None
    if spec.model.cfg.lora is not None:
        params, frozen = lora.partition(spec.model, full_params)
    join = (lambda t: t) if frozen is None else (lambda t: lora.combine(t, frozen))
    denom = denominators(spec, batch)
    mbs = _split(batch, accum)
    grad_fn = jax.grad(lambda p, mb, key: _micro_loss(spec, join(p), mb, denom, ref_params, key),
                       has_aux=True)
    keys = None
    lora_cfg = spec.model.cfg.lora
    if lora_cfg is not None and lora_cfg.dropout > 0:  # a fresh mask per step and micro-batch
        step_key = jax.random.fold_in(jax.random.PRNGKey(spec.dropout_seed), state["step"])
        keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(accum))

    def body(carry: tuple[Any, dict[str, jax.Array]], xs: tuple[Batch, jax.Array | None]
             ) -> tuple[tuple[Any, dict], None]:
        g_acc, s_acc = carry
        g, sums = grad_fn(params, *xs)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, sums)), None

    first = jax.tree.map(lambda x: x[0], (mbs, keys))
    zero_sums = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, *first)[1]))
    zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (grads, sums), _ = jax.lax.scan(body, (zero_grads, zero_sums), (mbs, keys))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = finish_metrics(sums)
    metrics["grad_norm"] = optax.global_norm(grads)
    # A non-finite loss or gradient never reaches the weights or the Adam moments: the step keeps the old
    # ones (the host then stops or skips, `train.nan_policy`), so no checkpoint can hold a NaN state.
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics["nonfinite"] = (~finite).astype(jnp.float32)
    new_state = {"params": join(keep(new_params, params)),
                 "opt_state": keep(opt_state, state["opt_state"]), "step": state["step"] + 1}
    return new_state, metrics


def trainable(model: AbstractModel, params: Any) -> Any:
    """What the optimizer updates: all of `params`, or with LoRA only the adapters."""
    return params if model.cfg.lora is None else lora.partition(model, params)[0]


def reference_logps(spec: LossSpec, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Reference per-pair log-probs `[B, P]` (chosen, rejected) for the precomputed-reference pass."""
    _, chosen, rejected, _ = sequence_logps(spec, params, batch)
    return chosen, rejected


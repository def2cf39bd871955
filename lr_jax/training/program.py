"""The jitted training programs and their shardings, built from a `Config` and a mesh.

One code path for the two users: `lr_jax.training.trainer.Trainer` runs these functions on real arrays, and
`lr_jax.plan` lowers the very same jitted step from abstract shapes (`StepProgram.abstract_step_args`) and
compiles it for a TPU topology on a machine without a TPU. Everything that decides what the step is — the
objective, the reference mode, gradient accumulation, the param / optimizer-state / batch shardings, the
model's attention backend and remat policy (inside `LossSpec.model`) — is decided here, once.

The model is the NNX `Decoder`, held once as an `AbstractModel` (graphdef + abstract param state, made by
`build` or handed to it): the step merges its graphdef with the params, its logical-axis metadata gives the
shardings, and with LoRA its `LoRAParam`s decide what the optimizer sees (the adapters). Every helper below
takes that one object; none rebuilds the model from the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lr_jax.data.batch import PAIR_FIELDS, REF_FIELDS, TOKEN_FIELDS, Batch
from lr_jax.model import AbstractModel, lora
from lr_jax.parallel.rules import batch_sharding
from lr_jax.training.config import Config
from lr_jax.training.step import LossSpec, batch_loss, reference_logps, train_step, trainable


@dataclasses.dataclass(frozen=True)
class StepProgram:
    """The jitted step / eval / reference-pass functions of one run and the shardings they were built with.

    ``state_sh``: {"params", "opt_state", "step"} shardings (params by logical axes, AdamW moments like their
    params, counters replicated); ``batch_sh``: the step's `Batch` shardings (token fields `[B, S]` over
    (data, fsdp) × sequence, pair fields `[B, P]` over the batch axes); ``ref_batch_sh``: the reference
    pass's (token fields only).
    """

    cfg: Config
    mesh: Mesh
    optimizer: optax.GradientTransformation
    spec: LossSpec
    accum: int
    use_ref_model: bool  # dpo.reference == "model" (no LoRA): the frozen params are a third step argument
    use_ref_cache: bool  # dpo.reference == "precomputed": the batch carries ref_*_logps
    param_shapes: Any  # jax.ShapeDtypeStruct tree of the params
    state_shapes: dict[str, Any]  # ShapeDtypeStruct tree of the whole state
    param_sh: Any
    state_sh: dict[str, Any]
    row_sh: NamedSharding
    pair_sh: NamedSharding
    batch_sh: Batch
    ref_batch_sh: Batch
    step: Any  # jit: (state, batch[, ref_params]) -> (state, metrics); donates the state
    eval: Any  # jit: (params, batch[, ref_params]) -> (loss, metrics)
    ref: Any  # jit: (params, token batch) -> (chosen, rejected) `[B, P]`, replicated (LoRA: adapters off)

    @property
    def model(self) -> AbstractModel:
        """The run's abstract model (``model.merge(params)`` is the `Decoder`)."""
        return self.spec.model

    @property
    def in_step_reference(self) -> bool:
        """The step runs a reference forward: a frozen copy (`use_ref_model`) or, with LoRA, the base."""
        return self.use_ref_model or self.spec.reference_from_base

    def abstract_step_args(self) -> tuple[Any, ...]:
        """`jax.ShapeDtypeStruct`s (with their shardings) of the step's arguments: what `step.lower` takes.

        Token fields `[batch_size, seq_len]` int32, pair fields `[batch_size, P]` (int32 validity, float32
        reference log-probs); no weights and no data are needed.
        """
        d = self.cfg.data
        tok, pair = (d.batch_size, d.seq_len), (d.batch_size, d.pairs_per_row)
        sds = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
        fields = {k: sds(tok, jnp.int32, self.row_sh) for k in TOKEN_FIELDS}
        fields.update({k: sds(pair, jnp.int32, self.pair_sh) for k in PAIR_FIELDS})
        if self.use_ref_cache:
            fields.update({k: sds(pair, jnp.float32, self.pair_sh) for k in REF_FIELDS})
        batch = Batch.of(fields)
        state = jax.tree.map(lambda s, sh: sds(s.shape, s.dtype, sh), self.state_shapes, self.state_sh)
        args: tuple[Any, ...] = (state, batch)
        if self.use_ref_model:
            args += (jax.tree.map(lambda s, sh: sds(s.shape, s.dtype, sh), self.param_shapes, self.param_sh),)
        return args

    def lower_step(self) -> Any:
        """The step lowered from abstract arguments under the mesh (call `.compile()` on the result)."""
        with jax.set_mesh(self.mesh):
            return self.step.lower(*self.abstract_step_args())


def state_shardings(model: AbstractModel, mesh: Mesh, optimizer: optax.GradientTransformation
                    ) -> tuple[Any, dict[str, Any]]:
    """(param shardings, state shardings): AdamW moments are sharded like the params they belong to (with
    LoRA the optimizer state is of the adapters only)."""
    param_sh = model.shardings(mesh, model.shapes)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shapes = jax.eval_shape(optimizer.init, trainable(model, model.shapes))
    opt_sh = optax.tree_map_params(optimizer, lambda _p, sh: sh, opt_shapes, trainable(model, param_sh),
                                   transform_non_params=lambda _x: replicated)
    return param_sh, {"params": param_sh, "opt_state": opt_sh, "step": replicated}


def build(cfg: Config, mesh: Mesh, optimizer: optax.GradientTransformation,
          model: AbstractModel | None = None) -> StepProgram:
    """The run's jitted functions with explicit in/out shardings (nothing is compiled or allocated).

    `model`: the abstract model of `cfg.model` when the caller already holds it (else made here, once).
    """
    model = model or AbstractModel.of(cfg.model)
    spec, accum = LossSpec.of(cfg, model), cfg.grad_accum_for(dict(mesh.shape))
    m = cfg.model
    param_shapes = model.shapes  # ShapeDtypeStructs, the params' pure-dict tree
    param_sh, state_sh = state_shardings(model, mesh, optimizer)
    state_shapes = {"params": param_shapes,
                    "opt_state": jax.eval_shape(optimizer.init, trainable(model, param_shapes)),
                    "step": jax.ShapeDtypeStruct((), jnp.int32)}
    row = batch_sharding(mesh)
    pair = NamedSharding(mesh, PartitionSpec(row.spec[0], None))
    # With LoRA the in-step reference is the policy's own base weights (spec.reference_from_base).
    use_ref_model = cfg.dpo.objective == "dpo" and cfg.dpo.reference == "model" and m.lora is None
    use_ref_cache = cfg.dpo.objective == "dpo" and cfg.dpo.reference == "precomputed"

    def batch_shardings(with_ref: bool, with_pairs: bool = True) -> Batch:
        sh = {k: row for k in TOKEN_FIELDS}
        if with_pairs:
            sh.update({k: pair for k in PAIR_FIELDS})
        if with_ref:
            sh.update({k: pair for k in REF_FIELDS})
        return Batch.of(sh)

    batch_sh = batch_shardings(use_ref_cache)
    if use_ref_model:
        step_fn = lambda s, b, r: train_step(spec, optimizer, s, b, r, accum=accum)
        step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh, param_sh),
                       out_shardings=(state_sh, None), donate_argnums=(0,))
        eval_fn = lambda p, b, r: batch_loss(spec, p, b, r, accum=1)
        evaluate = jax.jit(eval_fn, in_shardings=(param_sh, batch_sh, param_sh))
    else:
        step_fn = lambda s, b: train_step(spec, optimizer, s, b, accum=accum)
        step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
                       donate_argnums=(0,))
        eval_fn = lambda p, b: batch_loss(spec, p, b, None, accum=1)
        evaluate = jax.jit(eval_fn, in_shardings=(param_sh, batch_sh))
    replicated = NamedSharding(mesh, PartitionSpec())
    ref_batch_sh = batch_shardings(False, with_pairs=False)
    if m.lora is None:
        ref_fn = lambda p, b: reference_logps(spec, p, b)
    else:  # the reference is the model with its adapters off, whatever their values (resumed runs too)
        base_spec = dataclasses.replace(spec, model=lora.base_model(model))
        ref_fn = lambda p, b: reference_logps(base_spec, lora.partition(model, p)[1], b)
    ref = jax.jit(ref_fn, in_shardings=(param_sh, ref_batch_sh), out_shardings=(replicated, replicated))
    return StepProgram(cfg, mesh, optimizer, spec, accum, use_ref_model, use_ref_cache, param_shapes,
                       state_shapes, param_sh, state_sh, row, pair, batch_sh, ref_batch_sh, step, evaluate,
                       ref)

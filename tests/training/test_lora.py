"""LoRA DPO: only the adapters train, a fresh adapter is the base model, and the in-step reference (the same
weights with adapters off) holds no second parameter tree in the compiled step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lr_jax.data.batch import Batch
from lr_jax.data.packing import PackingConfig, layout, pack, stack_rows
from lr_jax.model import AbstractModel, LoRAConfig, ModelConfig, init_params
from lr_jax.model import lora as lora_lib
from lr_jax.parallel.mesh import make_mesh
from lr_jax.training import program
from lr_jax.training.config import default_config_dict, from_config_dict
from lr_jax.training.plan import bytes_per_chip
from lr_jax.training.step import LossSpec, batch_loss, make_optimizer, train_step, trainable

SEQ, P, VOCAB = 32, 1, 256
LORA = {"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["q", "v", "o", "down"]}


def _cfg(lora=None, reference="model", vocab=VOCAB, hidden=32):
    model = ModelConfig.tiny(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=1,
                             num_heads=2, num_kv_heads=1, attention_backend="reference")
    c = default_config_dict(model)
    if lora is not None:
        c.model.lora = lora
    c.data.seq_len, c.data.pairs_per_row, c.data.batch_size = SEQ, P, 2
    c.dpo.reference = reference
    c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 1e-2, 0, "constant"
    c.mesh.fsdp = 1
    return from_config_dict(c)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    pc = PackingConfig(seq_len=SEQ, max_pairs_per_row=P)
    segs = []
    for i in range(2):
        prompt, chosen, rejected = (rng.integers(1, VOCAB, n) for n in (8, 5, 4))
        segs.append(layout(prompt, [chosen, rejected], pad_id=0, example_id=i))
    return Batch.of({k: jnp.asarray(v) for k, v in stack_rows(pack(segs, pc), 2, pc).items()})


def test_only_adapters_change_and_zero_adapters_equal_the_full_model():
    cfg, full = _cfg(LORA), _cfg()
    assert cfg.model.lora == LoRAConfig(rank=2, alpha=4.0, targets=("q", "v", "o", "down"))
    params = init_params(cfg.model, jax.random.key(0))
    batch = _batch()
    # Adapters at zero: the loss (reference = the adapter-free model) is the full model's, log 2 + SFT.
    loss, m = jax.jit(lambda p, b: batch_loss(LossSpec.of(cfg), p, b))(params, batch)
    base = lora_lib.partition(AbstractModel.of(cfg.model), params)[1]
    full_loss, _ = jax.jit(lambda p, b: batch_loss(LossSpec.of(full), p, b, p))(base, batch)
    np.testing.assert_allclose(float(loss), float(full_loss), rtol=1e-6)
    np.testing.assert_allclose(float(m["dpo_loss"]), math.log(2), rtol=1e-6)
    opt, _ = make_optimizer(cfg.optim, 10)
    state = {"params": params, "opt_state": opt.init(trainable(AbstractModel.of(cfg.model), params)),
             "step": jnp.zeros((), jnp.int32)}
    assert len(jax.tree.leaves(state["opt_state"])) < len(jax.tree.leaves(params))  # adapters' moments only
    step = jax.jit(lambda s, b: train_step(LossSpec.of(cfg), opt, s, b))
    for _ in range(3):
        state, _ = step(state, batch)
    adapters0, base0 = lora_lib.partition(AbstractModel.of(cfg.model), params)
    adapters1, base1 = lora_lib.partition(AbstractModel.of(cfg.model), state["params"])
    for a, b in zip(jax.tree.leaves(base0), jax.tree.leaves(base1), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pairs = zip(jax.tree.leaves(adapters0), jax.tree.leaves(adapters1), strict=True)
    assert all(not np.array_equal(a, b) for a, b in pairs)
    _, after = jax.jit(lambda p, b: batch_loss(LossSpec.of(cfg), p, b))(state["params"], batch)
    assert float(after["reward_margin"]) > 0 and float(after["dpo_loss"]) < math.log(2)


def _compiled(cfg):
    prog = program.build(cfg, make_mesh(devices=jax.devices()[:1]), optax.adamw(1e-3))
    return prog, prog.lower_step().compile().memory_analysis()


def test_in_step_reference_holds_no_second_param_tree():
    kw = dict(vocab=4096, hidden=128)  # parameters dominate the step's memory
    lora_prog, lora_mem = _compiled(_cfg(LORA, **kw))
    full_prog, full_mem = _compiled(_cfg(**kw))
    params = bytes_per_chip(lora_prog.abstract_step_args()[0]["params"])
    assert not lora_prog.use_ref_model and lora_prog.in_step_reference
    assert len(lora_prog.abstract_step_args()) == 2 and len(full_prog.abstract_step_args()) == 3
    # Full DPO with a reference model: params + AdamW moments + the frozen copy, 4x the params.
    assert full_mem.argument_size_in_bytes > 3.9 * params
    # LoRA: the params once, the adapters' (small) moments, the batch; no copy in the temporaries either.
    assert lora_mem.argument_size_in_bytes < 1.1 * params
    assert lora_mem.temp_size_in_bytes < full_mem.temp_size_in_bytes
    assert lora_mem.temp_size_in_bytes < 0.9 * params  # activations only: a weight copy would not fit


def test_lora_dropout_is_inverted_dropout_on_the_adapter_input_in_training_steps_only():
    from flax import nnx

    from lr_jax.model.layers import Linear

    lin = Linear((8,), (6,), ("embed",), ("mlp",), spec="bsd,df->bsf", rngs=nnx.Rngs(0),
                 lora=LoRAConfig(rank=2, alpha=4.0, dropout=0.5, targets=("up",)))
    lin.lora_b.value = jax.random.normal(jax.random.key(1), lin.lora_b.value.shape)
    x = jax.random.normal(jax.random.key(2), (1, 3, 8))
    plain = np.asarray(lin(x))  # no key: no dropout
    base = np.asarray(jnp.einsum("bsd,df->bsf", x, lin.kernel.value))
    adapter = plain - base
    keys = jax.random.split(jax.random.key(3), 4000)
    dropped = np.asarray(jax.vmap(lambda k: lin(x, k))(keys))
    assert not np.allclose(dropped[0], plain) and not np.allclose(dropped[0], dropped[1])
    # Unbiased: the mean over masks is the undropped output (inverted scaling), within 5 standard errors.
    se = dropped.std(0) / math.sqrt(len(keys))
    assert np.all(np.abs(dropped.mean(0) - plain) < 5 * se + 1e-6), (dropped.mean(0) - plain, se)
    assert np.abs(adapter).max() > 0.1
    # Only the adapter path is dropped: with B = 0 every mask gives exactly the base projection.
    lin.lora_b.value = jnp.zeros_like(lin.lora_b.value)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda k: lin(x, k))(keys[:8])), np.stack([base] * 8),
                               rtol=1e-6, atol=1e-6)

    # In the step: a fresh mask per step (same state and batch, another step number: other gradients),
    # the base stays frozen; eval (batch_loss) has no key and is deterministic.
    cfg = _cfg({**LORA, "dropout": 0.5})
    params = init_params(cfg.model, jax.random.key(0))
    adapters, frozen = lora_lib.partition(AbstractModel.of(cfg.model), params)
    params = lora_lib.combine(jax.tree.map(lambda a: a + 0.1, adapters), frozen)  # B != 0: dropout matters
    opt, _ = make_optimizer(cfg.optim, 10)
    step = jax.jit(lambda s, b: train_step(LossSpec.of(cfg), opt, s, b))
    batch = _batch()
    state = {"params": params, "opt_state": opt.init(trainable(AbstractModel.of(cfg.model), params)),
             "step": jnp.zeros((), jnp.int32)}
    _, m0 = step(state, batch)
    _, m0_again = step(state, batch)
    _, m1 = step({**state, "step": jnp.ones((), jnp.int32)}, batch)
    assert float(m0["loss"]) == float(m0_again["loss"]) and float(m0["loss"]) != float(m1["loss"])
    loss = jax.jit(lambda p, b: batch_loss(LossSpec.of(cfg), p, b)[0])
    assert float(loss(params, batch)) == float(loss(params, batch))
    no_drop = jax.jit(lambda p, b: batch_loss(LossSpec.of(_cfg(LORA)), p, b)[0])
    np.testing.assert_allclose(float(loss(params, batch)), float(no_drop(params, batch)), rtol=1e-6)

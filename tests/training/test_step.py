"""Step pieces with the real model: shared-prefix equality, accumulation, reference modes, every option."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lr_jax.data.batch import Batch
from lr_jax.data.packing import PackingConfig, layout, pack, pair_to_separate_sequences, stack_rows
from lr_jax.model import ModelConfig, init_params
from lr_jax.training import losses
from lr_jax.training.config import default_config_dict, from_config_dict
from lr_jax.training.step import (
    LossSpec,
    batch_loss,
    denominators,
    make_optimizer,
    objective,
    reference_logps,
    sequence_logps,
    train_step,
)

SEQ, P, VOCAB = 48, 2, 256


def _cfg(**overrides):
    model = ModelConfig.tiny(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1,
                             num_heads=2,
                             num_kv_heads=1, attention_backend="reference")
    c = default_config_dict(model)
    c.data.seq_len, c.data.pairs_per_row, c.data.batch_size = SEQ, P, 4
    c.dpo.logprob_chunk_size = 7  # does not divide SEQ
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.optim.grad_clip = 0.0
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(c, section), name, value)
    return from_config_dict(c)


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(1, VOCAB, rng.integers(4, 9))
        chosen, rejected = (rng.integers(1, VOCAB, rng.integers(2, 6)) for _ in range(2))
        out.append((prompt, chosen, rejected))
    return out


def _batch(pairs, rows=4):
    pc = PackingConfig(seq_len=SEQ, max_pairs_per_row=P)
    segs = [layout(p, [c, r], pad_id=0, example_id=i) for i, (p, c, r) in enumerate(pairs)]
    return Batch.of({k: jnp.asarray(v) for k, v in stack_rows(pack(segs, pc), rows, pc).items()})


def test_shared_prefix_logps_equal_separate_sequences():
    cfg = _cfg()
    params = init_params(cfg.model, jax.random.key(0))
    pairs = _pairs(6)
    batch = _batch(pairs)
    _, chosen, rejected, valid = jax.jit(lambda p, b: sequence_logps(LossSpec.of(cfg), p, b))(params, batch)
    assert bool(valid.any())
    example_ids = np.asarray(stack_rows(pack([layout(p, [c, r], pad_id=0, example_id=i)
                                              for i, (p, c, r) in enumerate(pairs)],
                                             PackingConfig(SEQ, P)), 4, PackingConfig(SEQ, P))["example_ids"])
    sep_cfg = _cfg(data__pairs_per_row=1)
    sep_fn = jax.jit(lambda p, b: sequence_logps(LossSpec.of(sep_cfg), p, b))
    for row in range(example_ids.shape[0]):
        for slot in range(P):
            ex = example_ids[row, slot]
            if ex < 0:
                assert not bool(valid[row, slot])
                continue
            prompt, c, r = pairs[ex]
            sep = pair_to_separate_sequences(prompt, c, r, pad_id=0, seq_len=16)
            sep = Batch.of({k: jnp.asarray(v) for k, v in sep.items()})
            _, sc, sr, _ = sep_fn(params, sep)
            np.testing.assert_allclose(float(chosen[row, slot]), float(sc[0, 0]), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(float(rejected[row, slot]), float(sr[1, 0]), rtol=1e-5, atol=1e-5)


def _train(cfg, opt):
    """The jitted train step of `cfg` (accumulating over cfg.optim.grad_accum micro-batches)."""
    spec = LossSpec.of(cfg)
    return jax.jit(lambda s, b, *ref: train_step(spec, opt, s, b, *ref, accum=cfg.optim.grad_accum))


def _state(cfg, opt):
    params = init_params(cfg.model, jax.random.key(1))
    return {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}


def _with_ref(cfg, params, batch):
    c, r = reference_logps(LossSpec.of(cfg), params, batch)
    return batch.replace(ref_chosen_logps=c, ref_rejected_logps=r)


def test_step_zero_loss_is_log2_plus_sft_and_reference_modes_agree():
    cfg = _cfg()
    opt, _ = make_optimizer(cfg.optim, 10)
    state = _state(cfg, opt)
    batch = _with_ref(cfg, state["params"], _batch(_pairs(6, seed=3)))
    loss, m = batch_loss(LossSpec.of(cfg), state["params"], batch)
    np.testing.assert_allclose(float(m["dpo_loss"]), math.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(loss), math.log(2) + 0.1 * float(m["sft_nll"]), rtol=1e-5)
    # One step with the cached reference == one step with the frozen reference model in the step.
    s1, m1 = _train(cfg, opt)(state, batch)
    cfg_model = _cfg(dpo__reference="model")
    state2 = _state(cfg_model, opt)
    s2, m2 = _train(cfg_model, opt)(state2, batch, state2["params"])
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # After the step the policy prefers chosen on this batch.
    _, m_after = batch_loss(LossSpec.of(cfg), s1["params"], batch)
    assert float(m_after["reward_margin"]) > 0


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_grad_accumulation_matches_full_batch(norm):
    cfg1 = _cfg(dpo__sft_normalization=norm)
    cfg2 = _cfg(dpo__sft_normalization=norm, optim__grad_accum=2)
    opt = optax.sgd(1.0)  # plain SGD: the param change *is* the gradient (Adam would amplify round-off)
    state = _state(cfg1, opt)
    # Uneven rows: micro-batches have different pair and token counts.
    batch = _with_ref(cfg1, state["params"], _batch(_pairs(5, seed=4)))
    s1, m1 = _train(cfg1, opt)(state, batch)
    s2, m2 = _train(cfg2, opt)(state, batch)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_every_dpo_option_reaches_the_loss():
    """Each option changes the loss as its formula says (guards against declared-but-unread options)."""
    base = _cfg()
    params = init_params(base.model, jax.random.key(2))
    batch = _with_ref(base, params, _batch(_pairs(6, seed=5)))
    # Perturb the reference so h != 0 and every variant is distinguishable.
    batch = batch.replace(ref_rejected_logps=batch.ref_rejected_logps + 3.0)
    spec = LossSpec.of(base)
    tok, chosen, rejected, valid = jax.jit(lambda p, b: sequence_logps(spec, p, b))(params, batch)
    h = (chosen - batch.ref_chosen_logps) - (rejected - batch.ref_rejected_logps)
    h = np.asarray(h)[np.asarray(valid)]

    def loss_of(**kw):
        cfg = _cfg(**kw)
        args = (batch, tok, chosen, rejected, valid, batch.ref_chosen_logps, batch.ref_rejected_logps)
        return float(objective(LossSpec.of(cfg), *args, denominators(LossSpec.of(cfg), batch))[0])

    mask = np.asarray(batch.loss_mask) * (np.asarray(batch.branch_ids) == 1)
    nll = -float(np.sum(np.asarray(tok) * mask) / mask.sum())
    ls = lambda x: -np.logaddexp(0, -x)
    for kw, dpo in [
        ({}, np.mean(-ls(0.15 * h))),
        ({"dpo__beta": 0.5}, np.mean(-ls(0.5 * h))),
        ({"dpo__label_smoothing": 0.2}, np.mean(-0.8 * ls(0.15 * h) - 0.2 * ls(-0.15 * h))),
        ({"dpo__loss_type": "robust", "dpo__label_smoothing": 0.2},
         np.mean((-0.8 * ls(0.15 * h) + 0.2 * ls(-0.15 * h)) / 0.6)),
        ({"dpo__loss_type": "ipo"}, np.mean((h - 1 / 0.3) ** 2)),
        ({"dpo__loss_type": "hinge"}, np.mean(np.maximum(0, 1 - 0.15 * h))),
    ]:
        np.testing.assert_allclose(loss_of(**kw), dpo + 0.1 * nll, rtol=2e-5, err_msg=str(kw))
    np.testing.assert_allclose(loss_of(dpo__sft_weight=0.0), np.mean(-ls(0.15 * h)), rtol=2e-5)
    np.testing.assert_allclose(loss_of(dpo__objective="sft"), nll, rtol=2e-5)
    seq_nll = float(losses.sft_loss(tok, batch.loss_mask, batch.branch_ids, batch.segment_ids,
                                    normalization="sequence", num_segments=P))
    assert abs(seq_nll - nll) > 1e-4
    np.testing.assert_allclose(loss_of(dpo__sft_normalization="sequence", dpo__sft_weight=1.0),
                               np.mean(-ls(0.15 * h)) + seq_nll, rtol=2e-5)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warmup_and_decay(schedule):
    cfg = _cfg(optim__schedule=schedule, optim__warmup_steps=4, optim__end_lr_ratio=0.1, optim__lr=1.0)
    _, sched = make_optimizer(cfg.optim, 20)
    lrs = np.array([float(sched(i)) for i in range(21)])
    np.testing.assert_allclose(lrs[:5], [0.25, 0.5, 0.75, 1.0, 1.0], rtol=1e-6)
    if schedule == "constant":
        np.testing.assert_allclose(lrs[4:], 1.0)
    else:
        np.testing.assert_allclose(lrs[-1], 0.1, rtol=1e-5)
        assert np.all(np.diff(lrs[4:]) <= 1e-7)
        mid = 4 + 8
        want = 0.1 + 0.9 * (0.5 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * 0.5)))
        np.testing.assert_allclose(lrs[mid], want, rtol=1e-5)

"""The whole decoder with attention_backend="ring" on a data=2 x sequence=4 mesh equals the single-device
reference forward (logits and parameter gradients), in natural and zig-zag token order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.model import ModelConfig, forward, init_params, param_shardings
from lr_jax.model.attention.layout import from_ring_order, to_ring_order
from lr_jax.parallel.mesh import make_mesh
from lr_jax.parallel.rules import batch_sharding

B, S, SEQ_AXIS = 2, 32, 4


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(B, S)).astype(np.int32)
    # Row 0: [prompt 11 | chosen 9 | rejected 12]; row 1: packed segments 13 + 15, then 4 padding.
    pos = np.stack([np.r_[np.arange(11), 11 + np.arange(9), 11 + np.arange(12)],
                    np.r_[np.arange(13), np.arange(15), np.zeros(4)]]).astype(np.int32)
    seg = np.stack([np.ones(S), np.r_[np.ones(13), np.full(15, 2), np.zeros(4)]]).astype(np.int32)
    br = np.stack([np.r_[np.zeros(11), np.ones(9), np.full(12, 2)], np.zeros(S)]).astype(np.int32)
    w = rng.normal(size=(B, S, 256)).astype(np.float32)
    return tokens, pos, seg, br, w


def _loss(cfg, params, tokens, pos, seg, br, w):
    logits = forward(cfg, params, tokens, pos, seg, br)
    return jnp.sum(logits * w), logits


@pytest.fixture(scope="module")
def expected():
    cfg = ModelConfig.tiny(attention_backend="reference", dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    (_, logits), grads = jax.jit(jax.value_and_grad(lambda p, *b: _loss(cfg, p, *b), has_aux=True))(
        params, *_batch())
    return params, np.asarray(logits), grads


@pytest.mark.parametrize("zigzag", [False, True], ids=["natural", "zigzag"])
def test_ring_model_matches_single_device_reference(expected, zigzag):
    params, want_logits, want_grads = expected
    cfg = ModelConfig.tiny(attention_backend="ring", dtype="float32", attention_block_size=4)
    mesh = make_mesh(data=2, sequence=SEQ_AXIS)
    batch = _batch()
    if zigzag:
        batch = to_ring_order(batch, SEQ_AXIS)
    with jax.set_mesh(mesh):
        p_sh = param_shardings(cfg, mesh, params)
        b_sh = batch_sharding(mesh)
        params_d = jax.device_put(params, p_sh)
        batch_d = [jax.device_put(x, b_sh) for x in batch[:4]] + [jax.device_put(batch[4], b_sh)]
        step = jax.jit(jax.value_and_grad(lambda p, *b: _loss(cfg, p, *b), has_aux=True))
        jaxpr = str(jax.make_jaxpr(step)(params_d, *batch_d))
        (_, logits), grads = step(params_d, *batch_d)
    assert "ppermute" in jaxpr  # the ring really ran inside the model
    logits = np.asarray(logits)
    if zigzag:
        logits = from_ring_order(logits, SEQ_AXIS)
    np.testing.assert_allclose(logits, want_logits, atol=2e-5, rtol=2e-5)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    for (path, g), w in zip(flat, jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-4, rtol=2e-4,
                                   err_msg=jax.tree_util.keystr(path))


def test_dpo_loss_with_ring_and_zigzag_batch_equals_reference():
    """The DPO loss and its gradient from a zig-zag-permuted batch on a sequence-sharded mesh equal the
    natural-order single-device values: the losses only sum per segment/branch, so they are order-free."""
    from lr_jax.data.batch import TOKEN_FIELDS, Batch
    from lr_jax.data.packing import layout
    from lr_jax.training.config import Config, DataConfig
    from lr_jax.training.step import LossSpec, batch_loss

    rng = np.random.default_rng(3)
    rows = []
    for _ in range(B):
        seg = layout(rng.integers(1, 256, 12), [rng.integers(1, 256, 6), rng.integers(1, 256, 8)], pad_id=0)
        pad = S - len(seg.tokens)
        row = {k: np.pad(getattr(seg, k), (0, pad)) for k in TOKEN_FIELDS if k != "segment_ids"}
        row["segment_ids"] = np.pad(np.ones(len(seg.tokens), np.int32), (0, pad))
        rows.append(row)
    batch = {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in TOKEN_FIELDS}
    batch["pair_valid"] = np.ones((B, 1), np.int32)
    batch["ref_chosen_logps"] = rng.normal(size=(B, 1)).astype(np.float32) - 30
    batch["ref_rejected_logps"] = rng.normal(size=(B, 1)).astype(np.float32) - 30

    def cfg_for(backend: str) -> Config:
        # The ring side also runs under full remat (custom_vjp + shard_map inside checkpoint and scan).
        remat = "full" if backend == "ring" else "none"
        model = ModelConfig.tiny(attention_backend=backend, dtype="float32", attention_block_size=4,
                                 remat_policy=remat)
        return Config(model=model, data=DataConfig(seq_len=S, batch_size=B, pairs_per_row=1))

    ref_cfg = cfg_for("reference")
    params = init_params(ref_cfg.model, jax.random.key(1))
    grad_fn = lambda cfg: jax.jit(jax.value_and_grad(
        lambda p, b: batch_loss(LossSpec.of(cfg), p, Batch.of(b))[0]))
    want_loss, want_grads = grad_fn(ref_cfg)(params, batch)

    zig = {k: (to_ring_order(v, SEQ_AXIS) if k in TOKEN_FIELDS else v) for k, v in batch.items()}
    mesh = make_mesh(data=2, sequence=SEQ_AXIS)
    cfg = cfg_for("ring")
    with jax.set_mesh(mesh):
        loss, grads = grad_fn(cfg)(jax.device_put(params, param_shardings(cfg.model, mesh, params)), zig)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-4)

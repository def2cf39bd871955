"""Ring attention's per-block kernels (ring_kernels.py) vs an independent float64 dense reference.

Splash runs in Pallas interpret mode on CPU (the real TPU kernel's code path, slow: tiny heads, the smallest
lengths it tiles — a zig-zag chunk of 128 tokens); "cudnn_xla" is the cuDNN block kernel's plumbing through
XLA's `dot_product_attention` (the real cuDNN test skips without an NVIDIA GPU). One batch holds a plain
causal row, packed segments with padding, and two packed `[prompt | chosen | rejected]` pairs built by the
data pipeline (lr_jax/data/packing.py) whose first prompt boundary falls inside a shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.data.packing import PackingConfig, layout, pack, stack_rows
from lr_jax.model.attention import cudnn, ring, ring_kernels
from lr_jax.model.attention.layout import from_ring_order, to_ring_order
from lr_jax.model.attention.mask import TokenInfo
from lr_jax.model.config import ConfigError as ModelConfigError
from lr_jax.model.config import ModelConfig
from lr_jax.training.config import Config, ConfigError, DataConfig, MeshConfig
from tests.helpers import attention as oracle
from tests.helpers.mesh import ambient

HQ, HKV, D = 2, 1, 8
SCALE = 0.35
AXES = ("data", "fsdp", "tensor", "sequence")


def _pair_rows(seq: int, pairs: list[tuple[int, int, int]], rng: np.random.Generator) -> dict:
    """The data pipeline's packed shared-prefix rows for (prompt, chosen, rejected) lengths."""
    segs = [layout(rng.integers(1, 50, p), [rng.integers(1, 50, c), rng.integers(1, 50, r)], pad_id=0)
            for p, c, r in pairs]
    cfg = PackingConfig(seq_len=seq, max_pairs_per_row=len(pairs))
    return stack_rows(pack(segs, cfg), 1, cfg)


def _info(seq: int) -> TokenInfo:
    """Three rows (natural order) for a row length of 512 * f."""
    f = seq // 512
    causal = (np.arange(seq), np.ones(seq), np.zeros(seq))
    lens = [150 * f, 200 * f, 130 * f]
    pad = seq - sum(lens)
    packed = (np.concatenate([np.arange(n) for n in lens] + [np.zeros(pad)]),
              np.concatenate([np.full(n, i + 1) for i, n in enumerate(lens)] + [np.zeros(pad)]),
              np.zeros(seq))
    # Prompt of 200 f: its last token (index 200 f - 2) sits inside zig-zag chunk 1 (n = 2) / 3 (n = 4).
    b = _pair_rows(seq, [(200 * f, 60 * f, 80 * f), (70 * f, 30 * f, 40 * f)], np.random.default_rng(f))
    shared = (b["positions"][0], b["segment_ids"][0], b["branch_ids"][0])
    rows = [causal, packed, shared]
    return TokenInfo(*(jnp.asarray(np.stack([r[i] for r in rows]), jnp.int32) for i in range(3)))


def _problem(seq: int) -> dict:
    info = _info(seq)
    pos, seg, br = (np.asarray(x) for x in (info.positions, info.segment_ids, info.branch_ids))
    b = pos.shape[0]
    rng = np.random.default_rng(seq)
    q64 = rng.normal(size=(b, seq, HQ, D))
    k64, v64 = rng.normal(size=(b, seq, HKV, D)), rng.normal(size=(b, seq, HKV, D))
    # Padding rows (segment 0) reach no loss; the splash encoding is exact only on real tokens.
    real = seg != 0
    w64 = rng.normal(size=(b, seq, HQ, D)) * real[:, :, None, None]
    out, grads = oracle.out_and_grads64(q64, k64, v64, oracle.mask_rule(pos, seg, br), SCALE, w64)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return dict(info=info, real=real, q=f32(q64), k=f32(k64), v=f32(v64), w=f32(w64), out=out, grads=grads)


@pytest.fixture(scope="module")
def p512():
    return _problem(512)


def _mesh(n: int):
    return jax.make_mesh((1, 1, 1, n), AXES, devices=jax.devices()[:n])


def _ring(problem: dict, n: int, kernel: str, grads: bool):
    """Ring attention in zig-zag order; returns (out, grads or None) back in natural order (NumPy)."""
    q, k, v, info, w = to_ring_order(tuple(problem[x] for x in ("q", "k", "v", "info", "w")), n)

    def f(q, k, v, info):
        return ring.attention(q, k, v, info, info, scale=SCALE, block_size=128, block_kernel=kernel)

    with ambient(_mesh(n)):
        if grads:
            loss = lambda q, k, v, info: (jnp.sum(f(q, k, v, info) * w), f(q, k, v, info))
            (_, out), g = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v, info)
            g = from_ring_order([np.asarray(x) for x in g], n)
        else:
            out, g = jax.jit(f)(q, k, v, info), None
    return from_ring_order(np.asarray(out), n), g


def _splash_ring(q, k, v, info):
    return ring.attention(q, k, v, info, info, scale=SCALE, block_size=128, block_kernel="splash")


def _check(problem: dict, out: np.ndarray, grads, *, padding_rows_exact: bool) -> None:
    real = problem["real"] if not padding_rows_exact else np.ones_like(problem["real"])
    np.testing.assert_allclose(out[real], problem["out"][real], atol=1e-5, rtol=1e-5)
    for name, got, want in zip("qkv", grads or [], problem["grads"], strict=False):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


# ------------------------------------------------------------------------------------ the mask claim


def test_index_rule_equals_position_rule_on_data_pipeline_rows():
    """Splash's index-causal + segment + branch encoding equals mask.py's position rule on every layout the
    data pipeline builds (random packed pairs and SFT examples); `layout_violations` accepts them all."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        seq = 96
        items = []
        for _ in range(rng.integers(1, 5)):
            n_resp = int(rng.integers(1, 3))  # 1: the SFT layout (one branch); 2: a DPO pair
            lens = rng.integers(1, 12, n_resp + 1)
            items.append(layout(rng.integers(1, 9, lens[0]), [rng.integers(1, 9, n) for n in lens[1:]],
                                pad_id=0))
        cfg = PackingConfig(seq_len=seq, max_pairs_per_row=4)
        batch = stack_rows(pack(items, cfg)[:1], 2, cfg)  # row 1: all padding
        info = TokenInfo(*(jnp.asarray(batch[x]) for x in ("positions", "segment_ids", "branch_ids")))
        assert not np.asarray(ring_kernels.layout_violations(info)).any(), trial
        pos, seg, br = (batch[x] for x in ("positions", "segment_ids", "branch_ids"))
        real = seg != 0
        got, want = np.asarray(ring_kernels.index_rule(info)), oracle.mask_rule(pos, seg, br)
        np.testing.assert_array_equal(got[real], want[real], err_msg=f"trial {trial}")


def test_layout_check_is_sufficient_on_shuffled_rows():
    """Whenever `layout_violations` passes a row, the index rule equals the position rule (sufficiency), and
    it flags the realistic failures: a natural-order row fed as zig-zag, a prompt token after a response."""
    rng = np.random.default_rng(1)
    passed = 0
    base = _pair_rows(64, [(20, 9, 7), (10, 6, 5)], rng)
    for _ in range(200):
        arr = {x: base[x][0].copy() for x in ("positions", "segment_ids", "branch_ids")}
        i, j = rng.integers(0, 64, 2)  # swap two tokens' ids
        for a in arr.values():
            a[[i, j]] = a[[j, i]]
        info = TokenInfo(*(jnp.asarray(arr[x])[None] for x in ("positions", "segment_ids", "branch_ids")))
        if not np.asarray(ring_kernels.layout_violations(info)).any():
            passed += 1
            real = arr["segment_ids"] != 0
            want = oracle.mask_rule(*(arr[x][None] for x in ("positions", "segment_ids", "branch_ids")))
            np.testing.assert_array_equal(np.asarray(ring_kernels.index_rule(info))[0][real], want[0][real])
    assert 0 < passed < 200  # both outcomes were exercised
    good = TokenInfo(*(jnp.asarray(base[x]) for x in ("positions", "segment_ids", "branch_ids")))
    ring_kernels.check_layout(to_ring_order(good, 2), 2)
    with pytest.raises(ring_kernels.SplashRingLayoutError, match="batch row 0"):
        ring_kernels.check_layout(good, 2)  # natural order where zig-zag is expected
    swapped = TokenInfo(good.positions, good.segment_ids, good.branch_ids.at[0, 25].set(0))  # prompt after c
    with pytest.raises(ring_kernels.SplashRingLayoutError, match="token 25"):
        ring_kernels.check_layout(to_ring_order(swapped, 2), 2)


# ---------------------------------------------------------------------------------- kernels vs dense


def test_ring_splash_matches_dense_values_and_grads(p512):
    out, grads = _ring(p512, 2, "splash", grads=True)
    _check(p512, out, grads, padding_rows_exact=False)


def test_ring_splash_matches_dense_on_four_shards():
    problem = _problem(1024)
    out, grads = _ring(problem, 4, "splash", grads=True)
    _check(problem, out, grads, padding_rows_exact=False)


@pytest.mark.parametrize("n", [2, 4])
def test_ring_cudnn_block_plumbing_matches_dense(p512, n):
    out, grads = _ring(p512, n, "cudnn_xla", grads=True)
    _check(p512, out, grads, padding_rows_exact=True)


def test_splash_refuses_layouts_it_cannot_encode(p512):
    q, k, v, info = (p512[x] for x in ("q", "k", "v", "info"))
    with ambient(_mesh(2)):
        # Concrete ids in natural order (zig-zag expected): a clear host-side error before any kernel runs.
        with pytest.raises(ring_kernels.SplashRingLayoutError, match="zig-zag"):
            ring.attention(q, k, v, info, info, scale=SCALE, block_size=128, block_kernel="splash")
        # Traced ids: the bad row comes out NaN (never a silently different mask); the good row is exact.
        # Row 0 in zig-zag order (as expected), row 1 left in natural order.
        rows = lambda tree: jax.tree.map(lambda a, b: jnp.stack([a[0], b[0]]), to_ring_order(tree, 2), tree)
        zq, zk, zv, bad = rows((q, k, v, info))
        out = np.asarray(jax.jit(_splash_ring)(zq, zk, zv, bad))
        with pytest.raises(ring.RingAttentionError, match="multiple of 128"):
            ring.attention(q[:, :256], k[:, :256], v[:, :256], info, info, scale=SCALE, block_kernel="splash")
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[0]))
    np.testing.assert_allclose(from_ring_order(out[:1], 2)[0], p512["out"][0], atol=1e-5, rtol=1e-5)


def test_splash_under_ambient_mesh_with_sharded_batch(p512):
    """As in training: `jax.set_mesh` (Explicit axes), batch over data, sequence over the ring, ids traced
    and sharded (the in-graph layout check gathers them first)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((2, 1, 1, 2), AXES, devices=jax.devices()[:4])
    rows = lambda x: x[1:]  # the packed and the shared-prefix rows: 2 rows over data = 2
    q, k, v, info = to_ring_order(jax.tree.map(rows, tuple(p512[x] for x in ("q", "k", "v", "info"))), 2)
    with jax.set_mesh(mesh):
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", "sequence", *[None] * (x.ndim - 2))))
        q, k, v, info = jax.tree.map(put, (q, k, v, info))
        out = from_ring_order(np.asarray(jax.jit(_splash_ring)(q, k, v, info)), 2)
    real = p512["real"][1:]
    np.testing.assert_allclose(out[real], p512["out"][1:][real], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not cudnn.block_available()[0], reason=cudnn.block_available()[1])
def test_ring_cudnn_kernel_on_gpu(p512):  # pragma: no cover - needs an NVIDIA GPU
    bf = {x: p512[x].astype(jnp.bfloat16) for x in ("q", "k", "v")}
    out, grads = _ring({**p512, **bf}, 1, "cudnn", grads=True)
    np.testing.assert_allclose(out[p512["real"]].astype(np.float32), p512["out"][p512["real"]], atol=3e-2,
                               rtol=3e-2)
    for got, want in zip(grads, p512["grads"], strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=6e-2, rtol=6e-2)


# ------------------------------------------------------------------------------------------- config


def _config(**model) -> Config:
    m = ModelConfig.tiny(attention_backend="ring", **model)
    return Config(model=m, mesh=MeshConfig(data=1, fsdp=1, tensor=1, sequence=2),
                  data=DataConfig(seq_len=512, batch_size=2))


def test_config_validates_ring_block_kernel():
    assert ModelConfig.tiny().ring_block_kernel == "jax"
    _config().mesh_shape(2)  # the default is accepted everywhere
    with pytest.raises(ModelConfigError, match="ring_block_kernel"):
        ModelConfig.tiny(ring_block_kernel="flash")
    for name in ("splash", "cudnn"):
        ok, _ = ring_kernels.is_available(name)
        if not ok:  # CPU: refused before anything compiles, naming the field
            with pytest.raises(ConfigError, match=f"model.ring_block_kernel: '{name}' is not available"):
                _config(ring_block_kernel=name).mesh_shape(2)
    with pytest.raises(ConfigError, match="only used by attention_backend='ring'"):
        Config(model=ModelConfig.tiny(attention_backend="blockwise", ring_block_kernel="splash"),
               mesh=MeshConfig(fsdp=1, sequence=2), data=DataConfig(seq_len=512, batch_size=2)).mesh_shape(2)
    assert "multiple of 128" in ring_kernels.shape_problem("splash", 512, 4, 512)
    assert "bfloat16" in ring_kernels.shape_problem("cudnn", 512, 2, 512, "float32")
    assert ring_kernels.shape_problem("splash", 1024, 4, 512) == ""

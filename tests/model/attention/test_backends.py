"""Every registered attention backend against the one float64 oracle: values and gradients, through the
registry (`bind`), on causal, packed and shared-prefix rows. A backend that cannot run here is skipped with
its own reason; a new backend joins this test by being registered."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.model import ModelConfig
from lr_jax.model.attention import BACKENDS, TokenInfo, bind
from lr_jax.parallel.mesh import make_mesh
from tests.helpers import attention as oracle
from tests.helpers.mesh import ambient

S, HQ, HKV, D = 128, 4, 2, 16  # splash tiles are multiples of 128 tokens


def _rows() -> TokenInfo:
    """Row 0 causal; row 1 two packed examples then padding; row 2 [prompt 50 | chosen 30 | rejected 48]."""
    causal = (np.arange(S), np.ones(S), np.zeros(S))
    packed = (np.r_[np.arange(70), np.arange(40), np.arange(18)],
              np.r_[np.ones(70), np.full(40, 2), np.zeros(18)], np.zeros(S))
    shared = (np.r_[np.arange(50), 50 + np.arange(30), 50 + np.arange(48)], np.ones(S),
              np.r_[np.zeros(50), np.ones(30), np.full(48, 2)])
    rows = [causal, packed, shared]
    return TokenInfo(*(jnp.asarray(np.stack([r[i] for r in rows]), jnp.int32) for i in range(3)))


CASES = [(name, 1) for name in BACKENDS] + [("ring", 2)]  # ring also over a real 2-shard sequence axis


@pytest.mark.parametrize(("name", "sequence"), CASES, ids=[f"{n}-seq{s}" for n, s in CASES])
def test_backend_matches_float64_oracle(name: str, sequence: int) -> None:
    ok, why = BACKENDS[name].is_available()
    if not ok and not BACKENDS[name].emulated:
        pytest.skip(f"{name}: {why}")
    cfg = ModelConfig.tiny(num_heads=HQ, num_kv_heads=HKV, head_dim=D, attention_backend=name,
                           attention_block_size=32 if name != "splash" else 128)
    info = _rows()
    rng = np.random.default_rng(0)
    q64 = rng.normal(size=(3, S, HQ, D))
    k64, v64 = rng.normal(size=(3, S, HKV, D)), rng.normal(size=(3, S, HKV, D))
    real = np.asarray(info.segment_ids) > 0  # padding rows reach no loss (splash is exact on real tokens)
    w64 = rng.normal(size=q64.shape) * real[:, :, None, None]
    want, want_grads = oracle.out_and_grads64(q64, k64, v64, oracle.mask_rule(*oracle.ids(info)),
                                              D**-0.5, w64)
    attend = bind(cfg)
    f32 = lambda x: jnp.asarray(x, jnp.float32)

    def loss(q, k, v):
        out = attend(q, k, v, info, info)
        return jnp.sum(out * f32(w64)), out

    mesh = make_mesh(sequence=sequence, devices=jax.devices()[:sequence]) if sequence > 1 else None
    with ambient(mesh):
        grad_fn = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
        (_, out), grads = grad_fn(f32(q64), f32(k64), f32(v64))
    np.testing.assert_allclose(np.asarray(out) * real[:, :, None, None], want * real[:, :, None, None],
                               atol=2e-5, rtol=2e-5)
    for label, g, wg in zip("qkv", grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), wg, atol=5e-5, rtol=5e-5, err_msg=f"{name}: d{label}")


def test_building_for_a_platform_sets_availability_and_restores_the_host() -> None:
    """`building_for` (the plan's compile-only TPU programs) makes the platform-bound kernels available for
    the target only inside the block; outside, availability follows `jax.default_backend()` again."""
    from lr_jax.model.attention import building_for, kernel, target_platform

    host = jax.default_backend()
    assert target_platform() == host
    with building_for("tpu"):
        assert target_platform() == "tpu"
        assert BACKENDS["splash"].is_available()[0]
        assert not BACKENDS["cudnn"].is_available()[0]
        with building_for("gpu"):
            assert BACKENDS["cudnn"].is_available()[0] and not BACKENDS["splash"].is_available()[0]
        assert target_platform() == "tpu"
    assert target_platform() == host
    assert BACKENDS["splash"].is_available()[0] == (host == "tpu")
    ring_splash = kernel(ModelConfig.tiny(attention_backend="ring", ring_block_kernel="splash"))
    assert ring_splash.custom_call and "splash" in ring_splash.description
    assert not kernel(ModelConfig.tiny(attention_backend="blockwise")).custom_call

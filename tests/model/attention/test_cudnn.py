"""cuDNN backend: the real kernel runs only on an NVIDIA GPU (skipped elsewhere, with the reason); the mask
and GQA plumbing around it is checked on any platform through the same code path with implementation="xla"."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.model.attention import cudnn
from lr_jax.model.attention.mask import TokenInfo
from tests.helpers import attention as oracle

B, S, HQ, HKV, D = 2, 24, 4, 2, 8
SCALE = D**-0.5


def _problem():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(B, S, HQ, D))
    k, v = rng.normal(size=(B, S, HKV, D)), rng.normal(size=(B, S, HKV, D))
    # Row 0: [prompt 8 | chosen 6 | rejected 10]; row 1: packed segments 10 + 8, then 6 padding (segment 0).
    pos = np.stack([np.r_[np.arange(8), 8 + np.arange(6), 8 + np.arange(10)],
                    np.r_[np.arange(10), np.arange(8), np.arange(6)]])
    seg = np.stack([np.ones(S), np.r_[np.ones(10), np.full(8, 2), np.zeros(6)]])
    br = np.stack([np.r_[np.zeros(8), np.ones(6), np.full(10, 2)], np.zeros(S)])
    info = TokenInfo(*(jnp.asarray(x, jnp.int32) for x in (pos, seg, br)))
    return q, k, v, info


def _naive64(q, k, v, info: TokenInfo) -> np.ndarray:
    return oracle.out_and_grads64(q, k, v, oracle.mask_rule(*oracle.ids(info)), SCALE)[0]


def test_mask_plumbing_with_xla_implementation():
    q, k, v, info = _problem()
    got = cudnn._attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), info, info, scale=SCALE,
                           implementation="xla")
    np.testing.assert_allclose(np.asarray(got), _naive64(q, k, v, info), atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_are_zero():
    q = jnp.ones((1, 4, 2, 8))
    kv = jnp.ones((1, 4, 1, 8))
    qi = TokenInfo.build(1, 4, segment_ids=jnp.asarray([[1, 1, 3, 3]]))
    ki = TokenInfo.build(1, 4)  # all segment 1: queries of segment 3 see nothing
    out = np.asarray(cudnn._attention(q, kv, kv, qi, ki, scale=1.0, implementation="xla"))
    assert np.all(out[0, 2:] == 0) and np.allclose(out[0, :2], 1.0)


def test_is_available_reason():
    ok, reason = cudnn.is_available()
    if jax.default_backend() != "gpu":
        assert not ok and "GPU" in reason


@pytest.mark.skipif(not cudnn.is_available()[0], reason=cudnn.is_available()[1])
def test_cudnn_kernel_matches_reference_on_gpu():
    q, k, v, info = _problem()
    got = cudnn.attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), info, info, scale=SCALE)
    np.testing.assert_allclose(np.asarray(got, np.float32), _naive64(q, k, v, info), atol=3e-2, rtol=3e-2)

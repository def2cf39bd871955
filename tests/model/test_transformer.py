"""The decoder: param layout, backends/scan/remat agree, shared-prefix and packed rows equal separate rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.model import ConfigError, ModelConfig, RopeScaling, hidden_states, init_params, unembed
from lr_jax.model import forward as _forward

# Jitted once per (config, shapes): op-by-op dispatch of the scanned layers would dominate the test time.
forward = jax.jit(_forward, static_argnums=0)

CFG = ModelConfig.tiny(qkv_bias=True, post_norms=True, attention_block_size=8)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def _shapes(tree):
    return jax.tree.map(lambda x: tuple(x.shape), tree)


def test_param_tree_layout() -> None:
    cfg = ModelConfig.tiny(qkv_bias=True, post_norms=True, tie_embeddings=False)
    L, D, F, V, H, K, hd = 2, 64, 128, 256, 4, 2, 16
    assert _shapes(jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(1))) == {
        "embed": {"embedding": (V, D)},
        "layers": {
            "attn_norm": {"scale": (L, D)},
            "attn": {
                "q": {"kernel": (L, D, H, hd), "bias": (L, H, hd)},
                "k": {"kernel": (L, D, K, hd), "bias": (L, K, hd)},
                "v": {"kernel": (L, D, K, hd), "bias": (L, K, hd)},
                "o": {"kernel": (L, H, hd, D)},
            },
            "mlp_norm": {"scale": (L, D)},
            "mlp": {
                "gate": {"kernel": (L, D, F)},
                "up": {"kernel": (L, D, F)},
                "down": {"kernel": (L, F, D)},
            },
            "post_attn_norm": {"scale": (L, D)},
            "post_mlp_norm": {"scale": (L, D)},
        },
        "final_norm": {"scale": (D,)},
        "lm_head": {"kernel": (D, V)},
    }
    tied = ModelConfig.tiny(tie_embeddings=True, param_dtype="bfloat16")
    p = jax.jit(init_params, static_argnums=0)(tied, jax.random.key(1))
    assert "lm_head" not in p and "bias" not in p["layers"]["attn"]["q"]
    assert p["embed"]["embedding"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(unembed(tied, p), p["embed"]["embedding"].T)


def _tokens(batch: int, seq: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, (batch, seq)), jnp.int32)


def test_backends_scan_and_remat_agree(params) -> None:
    tokens = _tokens(2, 21)
    base = forward(CFG.replace(attention_backend="reference", scan_layers=False), params, tokens)
    # The full-remat + scan path is covered by the gradient check below.
    for changes in (dict(), dict(scan_layers=False, remat_policy="dots_saveable")):
        np.testing.assert_allclose(
            forward(CFG.replace(**changes), params, tokens), base, atol=2e-5, err_msg=str(changes)
        )

    def loss(cfg):
        return lambda p: jnp.mean(jax.nn.log_softmax(_forward(cfg, p, tokens))[..., 0])

    ref = jax.jit(jax.grad(loss(CFG.replace(attention_backend="reference"))))(params)
    got = jax.jit(jax.grad(loss(CFG.replace(remat_policy="full"))))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got, ref)


def test_hidden_states_times_unembed_is_forward(params) -> None:
    tokens = _tokens(1, 9)
    h = jax.jit(hidden_states, static_argnums=0)(CFG, params, tokens)
    assert h.shape == (1, 9, CFG.hidden_size)
    np.testing.assert_allclose(h @ unembed(CFG, params), forward(CFG, params, tokens), atol=1e-5)


def test_shared_prefix_row_equals_two_separate_rows(params) -> None:
    """[prompt | chosen | rejected] in one row gives the logits of [prompt|chosen] and [prompt|rejected]."""
    p, c, r = 7, 5, 6
    prompt, chosen, rejected = _tokens(1, p, 1), _tokens(1, c, 2), _tokens(1, r, 3)
    row = jnp.concatenate([prompt, chosen, rejected], axis=1)
    positions = jnp.concatenate([jnp.arange(p + c), p + jnp.arange(r)])[None]
    branches = jnp.asarray([[0] * p + [1] * c + [2] * r])
    packed = forward(CFG, params, row, positions=positions, branch_ids=branches)
    with_chosen = forward(CFG, params, jnp.concatenate([prompt, chosen], axis=1))
    with_rejected = forward(CFG, params, jnp.concatenate([prompt, rejected], axis=1))
    np.testing.assert_allclose(packed[:, : p + c], with_chosen, atol=2e-5)
    np.testing.assert_allclose(packed[:, p + c :], with_rejected[:, p:], atol=2e-5)
    # Without branch ids the rejected tokens would see the chosen ones: the test can fail.
    leaky = forward(CFG, params, row, positions=positions)
    assert np.abs(leaky[:, p + c :] - with_rejected[:, p:]).max() > 1e-3


def test_packed_segments_equal_separate_rows(params) -> None:
    a, b = _tokens(1, 6, 4), _tokens(1, 9, 5)
    row = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], axis=1)  # 3 padding tokens (segment 0)
    seg = jnp.asarray([[1] * 6 + [2] * 9 + [0] * 3])
    pos = jnp.asarray([list(range(6)) + list(range(9)) + [0, 1, 2]])
    packed = forward(CFG, params, row, positions=pos, segment_ids=seg)
    np.testing.assert_allclose(packed[:, :6], forward(CFG, params, a), atol=2e-5)
    np.testing.assert_allclose(packed[:, 6:15], forward(CFG, params, b), atol=2e-5)
    assert bool(jnp.isfinite(packed).all())


def test_bfloat16_compute_close_to_float32(params) -> None:
    tokens = _tokens(2, 16)
    ref = forward(CFG, params, tokens)
    got = forward(CFG.replace(dtype="bfloat16"), params, tokens)
    assert got.dtype == jnp.float32
    assert float(jnp.abs(got - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 0.05


def test_glm_partial_interleaved_rope_rotates_only_the_first_dims() -> None:
    from lr_jax.model.rope import apply_rope, inverse_frequencies

    cfg = ModelConfig.tiny(partial_rotary_factor=0.5, rotary_style="interleaved")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 2, 16)), jnp.float32)
    pos = jnp.arange(5)[None]
    out = np.asarray(apply_rope(cfg, x, pos))
    np.testing.assert_array_equal(out[..., 8:], np.asarray(x)[..., 8:])
    inv = inverse_frequencies(cfg).astype(np.float64)  # 4 frequencies for 8 rotated dims
    xn = np.asarray(x, np.float64)
    ang = np.arange(5)[:, None] * inv  # [S, 4]
    for i in range(4):  # pair (2i, 2i+1) rotates by angle pos * inv[i]
        c, s = np.cos(ang[:, i])[None, :, None], np.sin(ang[:, i])[None, :, None]
        np.testing.assert_allclose(out[..., 2 * i], xn[..., 2 * i] * c - xn[..., 2 * i + 1] * s, atol=1e-5)
        np.testing.assert_allclose(
            out[..., 2 * i + 1], xn[..., 2 * i + 1] * c + xn[..., 2 * i] * s, atol=1e-5
        )


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ConfigError, match="num_kv_heads"):
        ModelConfig.tiny(num_kv_heads=3)
    with pytest.raises(ValueError, match="attention_backend"):
        ModelConfig.tiny(attention_backend="flash")
    with pytest.raises(ConfigError, match="remat_policy"):
        ModelConfig.tiny(remat_policy="some")
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict({**ModelConfig.tiny().to_dict(), "hiden_size": 3})
    cfg = ModelConfig.tiny(rope_scaling=RopeScaling(factor=8.0), eos_token_id=(1, 2))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(cfg) == hash(ModelConfig.from_dict(cfg.to_dict()))

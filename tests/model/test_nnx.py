"""The decoder as NNX modules: its state is the project's parameter tree, axis names live on the params, and
LoRA adapters at zero leave the model unchanged and merge into the base weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.errors import ConfigError
from lr_jax.model import (
    AbstractModel,
    Decoder,
    LoRAConfig,
    LoRAParam,
    ModelConfig,
    forward,
    init_params,
    param_logical_axes,
    param_shapes,
)
from lr_jax.model import lora as lora_lib

TOKENS = jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % 256
fwd = jax.jit(forward, static_argnums=0)  # eager op-by-op dispatch is what makes small tests slow


def _shapes(tree):
    return jax.tree.map(lambda x: tuple(x.shape), tree)


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "post_norms": True, "tie_embeddings": True}])
def test_nnx_state_is_the_param_tree_and_forward_is_the_module(kw):
    cfg = ModelConfig.tiny(num_layers=2, **kw)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert _shapes(state) == param_shapes(cfg)
    assert _shapes(init_params(cfg, jax.random.key(0))) == param_shapes(cfg)
    module_logits = nnx.jit(lambda m, t: m.logits(t))(model, TOKENS)
    np.testing.assert_array_equal(np.asarray(module_logits), np.asarray(fwd(cfg, state, TOKENS)))
    # an nnx.State works where the pure dict does
    np.testing.assert_array_equal(np.asarray(fwd(cfg, nnx.state(model, nnx.Param), TOKENS)),
                                  np.asarray(module_logits))


def test_logical_axes_come_from_param_metadata():
    cfg = ModelConfig.tiny(qkv_bias=True)
    axes = param_logical_axes(cfg, param_shapes(cfg))
    assert axes["layers"]["attn"]["q"]["kernel"] == ("layers", "embed", "heads", "head_dim")
    assert axes["layers"]["attn"]["k"]["bias"] == ("layers", "kv_heads", "head_dim")
    assert axes["layers"]["attn"]["o"]["kernel"] == ("layers", "heads", "head_dim", "embed")
    assert axes["layers"]["mlp"]["down"]["kernel"] == ("layers", "mlp", "embed")
    assert axes["embed"]["embedding"] == ("vocab", "embed")
    assert axes["lm_head"]["kernel"] == ("embed", "vocab")
    assert axes["final_norm"]["scale"] == ("norm",)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    assert model.layers.attn.q.kernel.get_metadata("out_sharding") == ("layers", "embed", "heads", "head_dim")


def test_lora_adapters_at_zero_equal_base_and_merge_into_kernels():
    base_cfg = ModelConfig.tiny(qkv_bias=True)
    targets = ("q", "k", "v", "o", "gate", "up", "down")
    cfg = base_cfg.replace(lora=LoRAConfig(rank=4, alpha=8.0, targets=targets))
    base = init_params(base_cfg, jax.random.key(1))
    params = init_params(cfg, jax.random.key(1))
    adapters, rest = lora_lib.partition(AbstractModel.of(cfg), params)
    assert _shapes(rest) == _shapes(base)  # same base weights, whatever the adapters
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), rest, base))
    assert adapters["layers"]["attn"]["q"]["lora_a"].shape == (2, 64, 4)
    assert adapters["layers"]["attn"]["o"]["lora_b"].shape == (2, 4, 64)
    np.testing.assert_array_equal(np.asarray(fwd(cfg, params, TOKENS)),
                                  np.asarray(fwd(base_cfg, base, TOKENS)))
    # adapters are their own variable type
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    _, lora_state, _ = nnx.split(model, LoRAParam, nnx.Param)
    assert _shapes(nnx.to_pure_dict(lora_state)) == _shapes(adapters)
    # trained (non-zero) adapters fold into the kernels: same logits from a plain model
    trained = jax.tree.map(lambda x: x + 0.05, params)
    merged_cfg, merged = lora_lib.merge_adapters(cfg, trained)
    assert merged_cfg.lora is None and _shapes(merged) == _shapes(base)
    np.testing.assert_allclose(np.asarray(fwd(merged_cfg, merged, TOKENS)),
                               np.asarray(fwd(cfg, trained, TOKENS)), atol=2e-5)


@pytest.mark.parametrize("bad,msg", [
    (dict(rank=0), "lora.rank"), (dict(alpha=-1.0), "lora.alpha"), (dict(dropout=1.5), "lora.dropout"),
    (dict(dropout=-0.1), "lora.dropout"), (dict(targets=("q", "lm_head")), "unknown"),
    (dict(targets=()), "non-empty"), (dict(targets=("q", "q")), "duplicates"),
])
def test_lora_config_is_validated(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        ModelConfig.tiny(lora=LoRAConfig(**bad))


def test_lora_config_round_trips():
    cfg = ModelConfig.tiny(lora=LoRAConfig(rank=2, targets=("q", "down")))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "lora": {"rank": 2, "bogus": 1}})


def test_random_params_come_from_each_parameters_own_initialiser():
    """`init_params` reads the initialisers the modules declare (no table by leaf name): unit norm scales,
    zero biases and LoRA B, normal(0.02) matrices, LoRA A normal(1/sqrt(fan_in)); one abstract model per
    config."""
    targets = ("q", "k", "v", "o", "gate", "up", "down")  # the shapes of the test above: its kernels reused
    cfg = ModelConfig.tiny(qkv_bias=True, lora=LoRAConfig(rank=4, alpha=8.0, targets=targets))
    model = AbstractModel.of(cfg)
    assert AbstractModel.of(ModelConfig.from_dict(cfg.to_dict())) is model
    params = init_params(cfg, jax.random.key(0))  # eager: reuses the kernels of the tests above
    flat = {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(x, np.float64)
            for path, x in jax.tree_util.tree_leaves_with_path(params)}
    assert set(flat) == {".".join(p) for p in model.variables}
    for name, x in flat.items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "scale":
            assert (x == 1).all(), name
        elif leaf in ("bias", "lora_b"):
            assert (x == 0).all(), name
        else:
            # hidden 64 = heads 4 x head_dim 16 into every projection but down (intermediate 128)
            std = 0.02 if leaf != "lora_a" else (128 if ".down." in name else 64) ** -0.5
            assert abs(x.mean()) < 4 * std / np.sqrt(x.size) and abs(x.std() / std - 1) < 0.1, name

"""One model config for the Llama, Qwen2 and GLM-4 decoder families.

The three families differ only in switches (qkv bias, tied embeddings, extra post-norms, RoPE layout and
partial rotary), so one frozen dataclass describes all of them. It is hashable, so it can be closed over or
passed as a static argument to `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lr_jax.errors import ConfigError
from lr_jax.model.attention import registry as attention

FAMILIES = ("llama", "qwen2", "glm", "glm4", "chatglm")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable")
ROTARY_STYLES = ("half", "interleaved")
DTYPES = ("float32", "bfloat16", "float16")
# Projections LoRA can adapt: attention q/k/v/o and the SwiGLU MLP's gate/up/down.
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 ("llama3") RoPE frequency scaling, as in transformers' `_compute_llama3_parameters`."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on some projections: ``W x + (alpha / rank) · B(A(x))``.

    A `[in..., rank]` is random, B `[rank, out...]` starts at zero, so a fresh adapter leaves the model
    unchanged. `targets`: names in `LORA_TARGETS`. `dropout`: inverted dropout on the adapters' input in
    training steps (the base path, the reference and eval see none).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> LoRAConfig:
        """Raise ConfigError naming the first bad field; return self."""
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ConfigError(f"ModelConfig.lora.rank must be a positive int, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < float("inf"):
            raise ConfigError(f"ModelConfig.lora.alpha must be a finite number > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelConfig.lora.dropout must be in [0, 1), got {self.dropout!r}")
        targets = tuple(self.targets) if isinstance(self.targets, (list, tuple)) else None
        if not targets:
            raise ConfigError(f"ModelConfig.lora.targets must be a non-empty list of {LORA_TARGETS}, got "
                              f"{self.targets!r}")
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad:
            raise ConfigError(f"ModelConfig.lora.targets: unknown {bad}; choose from {LORA_TARGETS}")
        if len(set(targets)) != len(targets):
            raise ConfigError(f"ModelConfig.lora.targets has duplicates: {list(targets)}")
        return self


@dataclass(frozen=True)
class ModelConfig:
    """Decoder hyper-parameters plus how to run it (dtypes, attention backend, scan/remat).

    Shapes it implies: embeddings `[vocab_size, hidden_size]`, attention `[hidden_size, num_heads, head_dim]`,
    MLP `[hidden_size, intermediate_size]`, `num_layers` stacked along a leading axis.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # Fraction of head_dim that is rotated (GLM: 0.5); the rest passes through unchanged.
    partial_rotary_factor: float = 1.0
    # "half": Llama/Qwen rotate_half (pairs i, i + d/2); "interleaved": GLM pairs (2i, 2i + 1).
    rotary_style: str = "half"
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    # Glm4ForCausalLM: RMSNorm on the attention output and on the MLP output before each residual add.
    post_norms: bool = False
    family: str = "llama"
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_backend: str = attention.DEFAULT_BACKEND  # a name in attention.BACKENDS
    attention_block_size: int = 512
    ring_block_kernel: str = attention.RING_OPTION.default  # read by the ring backend only
    scan_layers: bool = True
    remat_policy: str = "none"
    # LoRA adapters (None: none); see `LoRAConfig`. Training then updates only the adapters.
    lora: LoRAConfig | None = None
    # Free-form provenance (e.g. the HF architecture name); not used by the model.
    source: str = field(default="", compare=False)

    @property
    def rotary_dim(self) -> int:
        """Number of leading head dims that RoPE rotates (even)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def num_groups(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_heads // self.num_kv_heads

    def validate(self) -> ModelConfig:
        """Raise ConfigError naming the first bad field; return self for chaining."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "attention_block_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ConfigError(
                f"ModelConfig.partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}"
            )
        if self.rotary_dim % 2:
            raise ConfigError(
                f"ModelConfig.partial_rotary_factor * head_dim must be even, got {self.rotary_dim}"
            )
        if self.rope_theta <= 0:
            raise ConfigError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}")
        if self.rms_norm_eps <= 0:
            raise ConfigError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        choices = {
            "rotary_style": ROTARY_STYLES,
            "family": FAMILIES,
            "dtype": DTYPES,
            "param_dtype": DTYPES,
            "attention_backend": tuple(attention.BACKENDS),
            "remat_policy": REMAT_POLICIES,
            **{o.field: o.choices for o in attention.OPTIONS},
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        rs = self.rope_scaling
        if rs is not None:
            if not isinstance(rs, RopeScaling):
                raise ConfigError(
                    f"ModelConfig.rope_scaling must be a RopeScaling or None, got {type(rs).__name__}"
                )
            if rs.rope_type != "llama3":
                raise ConfigError(
                    f"ModelConfig.rope_scaling.rope_type {rs.rope_type!r} is not supported (llama3)"
                )
            if rs.factor <= 0 or rs.low_freq_factor <= 0 or rs.high_freq_factor <= rs.low_freq_factor:
                raise ConfigError(f"ModelConfig.rope_scaling has inconsistent factors: {rs}")
        if self.lora is not None:
            if not isinstance(self.lora, LoRAConfig):
                raise ConfigError(
                    f"ModelConfig.lora must be a LoRAConfig or None, got {type(self.lora).__name__}")
            self.lora.validate()
        return self

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); inverse of `from_dict`."""
        out = dataclasses.asdict(self)
        if isinstance(out["eos_token_id"], tuple):
            out["eos_token_id"] = list(out["eos_token_id"])
        if out["lora"] is not None:
            out["lora"]["targets"] = list(out["lora"]["targets"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from `to_dict()` output; unknown keys are an error naming the key."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"ModelConfig: unknown field(s) {unknown}")
        if isinstance(data.get("rope_scaling"), dict):
            data["rope_scaling"] = RopeScaling(**data["rope_scaling"])
        if isinstance(data.get("eos_token_id"), list):
            data["eos_token_id"] = tuple(data["eos_token_id"])
        if isinstance(data.get("lora"), dict):
            lora = dict(data["lora"])
            unknown = sorted(set(lora) - {f.name for f in dataclasses.fields(LoRAConfig)})
            if unknown:
                raise ConfigError(f"ModelConfig.lora: unknown field(s) {unknown}")
            if isinstance(lora.get("targets"), list):
                lora["targets"] = tuple(lora["targets"])
            data["lora"] = LoRAConfig(**lora)
        return cls(**data).validate()

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """A small config for tests: vocab 256, hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16."""
        base: dict[str, Any] = dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            attention_block_size=16,
        )
        base.update(overrides)
        return cls(**base).validate()

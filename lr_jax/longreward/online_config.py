"""``config.grpo``: the options of the online GRPO loop (``config.algorithm = "grpo"``, docs/grpo.md).

One section holds the loop's own options (`OnlineOptions`: iterations, prompts per iteration, the optimizer,
LoRA, the hybrid reward) and the objective's (`lr_jax.training.grpo.GRPOConfig`: clip ε, advantage scaling,
normalisation, KL); every default, bound and help text is written once, in those two dataclasses
(`grpo_fields` makes the ConfigDict's defaults of them). How to sample (G = ``config.sample.num_samples``,
temperature, max_new_tokens, ...) is ``config.sample``, as for DPO; the judge is ``config.score``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lr_jax.errors import ConfigError
from lr_jax.eval.reference import METRICS
from lr_jax.options import defaults, option, validate
from lr_jax.training.config import SCHEDULES
from lr_jax.training.grpo import GRPOConfig


@dataclass(frozen=True)
class OnlineOptions:
    """The online loop's options (the objective's are `GRPOConfig`'s, in the same section)."""

    iterations: int = option(8, ge=1, help="sample → judge → update rounds")
    prompts_per_iteration: int = option(16, ge=1, help="groups per iteration; the training prompts are "
                                                       "taken in file order, cycling")
    steps_per_iteration: int = option(1, ge=1, help="optimizer steps on each iteration's groups (μ); "
                                                    "> 1 re-uses the samples: ratios leave 1, the clip acts")
    lr: float = option(1e-5, gt=0, help="peak learning rate (AdamW)")
    warmup_steps: int = option(0, ge=0, help="linear warmup, in optimizer steps")
    schedule: str = option("constant", choices=SCHEDULES, help="after warmup")
    weight_decay: float = option(0.0, ge=0, help="AdamW weight decay")
    grad_clip: float = option(1.0, ge=0, help="global-norm clip; 0 disables")
    lora_rank: int = option(0, ge=0, help="0 = full fine-tuning; else LoRA adapters of this rank on q, k, v, "
                                          "o (the KL's reference is then the base weights)")
    lora_alpha: float = option(16.0, gt=0, help="LoRA alpha")
    seq_len: int = option(0, ge=0, help="update row length; 0 = each iteration's longest group (the prompt + "
                                        "its G responses) rounded up to 64")
    logprob_chunk_size: int = option(1024, ge=1, help="positions per chunk of the log-prob / entropy pass")
    reference_weight: float = option(0.0, ge=0, le=1, help="QwenLong-L1's hybrid reward: (1 - w) · judge + "
                                                           "w · rule-based score against the prompt's answer "
                                                           "(prompts without one: the judge alone)")
    reference_metric: str = option("match", choices=tuple(METRICS),
                                   help="the rule (lr_jax.eval.reference)")
    seed: int = option(0, ge=0, help="LoRA init / dropout seed (the samples' keys: config.sample.seed)")

    def __post_init__(self) -> None:
        validate(self, ConfigError)


def grpo_fields() -> dict[str, Any]:
    """Field -> default of ``config.grpo``: `OnlineOptions`' and `GRPOConfig`'s fields."""
    return {**defaults(OnlineOptions), **defaults(GRPOConfig)}


def parse(section: Any) -> tuple[OnlineOptions, GRPOConfig]:
    """``config.grpo`` as the two dataclasses, checked; a bad field is one line naming ``config.grpo.X``."""
    raw = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    own = {f.name for f in dataclasses.fields(OnlineOptions)}
    objective = {f.name for f in dataclasses.fields(GRPOConfig)}
    for k in raw:
        if k not in own | objective:
            known = ", ".join(sorted(own | objective))
            raise ConfigError(f"config.grpo.{k}: unknown option (known: {known})")
    try:
        return (OnlineOptions(**{k: v for k, v in raw.items() if k in own}),
                GRPOConfig(**{k: v for k, v in raw.items() if k in objective}))
    except ConfigError as e:  # "lr (--lr) must be ..." -> "config.grpo.lr: must be ..."
        name, _, why = str(e).partition(" ")
        why = why.split(") ", 1)[1] if why.startswith("(--") else why
        raise ConfigError(f"config.grpo.{name}: {why}") from None


def check(cfg: Any) -> None:
    """Everything the grpo stage reads from the loop config, before the first stage runs."""
    parse(cfg.grpo)
    if cfg.sample.num_samples < 2:
        raise ConfigError(f"config.sample.num_samples: GRPO compares a group's answers, so it needs >= 2, "
                          f"got {cfg.sample.num_samples}")

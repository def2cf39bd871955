"""The loop's config: one section per stage, and the checks made before the first stage runs.

The training sections are whole trainer configs (`lr_jax.training.config`), ``config.sample`` holds
`lr_jax.sample.SampleOptions`' decoding fields with their defaults (`decoding_fields`: the sampler's
defaults are the only defaults), ``config.score.args`` / ``config.pairs.args`` are the judge CLIs' own flags
(checked by their own parsers, `judging.check_judge_args`). `settings` flattens what each stage was run with
(its stage fingerprint, `markers.check_settings`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lr_jax.errors import ConfigError

STAGES = ("sft", "sample", "score", "pairs", "dpo", "eval")
ROUND_STAGES = STAGES[1:]  # repeated by --rounds; sft runs once
ALGORITHMS = ("dpo", "grpo")
# config.algorithm = "grpo" (online, `lr_jax.longreward.online`): sft, then sample → score → update repeated
# inside the one grpo stage, then the same held-out eval.
GRPO_STAGES = ("sft", "grpo", "eval")
KNOWN_STAGES = (*STAGES, "grpo")
# lr_jax.sample options the loop sets itself: the model, the files and the names
LOOP_OWNED_SAMPLE = ("model", "prompts", "out", "tokenizer", "model_name", "no_progress")
# Trainer fields that say where and how often, not what is trained: a change does not make a finished
# training stage stale (the loop sets the paths itself).
TRAINING_NOT_RESULTS = (
    "data.path", "data.tokenizer", "train.out_dir", "train.export_hf_dir", "train.init_from",
    "train.checkpoint_dir", "train.async_checkpointing", "train.keep_checkpoints", "train.save_every",
    "train.log_every", "train.tensorboard", "train.plot", "train.progress_bar", "train.peak_flops_per_device",
    "train.distributed", "train.coordinator_address", "train.num_processes", "train.process_id",
)
# Config keys (flattened, prefix match) each stage's result depends on, besides the stages before it.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("demo.",),
    "sft": ("init_from", "tokenizer", "sft."),
    "sample": ("prompts", "sample."),
    # scripted_faults and api_key_file change how the judge is reached, not what it answers
    "score": ("score.base_url", "score.model", "score.scripted", "score.args"),
    "pairs": ("pairs.",),
    "dpo": ("dpo.", "dpo_epochs"),
    "eval": ("eval_prompts", "eval."),
    # every iteration samples and judges in process: the sample and score keys are the grpo stage's own
    "grpo": ("algorithm", "prompts", "sample.", "score.base_url", "score.model", "score.scripted",
             "score.args", "grpo."),
}
NOT_RESULTS = (*(f"{s}.{k}" for s in ("sft", "dpo") for k in TRAINING_NOT_RESULTS), "sample.mesh",
               "eval.baseline_dir")


def as_dict(x: Any) -> dict[str, Any]:
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def default_config(model: Any = None) -> Any:
    """The loop's ConfigDict: one section per stage; the training sections are whole trainer configs."""
    import ml_collections

    from lr_jax.sample import decoding_fields
    from lr_jax.training.config import default_config_dict

    c = ml_collections.ConfigDict()
    c.run_dir = "runs/longreward"
    c.stages = ""  # "" = all, else a comma list of STAGES (same as --stages)
    c.rounds = 1  # >1: sample → eval again from the previous round's DPO policy (iterative DPO)
    c.prompts = ""  # training prompts JSONL (id, context, query[, answer]); "" = the demo data
    c.eval_prompts = ""  # held-out prompts JSONL; `answer` enables exact-answer accuracy
    c.tokenizer = ""  # local tokenizer dir; "" = the policy's (demo: run_dir/data/tokenizer)
    c.init_from = ""  # an HF dir to start from instead of the sft stage (sft is then skipped)
    # True: a finished (or started) stage whose settings differ from this run's is re-run, with every stage
    # after it (their old outputs are moved to run_dir/replaced/); False: such a run is refused.
    c.rerun_changed = False
    # > 0: DPO trains this many passes over the pairs (dpo.train.steps = ceil(epochs x pairs / batch_size)),
    # since the pair count is known only after `pairs`: a policy already right on most prompts yields few
    # pairs, and a fixed step count then overfits them. 0: dpo.train.steps as set.
    c.dpo_epochs = 0.0
    c.demo = ml_collections.ConfigDict(dict(
        seed=0, sft_examples=2048, train_prompts=128, eval_prompts=64, context_tokens=48, num_facts=1,
        num_values=4, answer_style="value"))
    c.sft = default_config_dict(model)
    c.sft.dpo.objective = "sft"
    c.dpo = default_config_dict(model)
    c.sample = ml_collections.ConfigDict(decoding_fields())
    # Held-out decoding: overrides of config.sample (greedy, one answer per prompt). answer_metric: how a
    # held-out answer is checked against its prompt's `answer` (lr_jax.eval.reference.METRICS). baseline_dir:
    # where round 1's "before" answers go ("" = run_dir/eval/before); runs that start from the same policy
    # with the same held-out prompts and decoding (e.g. one per seed) may share one and decode it once
    # (resumed like any sample file; not by two runs at the same moment). Each run judges them itself.
    c.eval = ml_collections.ConfigDict(dict(sample=ml_collections.ConfigDict(
        dict(temperature=0.0, num_samples=1)), answer_metric="exact", baseline_dir=""))
    c.score = ml_collections.ConfigDict(dict(
        base_url="", model="", scripted=False, scripted_faults="{}",
        api_key_file="", args=""))
    # judge.score / judge.pairs flags as one string each (e.g. "--concurrency 32"), checked by their own
    # parsers: the judge's defaults stay the only defaults, and lr_jax never imports judge to learn them.
    c.pairs = ml_collections.ConfigDict(dict(args=""))
    # "grpo": online GRPO with the judge as the reward instead of sample → score → pairs → dpo
    # (docs/grpo.md); its options (config.grpo.*) are `lr_jax.longreward.online_config.grpo_fields()`.
    c.algorithm = "dpo"
    from lr_jax.longreward.online_config import grpo_fields

    c.grpo = ml_collections.ConfigDict(grpo_fields())
    return c


@dataclass(frozen=True)
class Paths:
    """Where round `r`'s stages live."""

    run_dir: Path
    round: int

    def stage(self, name: str) -> Path:
        if name in ("sft", "data") or self.round == 1:
            return self.run_dir / name
        return self.run_dir / f"round_{self.round}" / name


def sample_options(options: dict[str, Any], *, model: str, prompts: str, out: str, tokenizer: str | None,
                   name: str, where: str) -> Any:
    """`lr_jax.sample.SampleOptions` from a loop section plus the paths the loop owns; checked on creation."""
    from lr_jax.sample import SampleError, SampleOptions, decoding_fields

    known = decoding_fields()
    for k in options:
        if k not in known:
            raise ConfigError(f"config.{where}.{k}: not an lr_jax.sample option (known: {', '.join(known)})")
    try:
        return SampleOptions(model=model, prompts=prompts, out=out, tokenizer=tokenizer or None,
                             model_name=name, **options)
    except SampleError as e:  # "--top-p 0.0: must be ..." -> "config.sample.top_p: --top-p 0.0: must be ..."
        flag = str(e).split(" ", 1)[0].lstrip("-").replace("-", "_")
        raise ConfigError(f"config.{where}.{flag}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"config.{where}: {e}") from None


def training_config(section: Any, where: str, **fields: Any) -> Any:
    """A trainer `Config` from a loop section plus the paths the loop owns (`fields`: 'train.out_dir': …)."""
    from lr_jax.training.config import from_config_dict

    raw = copy.deepcopy(as_dict(section))
    for dotted, value in fields.items():
        sec, key = dotted.split(".")
        raw.setdefault(sec, {})[key] = value
    try:
        return from_config_dict(raw)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.", f"config.{where}.", 1)) from None


def parse_stages(spec: str) -> tuple[str, ...]:
    """"" -> every stage; "score,pairs" -> those, in pipeline order; unknown names are an error."""
    if not spec:
        return KNOWN_STAGES
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in KNOWN_STAGES]
    if bad:
        raise ConfigError(f"--stages: unknown stage(s) {bad}; stages are {', '.join(STAGES)} "
                          f"(config.algorithm='grpo': {', '.join(GRPO_STAGES)})")
    return tuple(s for s in KNOWN_STAGES if s in names)


def check_scripted_faults(text: str) -> dict[str, Any]:
    """``config.score.scripted_faults``: a JSON object (the scripted server's fault settings)."""
    try:
        faults = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"config.score.scripted_faults: not JSON ({e.msg} at char {e.pos}): "
                          f"{text!r}") from None
    if not isinstance(faults, dict):
        raise ConfigError(f"config.score.scripted_faults: must be a JSON object, got {text!r}")
    return faults


def check_input_file(path: str, field: str) -> None:
    """A prompts file must exist before anything runs (gs:// objects are checked by their reader)."""
    if "://" in path:
        return
    if not os.path.exists(path):
        raise ConfigError(f"config.{field} {path}: does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"config.{field} {path}: is a directory, not a JSONL file")


def check_run_dir(run_dir: Path) -> None:
    """The run directory: local, and a directory (created here); a file in the way is one line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"config.run_dir {run_dir}: exists and is not a directory") from None
    except NotADirectoryError:
        raise ConfigError(f"config.run_dir {run_dir}: a parent of it is a file, not a directory") from None
    except OSError as e:
        raise ConfigError(f"config.run_dir {run_dir}: cannot create it ({e.strerror or e})") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"config.run_dir {run_dir}: not writable")


def dpo_steps(epochs: float, pairs: int, batch: int) -> int:
    """``config.dpo_epochs`` passes over `pairs` in batches of `batch`."""
    return max(1, math.ceil(epochs * pairs / batch))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings(cfg: Any, stage: str) -> dict[str, Any]:
    """What `stage` was run with: the config keys its result depends on and those of every stage before
    it (``{"sample.temperature": 1.0, ...}``), JSON-normalised so a stored copy compares equal."""
    flat = _flatten(as_dict(cfg))
    order = ("data", *(GRPO_STAGES if flat.get("algorithm") == "grpo" else STAGES))
    keys = [p for s in order[:order.index(stage) + 1] for p in STAGE_KEYS[s]]
    picked = {k: v for k, v in flat.items()
              if any(k == p or (p.endswith(".") and k.startswith(p)) for p in keys)
              and not k.startswith(NOT_RESULTS)}
    return json.loads(json.dumps(picked, sort_keys=True, default=str))

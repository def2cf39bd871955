"""The typed training config: one frozen schema, built from an `ml_collections.ConfigDict` and validated.

`configs/*.py` files define `get_config() -> ConfigDict` with the sections `model`, `mesh`, `data`, `dpo`,
`optim`, `train`. `from_config_dict` turns that into `Config` (frozen dataclasses), rejecting unknown keys and
wrong types with a message that names the field (``config.optim.lr: expected float, got str``), and
`Config.validate_for_devices` checks that the mesh fits the devices and the batch/sequence split before
anything is compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from lr_jax.data.pipeline import OBJECTIVES
from lr_jax.errors import ConfigError
from lr_jax.model import attention
from lr_jax.model.config import ModelConfig, RopeScaling
from lr_jax.options import check_number, option
from lr_jax.parallel.mesh import MESH_AXES
from lr_jax.training.losses import LOSS_TYPES, SFT_NORMALIZATIONS

REFERENCE_MODES = ("precomputed", "model")
NAN_POLICIES = ("stop", "skip_step")
SCHEDULES = ("cosine", "linear", "constant")
# Names other trainers use for our keys, for "did you mean" hints.
ALIASES = {"learning_rate": "lr", "max_steps": "steps", "num_steps": "steps", "num_train_steps": "steps",
           "warmup": "warmup_steps", "clip": "grad_clip", "max_grad_norm": "grad_clip",
           "gradient_accumulation_steps": "grad_accum", "batch": "batch_size", "max_length": "seq_len",
           "max_seq_len": "seq_len", "rpo_alpha": "sft_weight", "ref_model": "reference"}


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape. One axis may be -1: it takes all devices the others leave."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    sequence: int = 1

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Axis sizes with -1 filled in; raises ConfigError when they cannot multiply to `num_devices`."""
        sizes = {a: getattr(self, a) for a in MESH_AXES}
        free = [a for a, s in sizes.items() if s == -1]
        for a, s in sizes.items():
            if s != -1 and s < 1:
                raise ConfigError(f"config.mesh.{a}: must be >= 1 or -1, got {s}")
        if len(free) > 1:
            raise ConfigError(f"config.mesh: at most one axis may be -1, got {free}")
        fixed = 1
        for s in sizes.values():
            if s != -1:
                fixed *= s
        if free:
            if num_devices % fixed:
                raise ConfigError(
                    f"config.mesh: fixed axes multiply to {fixed}, which does not divide {num_devices} "
                    "devices")
            sizes[free[0]] = num_devices // fixed
        elif fixed != num_devices:
            raise ConfigError(
                f"config.mesh: data*fsdp*tensor*sequence = {fixed} but there are {num_devices} devices "
                f"({sizes})")
        return sizes


@dataclass(frozen=True)
class DataConfig:
    """Where pairs come from and how they are packed into `[batch, seq_len]` rows."""

    path: str = option("", help='preference records dir (DPO/SFT) or prompts .jsonl (SFT); "" = synthetic '
                       "demo data")
    mixture: str = option("", help='several sources instead of path: "PATH=WEIGHT,PATH=WEIGHT" (records '
                          "dirs, or prompts .jsonl for SFT); a weight is the share of training rows from "
                          "that source")
    eval_path: str = option("", help='held-out set; "" = the eval_fraction split of path (by prompt id)')
    eval_fraction: float = option(0.0, ge=0, lt=1, help='used when eval_path == "" and path != ""')
    tokenizer: str = option("", help='tokenizer directory; "" = the tiny demo tokenizer, built into '
                            "<out_dir>/tokenizer")
    seq_len: int = option(256, gt=0, help="tokens per row")
    batch_size: int = option(8, gt=0, help="rows per optimizer step (global, all devices; before gradient "
                             "accumulation)")
    pairs_per_row: int = option(1, gt=0, help="P: most pairs packed into one row (short pairs share a row "
                                "via segment ids)")
    max_prompt_len: int = option(0, ge=0, help="0 = whatever the row leaves; longer prompts lose the middle "
                                 "of the context")
    max_response_len: int = option(0, ge=0, help="0 = no limit; longer responses are skipped (counted in the "
                                   "data stats)")
    shuffle: bool = option(True, help="shuffle the training examples (seeded)")
    seed: int = option(0, help="data order seed")
    # Synthetic "find the fact" demo data (lr_jax.data.demo), used when path == "":
    synthetic_pairs: int = option(512, ge=0, help="demo: training pairs")
    synthetic_eval_pairs: int = option(64, ge=0, help="demo: held-out pairs")
    synthetic_context_len: int = option(80, ge=0, help="demo: document length in demo-tokenizer tokens")
    synthetic_num_facts: int = option(4, gt=0, help="demo: facts per document")
    synthetic_distractor: str = option("absent", choices=("absent", "in_context"),
                                       help='demo: "absent" or "in_context" (harder)')


@dataclass(frozen=True)
class DPOConfig:
    """Objective and loss options (LongReward: sigmoid DPO, β = 0.15, SFT weight 0.1)."""

    objective: str = option("dpo", choices=OBJECTIVES, help='"dpo" or "sft" (SFT trains only on branch-1 '
                            "tokens)")
    beta: float = option(0.15, gt=0, help="DPO temperature β")
    loss_type: str = option("sigmoid", choices=LOSS_TYPES, help="DPO loss variant")
    label_smoothing: float = option(0.0, ge=0, lt=0.5, help="conservative DPO (sigmoid loss only)")
    sft_weight: float = option(0.1, ge=0, help="weight of the chosen-response NLL added to the DPO loss")
    sft_normalization: str = option("token", choices=SFT_NORMALIZATIONS,
                                    help='"token": mean NLL over all chosen tokens of the batch; "sequence": '
                                    "mean of per-response mean NLLs")
    reference: str = option("precomputed", choices=REFERENCE_MODES,
                            help='"precomputed": initial policy run once over the data before training; '
                            '"model": frozen copy, in-step')
    logprob_chunk_size: int = option(512, gt=0, help="positions per chunk when gathering target log-probs")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup then decay, global-norm clipping and gradient accumulation."""

    lr: float = option(1e-6, gt=0, help="peak learning rate")
    warmup_steps: int = option(0, ge=0, help="linear warmup steps")
    schedule: str = option("cosine", choices=SCHEDULES, help="after warmup: cosine or linear decay to lr * "
                           "end_lr_ratio, or constant")
    end_lr_ratio: float = option(0.0, ge=0, le=1, help="final lr / peak lr")
    weight_decay: float = option(0.0, ge=0, help="AdamW weight decay")
    b1: float = option(0.9, ge=0, lt=1, help="AdamW β1")
    b2: float = option(0.95, ge=0, lt=1, help="AdamW β2")
    eps: float = option(1e-8, ge=0, help="AdamW ε")
    grad_clip: float = option(1.0, ge=0, help="global-norm clip; 0 disables")
    # Checked by hand (Config.validate): > 0, or -1.
    grad_accum: int = option(1, help="micro-batches per optimizer step; -1 = one row per (data x fsdp) shard "
                             "per micro-batch, i.e. batch_size / (data * fsdp) on whatever mesh the run gets")


@dataclass(frozen=True)
class TrainConfig:
    """Loop, checkpointing, logging and export."""

    steps: int = option(100, gt=0, help="optimizer steps")
    seed: int = option(0, help="init / dropout seed")
    out_dir: str = option("runs/default", help="local dir: metrics.jsonl, TensorBoard, plot, checkpoints")
    checkpoint_dir: str = option("", help='"" = <out_dir>/checkpoints; may be gs://bucket/path (orbax writes '
                                 "it directly)")
    init_from: str = option("", help='"" = random init; else an HF checkpoint dir, an lr_jax dir or a '
                            ".gguf file (read by lr_jax.convert.load)")
    log_every: int = option(1, gt=0, help="log metrics every N steps")
    eval_every: int = option(0, ge=0, help="0 = only at the end")
    eval_batches: int = option(0, ge=0, help="0 = the whole held-out set")
    save_every: int = option(50, ge=0, help="checkpoint interval in steps; 0 = only at the end / on SIGTERM")
    keep_checkpoints: int = option(3, gt=0, help="checkpoints kept")
    async_checkpointing: bool = option(True, help="save in the background")
    export_hf_dir: str = option("", help='"" = no export; else write HF safetensors there at the end')
    tensorboard: bool = option(True, help="write TensorBoard events")
    progress_bar: bool = option(True, help="tqdm bar on stderr")
    plot: bool = option(True, help="curves.png at the end")
    # A step whose loss or gradient norm is not finite never updates the weights.
    nan_policy: str = option("stop", choices=NAN_POLICIES,
                             help='"stop": end the run with one error naming the step, saving nothing after '
                             'the last good checkpoint; "skip_step": skip it, go on')
    peak_flops_per_device: float = option(0.0, ge=0, help="0 = look up by device kind; used for MFU")
    distributed: bool = option(False, help="multi-host (TPU pod): call jax.distributed.initialize() before "
                               "anything else")
    # With distributed=True: "" / 0 / -1 = auto-detect (TPU pods, SLURM, ...). Set all three to run several
    # processes by hand, e.g. on one machine: coordinator_address="localhost:8476", num_processes=2.
    coordinator_address: str = option("", help='"" = auto-detect')
    num_processes: int = option(0, ge=0, help="0 = auto-detect")
    process_id: int = option(-1, ge=-1, help="-1 = auto-detect")


@dataclass(frozen=True)
class Config:
    """The whole run; every field typed and validated."""

    model: ModelConfig
    mesh: MeshConfig = field(default_factory=MeshConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        """Device-independent checks; raises ConfigError naming the field."""
        d, p, o, t = self.data, self.dpo, self.optim, self.train
        for section in dataclasses.fields(self):  # bounds, choices, finiteness: from the fields' metadata
            _check_fields(section.name, getattr(self, section.name))
        # Cross-field and special rules:
        if p.label_smoothing and p.loss_type in ("ipo", "hinge"):
            raise ConfigError(
                f"config.dpo.label_smoothing: not used by loss_type {p.loss_type!r}; set it to 0")
        if d.mixture:
            parse_mixture(d.mixture)
            if d.path:
                raise ConfigError("config.data.mixture: set either data.path or data.mixture, not both")
            if d.eval_fraction:
                raise ConfigError("config.data.eval_fraction: not used with data.mixture (use eval_path)")
        if o.grad_accum != -1 and o.grad_accum <= 0:
            raise ConfigError(f"config.optim.grad_accum: must be > 0 or -1, got {o.grad_accum}")
        if o.grad_accum > 0 and d.batch_size % o.grad_accum:
            raise ConfigError(
                f"config.optim.grad_accum: {o.grad_accum} does not divide data.batch_size {d.batch_size}")
        if d.eval_path and not (d.path or d.mixture):
            raise ConfigError("config.data.eval_path: read only with data.path or data.mixture; the "
                              "synthetic demo data has its own held-out set (data.synthetic_eval_pairs)")
        if not t.out_dir:
            raise ConfigError("config.train.out_dir: must be set")
        if "://" in t.out_dir:
            raise ConfigError(f"config.train.out_dir: must be a local directory, got {t.out_dir!r}; put "
                              "checkpoints on GCS with config.train.checkpoint_dir=gs://...")
        # transformers and safetensors read and write local files only: copy checkpoints to the VM's disk.
        for name, value in (("train.init_from", t.init_from), ("train.export_hf_dir", t.export_hf_dir),
                            ("data.tokenizer", d.tokenizer)):
            if "://" in value:
                raise ConfigError(f"config.{name}: must be a local directory, got {value!r}; copy it with "
                                  "`gcloud storage cp -r` first")
        try:
            self.model.validate()
        except ConfigError as e:
            raise ConfigError(f"config.model: {e}") from None
        return self

    def mesh_shape(self, num_devices: int) -> dict[str, int]:
        """Resolved mesh axis sizes after checking they fit `num_devices` and the batch/sequence/heads."""
        sizes = self.mesh.resolve(num_devices)
        d, o, m = self.data, self.optim, self.model
        batch_shards = sizes["data"] * sizes["fsdp"]
        if o.grad_accum == -1 and d.batch_size % batch_shards:
            raise ConfigError(
                f"config.optim.grad_accum: -1 (one row per batch shard) needs data.batch_size "
                f"{d.batch_size} divisible by mesh data*fsdp = {batch_shards}")
        accum = self.grad_accum_for(sizes)
        micro = d.batch_size // accum
        if micro % batch_shards:
            raise ConfigError(
                f"config.data.batch_size: {d.batch_size} rows / grad_accum {accum} = {micro} per "
                f"micro-batch, not divisible by mesh data*fsdp = {batch_shards}")
        if d.seq_len % sizes["sequence"]:
            raise ConfigError(
                f"config.data.seq_len: {d.seq_len} is not divisible by mesh.sequence = {sizes['sequence']}")
        if m.num_kv_heads % sizes["tensor"] and m.num_heads % sizes["tensor"]:
            raise ConfigError(
                f"config.mesh.tensor: {sizes['tensor']} divides neither model.num_heads {m.num_heads} "
                f"nor num_kv_heads {m.num_kv_heads}")
        problem = attention.config_problem(m, d.seq_len, sizes["sequence"])
        if problem is not None:
            field_name, msg = problem
            where = "data.seq_len" if field_name == "seq_len" else f"model.{field_name}"
            raise ConfigError(f"config.{where}: {msg}")
        return sizes

    def grad_accum_for(self, sizes: dict[str, int]) -> int:
        """Micro-batches per step on a mesh of resolved `sizes`: `optim.grad_accum`, or for -1 as many as
        leave one row per (data x fsdp) shard (the least activation memory a mesh allows)."""
        if self.optim.grad_accum == -1:
            return max(1, self.data.batch_size // (sizes["data"] * sizes["fsdp"]))
        return self.optim.grad_accum

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested dict (written beside checkpoints)."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["model"] = self.model.to_dict()
        return out


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """"a=0.7,b=0.3" -> [("a", 0.7), ("b", 0.3)]; a path may not contain ',' and its weight must be > 0."""
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        path, sep, w = part.rpartition("=")
        if not sep or not path:
            raise ConfigError(f"config.data.mixture: {part!r} is not PATH=WEIGHT")
        try:
            weight = float(w)
        except ValueError:
            raise ConfigError(f"config.data.mixture: {part!r}: weight {w!r} is not a number") from None
        if not weight > 0 or weight == float("inf"):
            raise ConfigError(f"config.data.mixture: {part!r}: weight must be > 0")
        out.append((path, weight))
    if not out:
        raise ConfigError("config.data.mixture: no sources")
    if len({p for p, _ in out}) != len(out):
        raise ConfigError(f"config.data.mixture: a source is named twice in {spec!r}")
    return out


def _check_fields(section: str, obj: Any) -> None:
    """The checks each field's `option(...)` metadata declares (bounds, choices) and, for every float field
    (also of sections declared elsewhere, such as the model's), finiteness: NaN passes every `<= 0` test."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, kind, meta = getattr(obj, f.name), hints[f.name], f.metadata
        try:
            if kind is float or (kind is int and "cli" in meta):  # "cli": declared with option()
                check_number(value, kind, meta)
            elif meta.get("choices") and value not in meta["choices"]:
                raise ValueError(f"must be one of {tuple(meta['choices'])}, got {value!r}")
        except ValueError as e:
            raise ConfigError(f"config.{section}.{f.name}: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# ConfigDict / dict  ->  typed dataclasses


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "tuple"
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check `value` against annotation `tp` (int/float/bool/str, Optional, tuple, dataclass)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(path, value, arg)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config.{path}: expected {_type_name(tp)}, got {type(value).__name__}")
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if hasattr(value, "to_dict"):  # ConfigDict
            value = value.to_dict()
        if isinstance(value, dict):
            return _build(tp, value, path)
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            elem = args[0] if args else Any
            return tuple(_coerce(f"{path}[{i}]", v, elem) for i, v in enumerate(value))
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN passes every `<= 0` check below: refuse it by name here
                raise ConfigError(f"config.{path}: must be a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"config.{path}: expected {_type_name(tp)}, got {type(value).__name__}")


def _build(cls: type, values: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            alias = ALIASES.get(key)
            close = [alias] if alias in known else difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"config.{path}.{key}: unknown key{hint}")
        kwargs[key] = _coerce(f"{path}.{key}", value, hints[key])
    missing = [f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config.{path}.{missing[0]}: required but not set")
    return cls(**kwargs)


def from_config_dict(cfg: Any) -> Config:
    """Turn a ConfigDict (or plain nested dict) into a validated `Config`."""
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in sections:
            close = difflib.get_close_matches(key, list(sections), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; sections: {', '.join(sections)}"
            raise ConfigError(f"config.{key}: unknown section{hint}")
    if "model" not in raw:
        raise ConfigError("config.model: required but not set")
    model_raw = dict(raw["model"])
    rs = model_raw.get("rope_scaling")
    if rs is not None and not isinstance(rs, RopeScaling):
        model_raw["rope_scaling"] = _coerce("model.rope_scaling", dict(rs), RopeScaling)
    if isinstance(model_raw.get("eos_token_id"), list):
        model_raw["eos_token_id"] = tuple(model_raw["eos_token_id"])
    kwargs: dict[str, Any] = {"model": _build(ModelConfig, model_raw, "model")}
    for name, typ in (("mesh", MeshConfig), ("data", DataConfig), ("dpo", DPOConfig), ("optim", OptimConfig),
                      ("train", TrainConfig)):
        if name in raw:
            kwargs[name] = _build(typ, dict(raw[name]), name)
    return Config(**kwargs).validate()


def default_config_dict(model: ModelConfig | None = None) -> Any:
    """A ConfigDict with every section at its defaults (configs/*.py start from this and override)."""
    import ml_collections

    model = model or ModelConfig.tiny()
    mdict = model.to_dict()
    mdict.pop("source", None)
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(mdict)
    for name, typ in (("mesh", MeshConfig), ("data", DataConfig), ("dpo", DPOConfig), ("optim", OptimConfig),
                      ("train", TrainConfig)):
        setattr(c, name, ml_collections.ConfigDict(dataclasses.asdict(typ())))
    return c

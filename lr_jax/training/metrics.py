"""Metric sinks (DIR/metrics.jsonl, TensorBoard) and throughput accounting (tokens/s, model FLOPs, MFU)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from lr_jax.model.config import ModelConfig

# Dense bf16 peak FLOP/s per device (chip), from vendor spec sheets. Matched by substring of
# `jax.devices()[0].device_kind`, most specific first.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
)
# Usable HBM per TPU chip (bytes): what XLA's TPU compiler allows a program (its CompileTimeHbmOom limit,
# e.g. "exceeds available HBM (95.73G)" on v5p), the figure `lr_jax.plan` checks a step against.
# Matched like PEAK_FLOPS.
HBM_BYTES: tuple[tuple[str, float], ...] = (
    ("TPU v5 lite", 15.75 * 2**30),
    ("TPU v5e", 15.75 * 2**30),
    ("TPU v5p", 95.74 * 2**30),
    ("TPU v5", 95.74 * 2**30),
)
# Measured fp32 matmul peak of the whole 2-core CPU host used for CPU test mode (NOTES.md); simulated
# devices share it, so each gets an equal slice.
CPU_HOST_PEAK_FLOPS = 69e9


def peak_flops_per_device(device_kind: str, platform: str, num_local_devices: int) -> float:
    """Peak FLOP/s of one device; 0.0 when unknown (MFU is then not reported)."""
    if platform == "cpu":
        return CPU_HOST_PEAK_FLOPS / max(1, num_local_devices)
    for key, value in PEAK_FLOPS:
        if key.lower() in device_kind.lower():
            return value
    return 0.0


def hbm_bytes_per_device(device_kind: str) -> float:
    """Usable HBM of one chip of `device_kind` (`HBM_BYTES`); 0.0 when unknown."""
    for key, value in HBM_BYTES:
        if key.lower() in device_kind.lower():
            return value
    return 0.0


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (everything but the embedding lookup)."""
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    attn = D * cfg.head_dim * (cfg.num_heads * 2 + cfg.num_kv_heads * 2)
    mlp = 3 * D * F
    return L * (attn + mlp) + D * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, context_len: float, *, forward_only_passes: int = 0) -> float:
    """Model FLOPs per trained token: 6·N for the matmuls plus causal attention scores/values.

    Attention: `QK^T` and `PV` cost 2·2·H·hd per (query, key) pair forward; a causal query sees on average
    `context_len / 2` keys; backward is 2× forward, so 3 × 4·H·hd·L·ctx/2 = 6·H·hd·L·ctx. Remat recompute is
    not counted (MFU convention). `forward_only_passes` adds forward passes without backward (a frozen
    reference model in the step).
    """
    n = matmul_params(cfg)
    attn_fwd = 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context_len  # 4·H·hd·L·ctx/2
    return 3 * (2 * n + attn_fwd) + forward_only_passes * (2 * n + attn_fwd)


class MetricsWriter:
    """Appends one JSON object per logged step to DIR/metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: str, *, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None) -> None:
        """resume_step: the checkpoint step a run resumes from; rows logged after it (by the run that died
        before saving again) are dropped, so every step appears once."""
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            if resume_step is not None and os.path.exists(self.path):
                _truncate_after(self.path, resume_step)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            row[k] = _jsonable(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def _truncate_after(path: str, step: int) -> None:
    """Keep the rows of `path` with `step <= step` (a torn last line goes too); atomic replace."""
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn line a kill left
            if isinstance(row, dict) and int(row.get("step", 0)) <= step:
                kept.append(json.dumps(row) + "\n")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, (bool, int)) and not isinstance(v, float):
        return v
    return f if math.isfinite(f) else None


def read_metrics(path: str) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl; a resumed run re-logs steps after its checkpoint, the last row wins."""
    rows: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def plot_curves(metrics_path: str, out_png: str) -> None:
    """PNG of loss, reward accuracy / margin (train and eval) and throughput against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    panels = [("loss", ["loss", "eval_loss"]),
              ("reward accuracy", ["reward_accuracy", "eval_reward_accuracy"]),
              ("reward margin", ["reward_margin", "eval_reward_margin"]),
              ("tokens/s", ["tokens_per_sec"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o" if key.startswith("eval") else None,
                        markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)

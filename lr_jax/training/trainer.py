"""The training loop behind `python -m lr_jax.train` (lr_jax/train.py): SFT or DPO.

Order of work: typed config → mesh → data → the latest checkpoint restored into the abstract state, or (a new
run) the initial params (random or a converted HF checkpoint) → reference log-probs (precomputed pass, cached
beside the checkpoints; a resumed run places the initial params only if the cache lacks batches) → jitted
steps with explicit shardings → periodic eval / logging / checkpoints → final save, plot, optional HF export.

Bad input (config, data, checkpoint) exits non-zero with one line naming the file / record / field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lr_jax.data.batch import REF_FIELDS, Batch
from lr_jax.errors import ConfigError, LrJaxError
from lr_jax.model import AbstractModel, ModelConfig, attention, init, lora
from lr_jax.parallel.mesh import make_mesh
from lr_jax.training import data as train_data
from lr_jax.training import program
from lr_jax.training.checkpoint import Checkpointer
from lr_jax.training.config import Config
from lr_jax.training.metrics import (
    MetricsWriter,
    hbm_bytes_per_device,
    peak_flops_per_device,
    plot_curves,
    train_flops_per_token,
)
from lr_jax.training.preemption import preemption_handler
from lr_jax.training.reference_cache import ReferenceCache
from lr_jax.training.step import make_optimizer, trainable

# Runtime knobs that a config may set on top of a converted checkpoint's architecture.
RUNTIME_MODEL_FIELDS = ("dtype", "param_dtype", "attention_backend", "attention_block_size",
                        "ring_block_kernel", "scan_layers", "remat_policy")


class NonFiniteError(LrJaxError):
    """A step's loss or gradient norm was NaN / inf (with `train.nan_policy = "stop"`)."""


def writable_dir(field: str, path: str) -> None:
    """Create local directory `path` and prove it takes a file, or raise one ConfigError naming `field`
    (before any work: a bad out_dir must not surface after the reference pass or the last step)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"config.{field}: cannot write to {path!r}: {e.strerror or e}") from None


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"[lr_jax.train] {msg}", file=sys.stderr, flush=True)


class Trainer:
    """Holds the mesh, shardings and jitted functions for one run; `run()` is the loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        cfg.mesh_shape(jax.device_count())  # fail fast, before loading a checkpoint
        self.model_cfg, init_host = self._model_and_init()
        self.cfg = cfg = dataclasses.replace(cfg, model=self.model_cfg)
        sizes = cfg.mesh_shape(jax.device_count())
        self.mesh: Mesh = make_mesh(**sizes)
        self.out_dir = cfg.train.out_dir
        self.is_main = jax.process_index() == 0
        if self.is_main:
            writable_dir("train.out_dir", self.out_dir)
            t = cfg.train
            if t.checkpoint_dir and "://" not in t.checkpoint_dir:
                writable_dir("train.checkpoint_dir", t.checkpoint_dir)
            if t.export_hf_dir:
                writable_dir("train.export_hf_dir", t.export_hf_dir)
        ring_shards = attention.sequence_order_shards(cfg.model, sizes["sequence"])
        self.optimizer, self.schedule = make_optimizer(cfg.optim, cfg.train.steps)
        # The jitted step / eval / reference functions and their shardings: the same builder lr_jax.plan
        # compiles for a TPU topology, so the plan is of exactly this program.
        self.program = prog = program.build(cfg, self.mesh, self.optimizer)
        self._row_sharding, self._pair_sharding = prog.row_sh, prog.pair_sh
        self.param_sh, self.state_sh = prog.param_sh, prog.state_sh
        self._batch_sh, self._ref_batch_sh = prog.batch_sh, prog.ref_batch_sh
        self._step, self._eval, self._ref = prog.step, prog.eval, prog.ref
        self.use_ref_model, self.use_ref_cache = prog.use_ref_model, prog.use_ref_cache
        rows = train_data.host_rows(self._row_sharding, (cfg.data.batch_size, cfg.data.seq_len))
        self.data = train_data.build(cfg, jax.process_index(), jax.process_count(), ring_shards, rows=rows)
        # Built now, on every host: with per-row eval sets, agreeing on the batch count is a collective.
        self.data.eval_batches()
        # The initial weights (random, or the converted checkpoint still in host memory) go to the devices
        # only when this run needs them: a new run's state, or the frozen reference of a resumed one.
        self._init_host = init_host
        self.state: dict[str, Any] | None = None
        self.ref_params: Any = None

    # ---------------------------------------------------------------- setup
    def _model_and_init(self) -> tuple[ModelConfig, Any]:
        cfg = self.cfg
        if not cfg.train.init_from:
            return cfg.model, None
        from lr_jax import convert

        src = cfg.train.init_from
        if not (os.path.isdir(src) or (os.path.isfile(src) and src.lower().endswith(".gguf"))):
            what = "a file" if os.path.exists(src) else "missing"
            raise ConfigError(f"config.train.init_from: {src} is {what}; want a Hugging Face checkpoint "
                              "directory (config.json + *.safetensors), an lr_jax dir or a .gguf file")
        runtime = {k: getattr(cfg.model, k) for k in RUNTIME_MODEL_FIELDS if k != "param_dtype"}
        # An HF dir, an lr_jax dir or a .gguf file (lr_jax.convert.load dispatches; a GGUF is converted once).
        model_cfg, params = convert.load(cfg.train.init_from, param_dtype=cfg.model.param_dtype, **runtime)
        _log(f"initialised from {cfg.train.init_from} ({model_cfg.family}, {model_cfg.num_layers} layers)")
        if cfg.model.lora is not None:  # fresh adapters (B = 0) on the converted base weights
            model_cfg = model_cfg.replace(lora=cfg.model.lora)
            params = lora.with_adapters(AbstractModel.of(model_cfg), params, jax.random.key(cfg.train.seed))
        return model_cfg, params

    def _initial_params(self) -> Any:
        """The initial params on the mesh (random init, or the converted checkpoint), placed completely
        before anything else is dispatched."""
        m, model = self.model_cfg, self.program.model
        with jax.set_mesh(self.mesh):
            if self._init_host is None:
                key = jax.random.key(self.cfg.train.seed)
                params = jax.jit(lambda: init(model, key), out_shardings=self.param_sh)()
            else:
                dtype = jnp.dtype(m.param_dtype)
                params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x).astype(dtype), s),
                                      self._init_host, self.param_sh)
        return jax.block_until_ready(params)

    def _build_state(self) -> None:
        """A new run's state: the initial params, fresh optimizer state, step 0."""
        m, model = self.model_cfg, self.program.model
        params = self._initial_params()
        with jax.set_mesh(self.mesh):
            opt_init = lambda p: self.optimizer.init(trainable(model, p))  # LoRA: the adapters' state only
            opt_state = jax.jit(opt_init, out_shardings=self.state_sh["opt_state"])(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), NamedSharding(self.mesh, PartitionSpec()))
        self.state = jax.block_until_ready({"params": params, "opt_state": opt_state, "step": step})
        if m.lora is None:
            # Frozen reference = the initial params, as a copy: the step donates (frees) the state's
            # buffers. (Not `jit(copy)`: jit forwards an unchanged input buffer to its output.)
            copy = lambda x, s: jax.device_put(x, s, may_alias=False)
            self.ref_params = jax.block_until_ready(jax.tree.map(copy, params, self.param_sh))

    def _reference_params(self) -> Any:
        """The frozen reference's params, built on first use.

        LoRA: the state's own params (the reference is the base weights with adapters off, and training
        never changes them: no copy; used only before the first step donates the state). Otherwise the
        initial params: a new run copied them in `_build_state`; a resumed run builds them here, only if
        the reference pass has batches to compute or the step takes the reference (`dpo.reference=model`).
        """
        if self.model_cfg.lora is not None:
            return self.state["params"]
        if self.ref_params is None:
            self.ref_params = self._initial_params()
        return self.ref_params

    # ---------------------------------------------------------------- data → device
    @staticmethod
    def _put(shardings: Batch, batch: dict[str, np.ndarray]) -> Batch:
        """This host's rows of `batch` as global arrays laid out like `shardings` (its fields only)."""
        # The step is compiled ahead of time for the batch contract's dtypes: int32 ids, float32 log-probs.
        dtype = lambda k: np.float32 if k in REF_FIELDS else np.int32
        return Batch.of({k: jax.make_array_from_process_local_data(sh, np.asarray(batch[k], dtype(k)))
                         for k, sh in shardings.present().items()})

    def _to_device(self, batch: dict[str, np.ndarray]) -> Batch:
        return self._put(self._batch_sh, batch)

    def _with_ref(self, batch: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
        if not self.use_ref_cache:
            return batch
        chosen, rejected = self.ref_cache.lookup(batch, where)
        return {**batch, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}

    def _ref_compute(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        dev = self._put(self._ref_batch_sh, batch)
        with jax.set_mesh(self.mesh):
            c, r = self._ref(self._reference_params(), dev)  # replicated [global batch, P]
        # This host's rows are wherever the batch sharding put its devices (not necessarily one contiguous
        # block): the rows, in the order, that make_array_from_process_local_data read `batch` as.
        rows = train_data.host_rows(self._row_sharding, dev.tokens.shape)
        return np.asarray(c)[rows], np.asarray(r)[rows]

    def _prepare_reference(self, resumed: bool) -> None:
        """Reference log-probs for every batch this run will see, cached beside the checkpoints.

        The cache sits in the checkpoint directory (local or gs://), so a run resumed on a fresh machine finds
        it. Batches it lacks (the cache was lost, or the run now trains for more steps) are computed from
        `_reference_params()`: the initial params (never a restored state), so a recomputed row equals the one
        an uninterrupted run cached.
        """
        if not self.use_ref_cache:
            return
        from lr_jax.training.reference_cache import cache_path

        P, steps = self.cfg.data.pairs_per_row, self.cfg.train.steps
        path = cache_path(self.ckpt_dir, jax.process_index())
        start = int(jax.device_get(self.state["step"])) if resumed else 0  # this run needs start..steps-1
        source, cache = path, ReferenceCache.load(path, P)
        if cache is None:  # runs made before the cache moved beside the checkpoints kept it in out_dir
            source = os.path.join(self.out_dir, os.path.basename(path))
            cache = ReferenceCache.load(source, P)
        if cache is not None:
            _log(f"loaded {len(cache)} reference rows from {source}")
        need = cache is None or not cache.covers(start, steps)
        multihost = jax.process_count() > 1
        if multihost:  # the pass runs a collective step: every host takes it, or none
            from jax.experimental import multihost_utils

            need = bool(np.any(multihost_utils.process_allgather(np.int32(need))))
        if not need:
            self.ref_cache = cache
            return
        why = "new run" if not resumed else "cache missing" if cache is None else "cache incomplete"
        t0 = time.time()
        self.ref_cache = cache = cache if cache is not None else ReferenceCache(P)
        it = self.data.train_iterator()
        batches = (b for i, b in enumerate(next(it) for _ in range(steps)) if i >= start)
        computed = cache.fill(batches, self._ref_compute, only_missing=not multihost)
        computed += cache.fill(self.data.eval_batches(), self._ref_compute, only_missing=not multihost)
        cache.mark_covered(start, steps)
        cache.save(path)
        _log(f"reference pass ({why}, initial params, batches {start}..{steps - 1}): {computed} batches "
             f"computed, {len(cache)} unique rows, {time.time() - t0:.1f}s -> {path}")

    # ---------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, float]:
        batches = self.data.eval_batches()
        if self.cfg.train.eval_batches:
            batches = batches[: self.cfg.train.eval_batches]
        if not batches:
            return {}
        sums: dict[str, float] = {}
        weight_total = 0.0
        with jax.set_mesh(self.mesh):
            for i, b in enumerate(batches):
                dev = self._to_device(self._with_ref(b, f"eval batch {i}"))
                args = (self.state["params"], dev) + ((self.ref_params,) if self.use_ref_model else ())
                _, m = jax.device_get(self._eval(*args))
                w = float(m.get("pairs", m["tokens"]))
                weight_total += w
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * w
        out = {f"eval_{k}": v / max(weight_total, 1.0) for k, v in sums.items()
               if k not in ("pairs", "tokens")}
        out["eval_pairs" if "pairs" in sums else "eval_tokens"] = weight_total
        return out

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        ckpt_dir = t.checkpoint_dir or os.path.join(self.out_dir, "checkpoints")
        if jax.process_count() > 1 and "://" not in ckpt_dir:
            # orbax saves collectively: each host writes its shards into the one directory all must see.
            _log(f"note: checkpoints go to local path {ckpt_dir!r} with {jax.process_count()} processes; it "
                 "must be one shared filesystem for all hosts (on a TPU pod use train.checkpoint_dir=gs://...)")
        ckpt = Checkpointer(ckpt_dir, keep=t.keep_checkpoints,
                            async_save=t.async_checkpointing)
        self.ckpt_dir = ckpt.directory  # the reference cache lives beside the checkpoints
        it = self.data.train_iterator()
        start = 0
        latest = ckpt.latest_step()
        if latest is None:
            self._build_state()
        else:
            # Restored into the abstract state: the initial weights are not placed on the devices first
            # (nothing of the new-run setup is in flight while orbax restores).
            try:
                self.state, data_state = ckpt.restore(latest, self.program.abstract_step_args()[0])
            except BaseException:
                ckpt.close()  # stop orbax's threads before the error line ends the process
                raise
            it.set_state(data_state)
            start = int(jax.device_get(self.state["step"]))
            _log(f"resumed from checkpoint step {latest}")
        self._prepare_reference(resumed=latest is not None)
        if self.use_ref_model:
            self.ref_params = self._reference_params()
        else:
            self.ref_params = None  # free the frozen copy: the cache replaces it
        self._init_host = None  # nor is the host copy of an init_from checkpoint needed any more
        if self.is_main:
            with open(os.path.join(self.out_dir, "config.json"), "w") as f:
                json.dump(self.cfg.to_dict(), f, indent=1)

        step_fn = self._compile_step()
        # Rows past the resumed step were logged by the run that died before its next checkpoint.
        writer = MetricsWriter(self.out_dir, tensorboard=t.tensorboard, enabled=self.is_main,
                               resume_step=start if latest is not None else None)
        flag = preemption_handler().install()  # several hosts: all stop at the same step
        dev0 = jax.devices()[0]
        peak = t.peak_flops_per_device or peak_flops_per_device(dev0.device_kind, dev0.platform,
                                                                jax.local_device_count())
        ctx = cfg.data.seq_len / cfg.data.pairs_per_row
        ref_passes = 1 if self.program.in_step_reference else 0
        flops_per_token = train_flops_per_token(self.model_cfg, ctx, forward_only_passes=ref_passes)
        bar = _progress(start, t.steps, enabled=t.progress_bar and self.is_main)
        last: dict[str, Any] = {}
        tokens_acc, t_mark, mark_step = 0.0, None, start
        step = start
        unchecked: list[tuple[int, dict[str, jax.Array]]] = []  # steps whose finiteness is not read yet
        last_saved = latest
        try:
            while step < t.steps:
                host_batch = self._with_ref(next(it), f"train step {step}")
                tokens_acc += float(np.sum(host_batch["segment_ids"] > 0)) * jax.process_count()
                with jax.set_mesh(self.mesh):
                    dev = self._to_device(host_batch)
                    args = (self.state, dev) + ((self.ref_params,) if self.use_ref_model else ())
                    self.state, metrics = step_fn(*args)
                step += 1
                unchecked.append((step, metrics))
                if step == start + 1:
                    self._log_measured_memory()
                is_eval = bool(t.eval_every and step % t.eval_every == 0) or step == t.steps
                if step % t.log_every == 0 or is_eval or step == start + 1:
                    self._check_finite(unchecked, last_saved, ckpt.directory)
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}  # blocks: timing is real
                    now = time.time()
                    row: dict[str, Any] = {"loss": m["loss"], "lr": float(self.schedule(step - 1))}
                    row.update({k: v for k, v in m.items() if k not in ("loss", "tokens")})
                    row["tokens_per_sec"] = row["step_time_s"] = row["mfu"] = None
                    if t_mark is not None and step > mark_step:  # the first step (compilation) is not timed
                        dt = now - t_mark
                        row["tokens_per_sec"] = tokens_acc / dt
                        row["step_time_s"] = dt / (step - mark_step)
                        if peak:
                            row["mfu"] = row["tokens_per_sec"] * flops_per_token / (peak * jax.device_count())
                    if is_eval:
                        row.update(self.evaluate())
                        now = time.time()  # eval time is not training throughput
                    t_mark, mark_step, tokens_acc = now, step, 0.0
                    writer.write(step, row)
                    last = {"step": step, **row}
                    bar.update(step, row)
                preempted = flag.should_stop(step)  # every host, every step (a cross-host agreement)
                save_now = (t.save_every and step % t.save_every == 0) or step == t.steps or preempted
                if save_now:
                    self._check_finite(unchecked, last_saved, ckpt.directory)  # never save past a bad step
                    ckpt.save(step, self.state, it.get_state(), force=True)
                    last_saved = step
                if preempted:
                    _log(f"SIGTERM: saved checkpoint at step {step}; exiting")
                    ckpt.wait()
                    break
        finally:
            bar.close()
            writer.close()
            ckpt.close()
            flag.uninstall()
        if step == t.steps:
            self._finish()
        return last

    def _check_finite(self, unchecked: list[tuple[int, dict[str, jax.Array]]], last_saved: int | None,
                      ckpt_dir: str) -> None:
        """Read the finiteness flags of the steps run since the last check (they are done by now) and apply
        `train.nan_policy`. Checked lazily, at log and save steps, so the loop keeps a step in flight."""
        for step, m in unchecked:
            if not float(m["nonfinite"]):
                continue
            loss, norm = float(m["loss"]), float(m["grad_norm"])
            if self.cfg.train.nan_policy == "skip_step":
                _log(f"step {step}: loss {loss} / grad norm {norm} not finite: update skipped "
                     "(train.nan_policy=skip_step)")
                continue
            saved = f"step {last_saved} in {ckpt_dir}" if last_saved is not None else "none was saved"
            raise NonFiniteError(
                f"step {step}: loss {loss}, grad norm {norm} are not finite; stopped without saving this "
                f"state (last checkpoint: {saved}). Lower optim.lr, check the data, or set "
                "train.nan_policy=skip_step")
        unchecked.clear()

    def _compile_step(self) -> Any:
        """The train step compiled once, ahead of time, from the abstract arguments `lr_jax.plan` compiles;
        its `memory_analysis()` is the plan's per-chip table for this run (logged; no second compile)."""
        from lr_jax.training import plan

        compiled = self.program.lower_step().compile()
        try:
            args = self.program.abstract_step_args()
            parts = {"parameters": plan.bytes_per_chip(args[0]["params"]),
                     "optimizer state": plan.bytes_per_chip(args[0]["opt_state"]),
                     "batch": plan.bytes_per_chip(args[1])}
            rows, total = plan.memory_rows(compiled.memory_analysis(), parts)
        except Exception as e:  # some backends have no memory analysis: never stop a run for a log line
            _log(f"plan: no memory analysis for this backend ({type(e).__name__})")
            return compiled
        kind = jax.devices()[0].device_kind
        hbm = hbm_bytes_per_device(kind)
        cells = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in rows)
        of = f" of {hbm / 2**30:.2f} GiB HBM" if hbm else ""
        _log(f"plan per device ({kind}, compiled step, GiB): {cells}; total {total / 2**30:.2f}{of}")
        self.planned_bytes = total
        return compiled

    def _log_measured_memory(self) -> None:
        """After the first step: the device's measured peak beside the plan's total (TPU/GPU report it)."""
        stats = jax.local_devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        if peak is not None:
            planned = getattr(self, "planned_bytes", float("nan"))
            _log(f"measured on device 0 after step 1: peak {peak / 2**30:.2f} GiB in use "
                 f"(plan: {planned / 2**30:.2f} GiB)")

    def _finish(self) -> None:
        t = self.cfg.train
        metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        if self.is_main and t.plot and os.path.exists(metrics_path):
            plot_curves(metrics_path, os.path.join(self.out_dir, "curves.png"))
        if t.export_hf_dir:
            from jax.experimental import multihost_utils

            from lr_jax import convert

            host = multihost_utils.process_allgather(self.state["params"], tiled=True)
            if self.is_main:
                convert.to_hf(self.model_cfg, jax.tree.map(np.asarray, host), t.export_hf_dir)
                _log(f"exported HF checkpoint to {t.export_hf_dir}")


class _progress:
    """tqdm bar showing step, loss, reward accuracy, tokens/s and MFU (no-op when disabled)."""

    def __init__(self, start: int, total: int, *, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)
        self._pos = start

    def update(self, step: int, row: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._pos)
        self._pos = step
        post = {"loss": f"{row['loss']:.4f}"}
        if "reward_accuracy" in row:
            post["acc"] = f"{row['reward_accuracy']:.2f}"
        if row.get("tokens_per_sec"):
            post["tok/s"] = f"{row['tokens_per_sec']:.0f}"
        if row.get("mfu") is not None:
            post["mfu"] = f"{100 * row['mfu']:.1f}%"
        if "eval_reward_accuracy" in row:
            post["eval_acc"] = f"{row['eval_reward_accuracy']:.2f}"
        self._bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def start_distributed(t: Any) -> None:
    """Join the multi-host job of `train.distributed` (before any device is used), once per process.

    The one call of `jax.distributed.initialize` (`lr_jax.train` and the loop's stages both come through
    `run`). Unset fields are auto-detection (TPU pods, SLURM, ...)."""
    from jax._src import distributed  # no public "already initialised?" query (jax 0.10.2)

    if not t.distributed or distributed.global_state.client is not None:
        return
    try:
        jax.distributed.initialize(coordinator_address=t.coordinator_address or None,
                                   num_processes=t.num_processes or None,
                                   process_id=t.process_id if t.process_id >= 0 else None)
    except (ValueError, TypeError, RuntimeError) as e:  # nothing detected / a field missing / no peer
        raise ConfigError(f"config.train.distributed: jax.distributed.initialize failed (coordinator_address="
                          f"{t.coordinator_address!r}, num_processes={t.num_processes}, process_id="
                          f"{t.process_id}): {e}") from None


def run(cfg: Config) -> dict[str, Any]:
    """Train with a validated config (joining the multi-host job first if `train.distributed`); returns the
    last logged metrics row."""
    start_distributed(cfg.train)
    return Trainer(cfg).run()

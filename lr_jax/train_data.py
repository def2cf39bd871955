"""The trainer's view of `lr_jax.data`: one object with a resumable train iterator and the held-out batches.

With `data.path == ""` the synthetic "find the fact" demo pairs (`lr_jax.data.demo`) are generated in memory
and the tiny demo tokenizer is built into `<out_dir>/tokenizer` (CPU test mode needs no files at all).

Host-count independence. Row `j` of every global training batch comes from its own stream: the examples
`j, j + B, j + 2B, ...` (B = `data.batch_size`), shuffled per epoch with `(seed, epoch, j)` and packed into
one row per step. A host runs only the streams of the rows its devices hold under the batch sharding
(`host_rows`; any device order, rows need not be contiguous), so the global batch — and the training run —
is the same rows whether 1 or 64 hosts make it. Each host reads all files but keeps (and tokenizes) only its
rows' examples. The iterator state is one `(epoch, cursor)` per row; `get_state()` gathers all rows'
states across hosts (a collective), so the checkpoint, which process 0 writes, resumes on any host count.
Eval batches are small: every host builds the same global eval batches and keeps its rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from lr_jax import sharding
from lr_jax.config import Config, ConfigError
from lr_jax.data import demo, sources
from lr_jax.data.errors import DataError
from lr_jax.data.pipeline import DataPipeline, packing_config_from, read_examples
from lr_jax.data.tokenization import ChatTokenizer
from lr_jax.model.attention.layout import to_ring_order
from lr_jax.train_step import PAIR_KEYS, TOKEN_KEYS

__all__ = ["PAIR_KEYS", "TOKEN_KEYS", "TrainData", "build", "host_rows"]

STATE_VERSION = 2  # one pipeline state per global batch row
CACHE_MAX_TOKENS = 50_000_000  # tokenization cache per host, split over its streams


def host_rows(batch_sharding: jax.sharding.Sharding, shape: Sequence[int],
              process_index: int | None = None) -> np.ndarray:
    """Sorted global row indices (dim 0 of `shape`) on the devices of process `process_index` (default: this).

    This is the order `jax.make_array_from_process_local_data` expects a host's rows in.
    """
    p = jax.process_index() if process_index is None else process_index
    rows: set[int] = set()
    for dev, idx in batch_sharding.devices_indices_map(tuple(shape)).items():
        if dev.process_index == p:
            rows.update(range(*idx[0].indices(shape[0])))
    return np.asarray(sorted(rows), np.int64)


def _default_rows(cfg: Config, process_index: int, process_count: int) -> np.ndarray:
    """This host's rows under the trainer's mesh (`lr_jax.sharding.make_mesh` over all devices)."""
    B = cfg.data.batch_size
    if process_count == 1:
        return np.arange(B)
    mesh = sharding.make_mesh(**cfg.mesh_shape(jax.device_count()))
    return host_rows(sharding.batch_sharding(mesh), (B, cfg.data.seq_len), process_index)


class TrainData:
    """Train streams (endless, `get_state`/`set_state`) plus cached eval batches (this host's rows)."""

    def __init__(self, streams: Sequence[DataPipeline], rows: Sequence[int], batch_size: int,
                 eval_pipe: DataPipeline | None, tokenizer: ChatTokenizer, ring_shards: int = 1,
                 process_count: int = 1) -> None:
        self._streams = list(streams)
        self.rows = np.asarray(rows, np.int64)  # global batch rows of this host, one stream each
        self.batch_size = batch_size
        self._ring_shards = ring_shards
        self._process_count = process_count
        self._initial_states = [s.get_state() for s in self._streams]  # (epoch 0, cursor 0, empty stats)
        self._eval = eval_pipe
        self.tokenizer = tokenizer
        self._eval_batches: list[dict[str, np.ndarray]] | None = None

    def train_iterator(self) -> _Iterator:
        """A fresh iterator from the start of the data (the reference pass and the loop each take one)."""
        return _Iterator(self, list(self._initial_states))

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        if self._eval is None:
            return []
        if self._eval_batches is None:
            self._eval_batches = [_complete({k: v[self.rows] for k, v in b.items()}, self._ring_shards)
                                  for b in self._eval.iterate_once()]
        return self._eval_batches


class _Iterator:
    """Steps this host's streams together; each starts at (epoch 0, cursor 0), owns its position."""

    def __init__(self, data: TrainData, states: list[dict[str, Any]]) -> None:
        self._data = data
        self._states = states
        for pipe, st in zip(data._streams, states, strict=True):
            pipe.set_state(st)

    def __iter__(self) -> _Iterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = []
        for i, pipe in enumerate(self._data._streams):
            if pipe.get_state() != self._states[i]:  # another iterator moved the shared pipeline
                pipe.set_state(self._states[i])
            parts.append(next(pipe))  # one row
            self._states[i] = pipe.get_state()
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return _complete(batch, self._data._ring_shards)

    def get_state(self) -> dict[str, Any]:
        """All rows' states (JSON). With several processes this is a collective: call it on every host."""
        mine = {str(int(j)): st for j, st in zip(self._data.rows, self._states, strict=True)}
        rows = mine
        if self._data._process_count > 1:
            rows = {}
            for part in _allgather_json(mine):
                rows.update(part)
        return {"version": STATE_VERSION, "batch_size": self._data.batch_size, "rows": rows}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `get_state()` output, saved by a run with the same data and batch size."""
        if state.get("version") != STATE_VERSION or state.get("batch_size") != self._data.batch_size:
            raise DataError(f"cannot resume: saved data state (version {state.get('version')}, batch_size "
                            f"{state.get('batch_size')}) does not match this run (version {STATE_VERSION}, "
                            f"batch_size {self._data.batch_size})")
        for i, (j, pipe) in enumerate(zip(self._data.rows, self._data._streams, strict=True)):
            saved = state.get("rows", {}).get(str(int(j)))
            if saved is None:
                raise DataError(f"cannot resume: saved data state has no entry for batch row {int(j)}")
            pipe.set_state(saved)
            self._states[i] = pipe.get_state()


def _allgather_json(obj: Any) -> list[Any]:
    """`obj` of every process (JSON-serialisable), in process order; a collective."""
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.asarray([raw.size], np.int32))))
    buf = np.zeros(size, np.uint8)
    buf[: raw.size] = raw
    gathered = np.asarray(multihost_utils.process_allgather(buf))  # [processes, size]
    return [json.loads(bytes(row).rstrip(b"\0")) for row in gathered]  # JSON text has no NUL bytes


def _complete(batch: dict[str, np.ndarray], ring_shards: int = 1) -> dict[str, np.ndarray]:
    """Only the arrays the step uses, int32; `[batch, seq]` ones in zig-zag order when `ring_shards > 1`.

    Targets are already computed, and the losses sum per (segment, branch), so the permutation changes only
    which device holds which token (load balance for causal ring attention), not the result.
    """
    out = {k: np.asarray(batch[k], np.int32) for k in TOKEN_KEYS}
    if ring_shards > 1:
        out = to_ring_order(out, ring_shards)
    out["pair_valid"] = np.asarray(batch["pair_valid"], np.int32)
    return out


def _tokenizer(cfg: Config) -> ChatTokenizer:
    path = cfg.data.tokenizer
    if not path:
        path = os.path.join(cfg.train.out_dir, "tokenizer")
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            demo.build_tiny_tokenizer(path)
    tok = ChatTokenizer.from_dir(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"config.model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tok.vocab_size} tokens ({path})")
    return tok


def build(cfg: Config, process_index: int = 0, process_count: int = 1, ring_shards: int = 1, *,
          rows: Sequence[int] | None = None) -> TrainData:
    """Build this host's train streams and eval batches from `cfg.data`.

    ring_shards: size of the mesh's sequence axis when attention is `ring` (rows are laid out in its zig-zag
    token order); 1 = natural order. rows: this host's global batch rows (`host_rows` of the trainer's batch
    sharding); default: derived from the mesh that `lr_jax.sharding.make_mesh` builds for this config.
    """
    d, objective = cfg.data, cfg.dpo.objective
    B = d.batch_size
    tok = _tokenizer(cfg)
    packing = packing_config_from(d, tok.pad_id)
    rows = _default_rows(cfg, process_index, process_count) if rows is None else np.asarray(rows, np.int64)
    if not d.path:
        kw = dict(context_tokens=d.synthetic_context_len, num_facts=d.synthetic_num_facts,
                  distractor=d.synthetic_distractor)
        train_recs = demo.make_synthetic_pairs(d.synthetic_pairs, d.seed, id_prefix="demo-train", **kw)
        eval_recs = demo.make_synthetic_pairs(d.synthetic_eval_pairs, d.seed, id_prefix="demo-eval", **kw)
        train_ex = sources.examples_from_pairs(train_recs, source="synthetic-train", objective=objective)
        eval_ex = sources.examples_from_pairs(eval_recs, source="synthetic-eval", objective=objective)
        name, eval_name = "synthetic-train", "synthetic-eval"
    else:
        read = dict(objective=objective)
        if d.eval_path:
            train_ex = read_examples(d.path, split="all", **read)
            eval_ex = read_examples(d.eval_path, split="all", **read)
            name, eval_name = f"{d.path} [all]", f"{d.eval_path} [all]"
        else:
            train_ex = read_examples(d.path, split="train", eval_fraction=d.eval_fraction, **read)
            eval_ex = (read_examples(d.path, split="eval", eval_fraction=d.eval_fraction, **read)
                       if d.eval_fraction > 0 else [])
            name, eval_name = f"{d.path} [train]", f"{d.path} [eval]"
    if len(train_ex) < B:
        raise DataError(f"{name}: {len(train_ex)} training examples cannot fill data.batch_size = {B} rows "
                        "(each row of the global batch draws from its own 1/batch_size of the examples)")
    cache = CACHE_MAX_TOKENS // max(len(rows), 1)
    # Stream j: examples j, j+B, ...; shard_index=j/shard_count=B gives it its own shuffle and global ids.
    streams = [DataPipeline(train_ex[j::B], tok, packing, batch_size=1, seed=d.seed, shuffle=d.shuffle,
                            shard_index=int(j), shard_count=B, name=f"{name} row {j}", cache_max_tokens=cache)
               for j in rows]
    ev = (DataPipeline(eval_ex, tok, packing, batch_size=B, shuffle=False, name=eval_name) if eval_ex
          else None)
    return TrainData(streams, rows, B, ev, tok, ring_shards, process_count)

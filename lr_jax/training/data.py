"""The trainer's view of `lr_jax.data`: one object with a resumable train iterator and the held-out batches.

With `data.path == ""` the synthetic "find the fact" demo pairs (`lr_jax.data.demo`) are generated in memory
and the tiny demo tokenizer is built into `<out_dir>/tokenizer` (CPU test mode needs no files at all).

Host-count independence. Row `j` of every global training batch comes from its own stream, shuffled per
epoch with `(seed, epoch, j)` and packed into one row per step. For a preference-record directory, stream `j`
is the training examples whose global record index `r` (the writer's input order, before the train/eval
split) has `r ≡ j (mod B)` (B = `data.batch_size`), in `r` order; for synthetic data and a prompts JSONL
file it is examples `j, j + B, ...` of the training examples. A host runs only the streams of the rows its
devices hold under the batch sharding (`host_rows`; any device order, rows need not be contiguous), so the
global batch — and the training run — is the same rows whether 1 or 64 hosts make it.

Each host reads only its shard: `judge.pairs` deals record `r` to file `r mod F`, so row `j` needs files
`(j + kB) mod F` — `F / B` files when F is a multiple of B, the one file `j mod F` when F divides B — and a
host opens (downloads, for gs://) the union over its rows (`lr_jax.io.records.files_for_residues`). A layout
that makes a host read every file is logged once with the `--num-shards` that avoids it. Synthetic data,
a prompts JSONL file and a separate `data.eval_path` (small) are read whole by every host.

Mixtures (`data.mixture = "PATH=WEIGHT,PATH=WEIGHT"`, e.g. judged long pairs plus an imported short-context
set): each source gets its own row-j stream, built exactly as above (so host sharding is per source, as for a
single `data.path`), and row j's k-th row comes from the source picked by `mixture_pick(seed, j, k)` with
probability proportional to its weight: a weight is the share of training rows (and so of compute), and short
pairs share their rows through the packing (`data.pairs_per_row`). The pick depends only on (seed, row, k),
so the mixture is the same on any host count and resumes exactly (the row state holds k and every source's
state). Held-out batches come from `data.eval_path` only.

The iterator state is one `(epoch, cursor)` per row; `get_state()` gathers all rows' states across hosts
(a collective), so the checkpoint, which process 0 writes, resumes on any host count. Eval: with
`data.eval_fraction` on records, eval row `j` holds the held-out examples with `r ≡ j (mod B)`, packed in
`r` order; eval batch `k` row `j` is its `k`-th packed row, empty (ignored by the loss) once it runs out,
and the number of eval batches is the maximum over rows (agreed across hosts: a collective). Otherwise
every host builds the same global eval batches and keeps its rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lr_jax.data import demo, sources
from lr_jax.data.batch import TOKEN_FIELDS
from lr_jax.data.errors import DataError
from lr_jax.data.packing import PackingConfig, stack_rows
from lr_jax.data.pipeline import DataPipeline, packing_config_from, read_examples
from lr_jax.data.tokenization import ChatTokenizer
from lr_jax.model.attention.layout import to_ring_order
from lr_jax.training.config import Config, ConfigError, parse_mixture

__all__ = ["TrainData", "build", "host_rows"]

ITERATOR_STATE_VERSION = 3  # the train iterator's state: one pipeline state per global batch row; record
# streams by global record index (each row's own layout is lr_jax.data.pipeline.STATE_VERSION)
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


log = logging.getLogger("lr_jax.data")


class TrainData:
    """Train streams (endless, `get_state`/`set_state`) plus cached eval batches (this host's rows)."""

    def __init__(self, streams: Sequence[DataPipeline], rows: Sequence[int], batch_size: int,
                 eval_pipe: DataPipeline | None, tokenizer: ChatTokenizer, ring_shards: int = 1,
                 process_count: int = 1, *, eval_rows: Mapping[int, DataPipeline | None] | None = None,
                 packing: PackingConfig | None = None, files_read: Sequence[str] = ()) -> None:
        """eval_pipe: global eval batches (every host builds all, keeps its rows); or eval_rows: one
        pipeline per row of this host (None = no held-out examples in that row), with `packing`."""
        self._streams = list(streams)
        self.rows = np.asarray(rows, np.int64)  # global batch rows of this host, one stream each
        self.batch_size = batch_size
        self._ring_shards = ring_shards
        self._process_count = process_count
        self._initial_states = [s.get_state() for s in self._streams]  # (epoch 0, cursor 0, empty stats)
        self._eval = eval_pipe
        self._eval_rows = None if eval_rows is None else {int(j): eval_rows[int(j)] for j in self.rows}
        self._packing = packing
        self._eval_row_batches: dict[int, list[dict[str, np.ndarray]]] | None = None
        self.tokenizer = tokenizer
        self.files_read = list(files_read)  # record shard files this host opened
        self._eval_batches: list[dict[str, np.ndarray]] | None = None

    def train_iterator(self) -> _Iterator:
        """A fresh iterator from the start of the data (the reference pass and the loop each take one)."""
        return _Iterator(self, list(self._initial_states))

    def eval_row_counts(self) -> dict[int, int]:
        """Packed eval rows per batch row of this host (per-row eval only; else {})."""
        if self._eval_rows is None:
            return {}
        if self._eval_row_batches is None:
            self._eval_row_batches = {j: list(p.iterate_once()) if p is not None else []
                                      for j, p in self._eval_rows.items()}
        return {j: len(b) for j, b in self._eval_row_batches.items()}

    def eval_batches(self, row_counts: Mapping[int, int] | None = None) -> list[dict[str, np.ndarray]]:
        """This host's rows of the eval batches (built once, then cached).

        Per-row eval needs every row's count to agree on the number of batches: `row_counts` (all B rows'
        `eval_row_counts()`, merged) or, by default, an all-gather across processes — a collective: every
        host must make the first call.
        """
        if self._eval_batches is not None:
            return self._eval_batches
        if self._eval_rows is not None:
            self._eval_batches = self._per_row_eval_batches(row_counts)
        elif self._eval is not None:
            self._eval_batches = [_complete({k: v[self.rows] for k, v in b.items()}, self._ring_shards)
                                  for b in self._eval.iterate_once()]
        else:
            self._eval_batches = []
        return self._eval_batches

    def _per_row_eval_batches(self, row_counts: Mapping[int, int] | None) -> list[dict[str, np.ndarray]]:
        local = self.eval_row_counts()
        if row_counts is None:
            row_counts = dict(local)
            if self._process_count > 1:
                parts = _allgather_json({str(j): c for j, c in local.items()})
                row_counts = {int(j): int(c) for part in parts for j, c in part.items()}
        missing = sorted(set(range(self.batch_size)) - {int(j) for j in row_counts})
        if missing:
            raise DataError(f"eval: no held-out row counts for batch rows {missing} (every host must build "
                            "its eval batches together)")
        num = max(row_counts.values(), default=0)
        assert self._eval_row_batches is not None and self._packing is not None
        empty = stack_rows([], 1, self._packing)  # pair_valid 0, segment 0: contributes nothing to the loss
        out = []
        for k in range(num):
            parts = [b[k] if k < len(b) else empty
                     for b in (self._eval_row_batches[int(j)] for j in self.rows)]
            out.append(_complete({key: np.concatenate([p[key] for p in parts]) for key in parts[0]},
                                 self._ring_shards))
        return out


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
        return {"version": ITERATOR_STATE_VERSION, "batch_size": self._data.batch_size, "rows": rows}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `get_state()` output, saved by a run with the same data and batch size."""
        version = ITERATOR_STATE_VERSION
        if state.get("version") != version or state.get("batch_size") != self._data.batch_size:
            raise DataError(f"cannot resume: saved data state (version {state.get('version')}, batch_size "
                            f"{state.get('batch_size')}) does not match this run (version {version}, "
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
    out = {k: np.asarray(batch[k], np.int32) for k in TOKEN_FIELDS}
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
    token order); 1 = natural order. rows: this host's global batch rows, `host_rows` of the trainer's batch
    sharding (required with several processes; default: all rows).
    """
    d, objective = cfg.data, cfg.dpo.objective
    B = d.batch_size
    if rows is None:
        if process_count > 1:
            raise ValueError("train_data.build: pass rows= (host_rows of the batch sharding) with several "
                             "processes")
        rows = range(B)
    rows = np.asarray(sorted({int(j) for j in rows}), np.int64)
    if not len(rows) or rows[0] < 0 or rows[-1] >= B:
        raise ValueError(f"train_data.build: rows {rows.tolist()} must be a non-empty subset of 0..{B - 1}")
    for field_name, path in (("data.path", d.path), ("data.eval_path", d.eval_path)):
        if path and "://" not in path and not os.path.exists(path):
            raise DataError(f"config.{field_name}: {path} does not exist")
    tok = _tokenizer(cfg)
    packing = packing_config_from(d, tok.pad_id)
    if d.mixture:
        return _build_mixture(cfg, tok, packing, rows, ring_shards, process_count)
    eval_ex: list[sources.Example] = []
    eval_by_row: dict[int, list[sources.Example]] | None = None
    files_read: list[str] = []
    if not d.path:
        kw = dict(context_tokens=d.synthetic_context_len, num_facts=d.synthetic_num_facts,
                  distractor=d.synthetic_distractor)
        train_recs = demo.make_synthetic_pairs(d.synthetic_pairs, d.seed, id_prefix="demo-train", **kw)
        eval_recs = demo.make_synthetic_pairs(d.synthetic_eval_pairs, d.seed, id_prefix="demo-eval", **kw)
        train_ex = sources.examples_from_pairs(train_recs, source="synthetic-train", objective=objective)
        eval_ex = sources.examples_from_pairs(eval_recs, source="synthetic-eval", objective=objective)
        name, eval_name = "synthetic-train", "synthetic-eval"
        train_by_row = _every_bth(train_ex, B, rows, name)
    elif d.path.endswith(".jsonl"):  # prompts for SFT: one file, every host reads it all
        split, frac = ("all", 0.0) if d.eval_path else ("train", d.eval_fraction)
        train_ex = read_examples(d.path, split=split, eval_fraction=frac, objective=objective)
        name = f"{d.path} [{split}]"
        train_by_row = _every_bth(train_ex, B, rows, name)
        if d.eval_path or d.eval_fraction > 0:
            src, split = (d.eval_path, "all") if d.eval_path else (d.path, "eval")
            eval_ex = (_read_eval(d.eval_path, objective) if d.eval_path else
                       read_examples(src, split=split, eval_fraction=frac, objective=objective))
        eval_name = f"{d.eval_path} [all]" if d.eval_path else f"{d.path} [eval]"
    else:  # preference records: only the files that hold this host's rows
        frac = 0.0 if d.eval_path else d.eval_fraction
        name, eval_name = (f"{d.path} [all]", f"{d.eval_path} [all]") if d.eval_path else \
            (f"{d.path} [train]", f"{d.path} [eval]")
        got = sources.read_pair_rows(d.path, rows, B, objective=objective, eval_fraction=frac)
        files_read = got.files_read
        _check_files(d.path, got, rows, B)
        if got.num_records < B:
            raise DataError(f"{d.path}: {got.num_records} records cannot fill data.batch_size = {B} rows "
                            "(row j of the global batch draws from the records r ≡ j mod batch_size)")
        for j in rows:
            if not got.train[int(j)]:
                raise DataError(f"{name}: batch row {int(j)} has no training examples (records r ≡ {int(j)} "
                                f"mod {B} of {got.num_records}, eval_fraction {frac})")
        train_by_row = got.train
        if d.eval_path:  # a separate, small held-out set: every host reads all of it
            eval_ex = _read_eval(d.eval_path, objective)
        elif frac > 0:
            eval_by_row = got.eval
    cache = CACHE_MAX_TOKENS // len(rows)
    # Row j's stream: shard_index=j/shard_count=B gives it its own shuffle and globally unique example ids.
    streams = [DataPipeline(train_by_row[int(j)], tok, packing, batch_size=1, seed=d.seed, shuffle=d.shuffle,
                            shard_index=int(j), shard_count=B, name=f"{name} row {j}", cache_max_tokens=cache)
               for j in rows]
    if eval_by_row is not None:
        eval_rows = {int(j): DataPipeline(eval_by_row[int(j)], tok, packing, batch_size=1, shuffle=False,
                                          shard_index=int(j), shard_count=B, name=f"{eval_name} row {j}")
                     if eval_by_row[int(j)] else None for j in rows}
        return TrainData(streams, rows, B, None, tok, ring_shards, process_count, eval_rows=eval_rows,
                         packing=packing, files_read=files_read)
    ev = (DataPipeline(eval_ex, tok, packing, batch_size=B, shuffle=False, name=eval_name) if eval_ex
          else None)
    return TrainData(streams, rows, B, ev, tok, ring_shards, process_count, files_read=files_read)


def mixture_pick(weights: Sequence[float], seed: int, row: int, k: int) -> int:
    """The source of row `row`'s `k`-th training row: a hash of (seed, row, k) against the cumulative
    weights."""
    import hashlib

    u = int.from_bytes(hashlib.sha256(f"mixture:{seed}:{row}:{k}".encode()).digest()[:8], "big") / 2.0**64
    total, acc = float(sum(weights)), 0.0
    for i, w in enumerate(weights):
        acc += w / total
        if u < acc:
            return i
    return len(weights) - 1


class _MixedStream:
    """Row j of a mixture: the sources' row-j pipelines, one row at a time from the one `mixture_pick` names.

    Same interface as the `DataPipeline` it stands in for (`next`, `get_state`, `set_state`)."""

    def __init__(self, pipes: Sequence[DataPipeline], weights: Sequence[float], seed: int, row: int,
                 names: Sequence[str]) -> None:
        self._pipes, self._weights, self._seed, self._row = list(pipes), list(weights), seed, row
        self._names = list(names)
        self._k = 0
        self._states = [p.get_state() for p in self._pipes]

    def __iter__(self) -> _MixedStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        i = mixture_pick(self._weights, self._seed, self._row, self._k)
        pipe = self._pipes[i]
        if pipe.get_state() != self._states[i]:
            pipe.set_state(self._states[i])
        out = next(pipe)
        self._states[i] = pipe.get_state()
        self._k += 1
        return out

    def get_state(self) -> dict[str, Any]:
        return {"mixture": self._names, "weights": self._weights, "k": self._k, "sources": list(self._states)}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("mixture") != self._names or state.get("weights") != self._weights:
            raise DataError(f"cannot resume: the saved data state is of the mixture {state.get('mixture')} "
                            f"(weights {state.get('weights')}); this run's is {self._names} "
                            f"({self._weights})")
        self._k = int(state["k"])
        self._states = list(state["sources"])
        for p, st in zip(self._pipes, self._states, strict=True):
            p.set_state(st)


def _source_rows(path: str, objective: str, rows: np.ndarray, B: int
                 ) -> tuple[dict[int, list[sources.Example]], list[str]]:
    """Row j's training examples of one mixture source (records dir, or prompts .jsonl for SFT), all of it
    (no held-out split: a mixture's eval set is data.eval_path)."""
    if "://" not in path and not os.path.exists(path):
        raise DataError(f"config.data.mixture: {path} does not exist")
    if path.endswith(".jsonl"):
        return _every_bth(read_examples(path, objective=objective), B, rows, path), []
    got = sources.read_pair_rows(path, rows, B, objective=objective)
    _check_files(path, got, rows, B)
    for j in rows:
        if not got.train[int(j)]:
            raise DataError(f"config.data.mixture: {path}: batch row {int(j)} has no examples (records r ≡ "
                            f"{int(j)} mod {B} of {got.num_records}; a source needs at least data.batch_size "
                            "records)")
    return got.train, got.files_read


def _build_mixture(cfg: Config, tok: ChatTokenizer, packing: PackingConfig, rows: np.ndarray,
                   ring_shards: int, process_count: int) -> TrainData:
    d, objective, B = cfg.data, cfg.dpo.objective, cfg.data.batch_size
    mix = parse_mixture(d.mixture)
    per_source, files_read = [], []
    for path, _ in mix:
        by_row, opened = _source_rows(path, objective, rows, B)
        per_source.append(by_row)
        files_read += opened
    cache = CACHE_MAX_TOKENS // (len(rows) * len(mix))
    names, weights = [p for p, _ in mix], [w for _, w in mix]
    streams = []
    for j in rows:
        pipes = [DataPipeline(by_row[int(j)], tok, packing, batch_size=1, seed=d.seed, shuffle=d.shuffle,
                              shard_index=int(j), shard_count=B, name=f"{path} row {j}",
                              cache_max_tokens=cache)
                 for (path, _), by_row in zip(mix, per_source, strict=True)]
        streams.append(_MixedStream(pipes, weights, d.seed, int(j), names))
    eval_ex = _read_eval(d.eval_path, objective) if d.eval_path else []
    ev = (DataPipeline(eval_ex, tok, packing, batch_size=B, shuffle=False, name=f"{d.eval_path} [all]")
          if eval_ex else None)
    return TrainData(streams, rows, B, ev, tok, ring_shards, process_count,  # type: ignore[arg-type]
                     files_read=files_read)


def _read_eval(path: str, objective: str) -> list[sources.Example]:
    """The held-out examples of `data.eval_path`; an empty set is an error (not a run without eval)."""
    examples = read_examples(path, split="all", objective=objective)
    if not examples:
        raise DataError(f"config.data.eval_path: {path} holds no {objective} examples; fix it, or leave "
                        "data.eval_path empty")
    return examples


def _every_bth(examples: list[sources.Example], B: int, rows: np.ndarray, name: str
               ) -> dict[int, list[sources.Example]]:
    """Row j's stream for data every host holds whole: examples j, j + B, j + 2B, ..."""
    if len(examples) < B:
        raise DataError(f"{name}: {len(examples)} training examples cannot fill data.batch_size = {B} rows "
                        "(each row of the global batch draws from its own 1/batch_size of the examples)")
    return {int(j): examples[int(j)::B] for j in rows}


def _check_files(path: str, got: sources.RowExamples, rows: np.ndarray, B: int) -> None:
    """Log once when the shard layout makes a host that holds some of the rows read every file."""
    F = got.num_files
    if F > 1 and len(rows) < B and len(got.files_read) == F:
        divisor = max(k for k in range(1, min(F, B) + 1) if B % k == 0)
        better = [str(B * -(-F // B))] + ([str(divisor)] if divisor > 1 else [])
        log.warning("%s: this host reads all %d record files for %d of the %d batch rows: %d files do not "
                    "split by row with data.batch_size = %d; rewrite it with `judge.pairs --num-shards` a "
                    "multiple or divisor of %d (e.g. %s) so each host reads only its rows' files",
                    path, F, len(rows), B, F, B, B, " or ".join(better))

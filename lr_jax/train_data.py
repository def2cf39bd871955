"""The trainer's view of `lr_jax.data`: one object with a resumable train iterator and the held-out batches.

With `data.path == ""` the synthetic "find the fact" demo pairs (`lr_jax.data.demo`) are generated in memory
and the tiny demo tokenizer is built into `<out_dir>/tokenizer` (CPU test mode needs no files at all).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lr_jax.config import Config, ConfigError
from lr_jax.data import demo, sources
from lr_jax.data.errors import DataError
from lr_jax.data.pipeline import DataPipeline, packing_config_from
from lr_jax.data.tokenization import ChatTokenizer
from lr_jax.model.attention.layout import to_ring_order
from lr_jax.train_step import PAIR_KEYS, TOKEN_KEYS

__all__ = ["PAIR_KEYS", "TOKEN_KEYS", "TrainData", "build"]


class TrainData:
    """Train pipeline (endless, `get_state`/`set_state`) plus a cached list of eval batches."""

    def __init__(self, train: DataPipeline, eval_pipe: DataPipeline | None, tokenizer: ChatTokenizer,
                 ring_shards: int = 1) -> None:
        self._train = train
        self._ring_shards = ring_shards
        self._initial_state = train.get_state()  # (epoch 0, cursor 0, empty stats)
        self._eval = eval_pipe
        self.tokenizer = tokenizer
        self._eval_batches: list[dict[str, np.ndarray]] | None = None

    def train_iterator(self) -> _Iterator:
        """A fresh iterator from the start of the data (the reference pass and the loop each take one)."""
        return _Iterator(self._train, self._initial_state, self._ring_shards)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        if self._eval is None:
            return []
        if self._eval_batches is None:
            self._eval_batches = [_complete(b, self._ring_shards) for b in self._eval.iterate_once()]
        return self._eval_batches


class _Iterator:
    """Wraps the pipeline so that each iterator starts at (epoch 0, cursor 0) and owns its position."""

    def __init__(self, pipe: DataPipeline, initial_state: dict[str, Any], ring_shards: int) -> None:
        self._pipe = pipe
        self._ring_shards = ring_shards
        self._state = initial_state
        self._pipe.set_state(self._state)

    def __iter__(self) -> _Iterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._pipe.get_state() != self._state:  # another iterator moved the shared pipeline
            self._pipe.set_state(self._state)
        batch = next(self._pipe)
        self._state = self._pipe.get_state()
        return _complete(batch, self._ring_shards)

    def get_state(self) -> dict[str, Any]:
        return self._state

    def set_state(self, state: dict[str, Any]) -> None:
        self._pipe.set_state(state)
        self._state = self._pipe.get_state()


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


def build(cfg: Config, process_index: int = 0, process_count: int = 1, ring_shards: int = 1) -> TrainData:
    """Build the train/eval pipelines for this host from `cfg.data`.

    ring_shards: size of the mesh's sequence axis when attention is `ring` (rows are laid out in its zig-zag
    token order); 1 = natural order.
    """
    d, objective = cfg.data, cfg.dpo.objective
    tok = _tokenizer(cfg)
    packing = packing_config_from(d, tok.pad_id)
    if d.batch_size % process_count:
        raise ConfigError(f"config.data.batch_size: {d.batch_size} not divisible by {process_count} hosts")
    local = d.batch_size // process_count
    common = dict(seed=d.seed, shard_index=process_index, shard_count=process_count)
    if not d.path:
        kw = dict(context_tokens=d.synthetic_context_len, num_facts=d.synthetic_num_facts,
                  distractor=d.synthetic_distractor)
        train_recs = demo.make_synthetic_pairs(d.synthetic_pairs, d.seed, id_prefix="demo-train", **kw)
        eval_recs = demo.make_synthetic_pairs(d.synthetic_eval_pairs, d.seed, id_prefix="demo-eval", **kw)
        shard = lambda recs: recs[process_index::process_count]
        train_ex = sources.examples_from_pairs(shard(train_recs), source="synthetic-train",
                                               objective=objective)
        eval_ex = sources.examples_from_pairs(shard(eval_recs), source="synthetic-eval", objective=objective)
        train = DataPipeline(train_ex, tok, packing, batch_size=local, shuffle=d.shuffle,
                             name="synthetic-train", **common)
        ev = (DataPipeline(eval_ex, tok, packing, batch_size=local, shuffle=False, name="synthetic-eval",
                           **common) if eval_ex else None)
        return TrainData(train, ev, tok, ring_shards)
    pkw = dict(global_batch_size=d.batch_size, objective=objective, process_index=process_index,
               process_count=process_count, seed=d.seed)
    if d.eval_path:
        train = DataPipeline.from_path(d.path, tok, packing, split="all", shuffle=d.shuffle, **pkw)
        ev = DataPipeline.from_path(d.eval_path, tok, packing, split="all", shuffle=False, **pkw)
    else:
        train = DataPipeline.from_path(d.path, tok, packing, split="train", eval_fraction=d.eval_fraction,
                                       shuffle=d.shuffle, **pkw)
        ev = None
        if d.eval_fraction > 0:
            try:
                ev = DataPipeline.from_path(d.path, tok, packing, split="eval", eval_fraction=d.eval_fraction,
                                            shuffle=False, **pkw)
            except DataError as e:
                if "no examples" not in str(e):
                    raise
    return TrainData(train, ev, tok, ring_shards)

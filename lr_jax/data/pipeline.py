"""The training/eval batch iterator: examples → tokens → shared-prefix rows → `[batch, seq]` batches.

Each host builds its own local batch (`batch_size // process_count` rows) from its own shard. Training
iteration is endless over epochs; the order within an epoch is a permutation drawn from
``(seed, epoch, shard_index)``, so it is reproducible. Rows are filled next-fit in that order, which makes
the resume state tiny: `(epoch, cursor)` — the index of the first item not yet in an emitted batch — plus
the statistics. `get_state()` / `set_state()` round-trip through JSON, and a pipeline restored from a
state yields exactly the batches the original would have yielded next.

Batch (NumPy, int32): `tokens`, `targets`, `loss_mask`, `positions`, `segment_ids`, `branch_ids`
`[rows, seq]` (see `lr_jax.data.packing`), `pair_valid` / `example_ids` `[rows, P]` (example id -1 =
empty slot; ids are unique across hosts: ``local_index * shard_count + shard_index``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lr_jax.data import sources
from lr_jax.data.errors import DataError
from lr_jax.data.packing import PackingConfig, RowBuilder, Segment, Skip, prepare, stack_rows
from lr_jax.data.sources import Example
from lr_jax.data.stats import DataStats
from lr_jax.data.tokenization import ChatTokenizer, EncodedPrompt

STATE_VERSION = 1
OBJECTIVES = ("dpo", "sft")


class DataPipeline:
    """Iterator of packed batches over one host's examples, with a JSON-serialisable resume state."""

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: ChatTokenizer,
        packing: PackingConfig,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        shard_index: int = 0,
        shard_count: int = 1,
        name: str = "data",
        cache_max_tokens: int = 50_000_000,
    ) -> None:
        """`batch_size` is the number of rows this host yields per batch (local batch)."""
        if batch_size < 1:
            raise DataError(f"{name}: batch_size must be >= 1, got {batch_size}")
        if not examples:
            raise DataError(f"{name}: no examples on host shard {shard_index}/{shard_count}")
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.packing = packing
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.name = name
        self.stats = DataStats()
        self._epoch = 0
        self._cursor = 0
        self._gen: Iterator[dict[str, np.ndarray]] | None = None
        self._cache: dict[int, tuple[EncodedPrompt, tuple[np.ndarray, ...]]] = {}
        self._cache_tokens = 0
        self._cache_max_tokens = cache_max_tokens

    @classmethod
    def from_path(
        cls,
        path: str,
        tokenizer: ChatTokenizer,
        packing: PackingConfig,
        *,
        global_batch_size: int,
        objective: str = "dpo",
        split: str = "all",
        eval_fraction: float = 0.0,
        process_index: int = 0,
        process_count: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> DataPipeline:
        """Read this host's shard of `path` (preference records dir, or a ``.jsonl`` prompts file for SFT).

        Pass `process_index=jax.process_index()`, `process_count=jax.process_count()`.
        """
        if objective not in OBJECTIVES:
            raise DataError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if global_batch_size % process_count:
            raise DataError(
                f"{path}: global batch {global_batch_size} not divisible by {process_count} hosts")
        examples = read_examples(path, objective=objective, split=split, eval_fraction=eval_fraction,
                                 shard_index=process_index, shard_count=process_count)
        return cls(examples, tokenizer, packing, batch_size=global_batch_size // process_count, seed=seed,
                   shuffle=shuffle, shard_index=process_index, shard_count=process_count,
                   name=f"{path} [{split}]")

    # --- items -----------------------------------------------------------------------------------------

    def example_id(self, local_index: int) -> int:
        return local_index * self.shard_count + self.shard_index

    def encode(self, local_index: int) -> tuple[EncodedPrompt, tuple[np.ndarray, ...]]:
        """Tokenized prompt and responses of one example (cached while the cache has room)."""
        hit = self._cache.get(local_index)
        if hit is not None:
            return hit
        ex = self.examples[local_index]
        try:
            prompt = self.tokenizer.encode_prompt(ex.context, ex.query)
            # An empty response stays empty (skipped later) instead of becoming a bare EOS.
            enc = self.tokenizer.encode_response
            responses = tuple(enc(ex.context, ex.query, r) if r.strip() else np.zeros(0, np.int32)
                              for r in ex.responses)
        except DataError:
            raise
        except Exception as e:  # a tokenizer/template failure on one record: name the record
            raise DataError(f"{ex.source}: tokenization failed: {type(e).__name__}: {e}") from None
        size = len(prompt.ids) + sum(len(r) for r in responses)
        if self._cache_tokens + size <= self._cache_max_tokens:
            self._cache[local_index] = (prompt, responses)
            self._cache_tokens += size
        return prompt, responses

    def segment(self, local_index: int) -> Segment | Skip:
        """Prepared (truncated + laid out) item, or the reason it is skipped."""
        prompt, responses = self.encode(local_index)
        return prepare(prompt.ids, prompt.context_span, responses, self.packing,
                       example_id=self.example_id(local_index))

    def order(self, epoch: int) -> np.ndarray:
        """`[num_examples]` local indices in epoch `epoch`'s order."""
        n = len(self.examples)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, self.shard_index]))
        return rng.permutation(n)

    # --- training iteration (endless, resumable) ----------------------------------------------------

    def __iter__(self) -> DataPipeline:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._gen is None:
            self._gen = self._generate()
        return next(self._gen)

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        B, cfg = self.batch_size, self.packing
        rows: list[RowBuilder] = []
        row = RowBuilder(cfg)
        while True:
            order = self.order(self._epoch)
            packed_before = self.stats.examples_packed
            while self._cursor < len(order):
                i = int(order[self._cursor])
                item = self.segment(i)
                if isinstance(item, Skip):
                    self.stats.record_skip(item.reason, self.examples[i].prompt_id)
                    self._cursor += 1
                    continue
                if not row.fits(item):
                    rows.append(row)
                    row = RowBuilder(cfg)
                    if len(rows) == B:
                        batch, rows = stack_rows(rows, B, cfg), []
                        # Suspended here, the state (epoch, cursor -> item i not yet placed) is exact.
                        yield batch
                row.add(item)
                self.stats.record_packed(item.truncated_tokens)
                self._cursor += 1
            if self.stats.examples_packed == packed_before:
                raise DataError(f"{self.name}: every example was skipped ({self.stats.summary()})")
            self._epoch, self._cursor = self._epoch + 1, 0
            if not row.empty:  # rows never span epochs, so the state never points into a previous one
                rows.append(row)
                row = RowBuilder(cfg)
            if len(rows) == B:
                batch, rows = stack_rows(rows, B, cfg), []
                yield batch

    @property
    def epoch(self) -> int:
        return self._epoch

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position + statistics (valid between batches)."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "cursor": self._cursor,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shard_index": self.shard_index,
            "shard_count": self.shard_count,
            "num_examples": len(self.examples),
            "stats": self.stats.to_dict(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `state` (taken from a pipeline over the same data, seed and host layout)."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"{self.name}: data state version {state.get('version')} != {STATE_VERSION}")
        for key, mine in (("seed", self.seed), ("shuffle", self.shuffle), ("shard_index", self.shard_index),
                          ("shard_count", self.shard_count), ("num_examples", len(self.examples))):
            if state.get(key) != mine:
                raise DataError(f"{self.name}: cannot resume: saved data state has {key}={state.get(key)!r}, "
                                f"this pipeline has {mine!r}")
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])
        self.stats = DataStats.from_dict(state["stats"])
        self._gen = None

    # --- one pass (eval, reference log-probs) -------------------------------------------------------

    def iterate_once(self, *, num_batches: int | None = None, stats: DataStats | None = None
                     ) -> Iterator[dict[str, np.ndarray]]:
        """One pass in file order, last batch padded with empty rows; independent of the training state.

        `num_batches` (e.g. agreed across hosts) truncates the pass or pads it with all-empty batches so
        that every host runs the same number of steps.
        """
        B, cfg = self.batch_size, self.packing
        stats = stats if stats is not None else DataStats()
        emitted = 0
        rows: list[RowBuilder] = []
        row = RowBuilder(cfg)
        for i in range(len(self.examples)):
            if num_batches is not None and emitted >= num_batches:
                return
            item = self.segment(i)
            if isinstance(item, Skip):
                stats.record_skip(item.reason, self.examples[i].prompt_id)
                continue
            if not row.fits(item):
                rows.append(row)
                row = RowBuilder(cfg)
                if len(rows) == B:
                    yield stack_rows(rows, B, cfg)
                    emitted += 1
                    rows = []
                    if num_batches is not None and emitted >= num_batches:
                        return
            row.add(item)
            stats.record_packed(item.truncated_tokens)
        if not row.empty:
            rows.append(row)
        if rows:
            yield stack_rows(rows, B, cfg)
            emitted += 1
        while num_batches is not None and emitted < num_batches:
            yield stack_rows([], B, cfg)
            emitted += 1


def read_examples(path: str, *, objective: str = "dpo", split: str = "all", eval_fraction: float = 0.0,
                  shard_index: int = 0, shard_count: int = 1) -> list[Example]:
    """Examples of `path` (preference records dir, or a ``.jsonl`` prompts file for SFT); one host's shard
    of the files when `shard_count > 1`, all of them by default."""
    if objective not in OBJECTIVES:
        raise DataError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    kw = dict(shard_index=shard_index, shard_count=shard_count, split=split, eval_fraction=eval_fraction)
    if path.endswith(".jsonl"):
        if objective != "sft":
            raise DataError(f"{path}: a prompts JSONL file has no rejected responses; use objective 'sft'")
        return sources.read_prompt_examples(path, **kw)
    return sources.read_pair_examples(path, objective=objective, **kw)


def packing_config_from(data_cfg: Any, pad_id: int) -> PackingConfig:
    """`PackingConfig` from `lr_jax.training.config.DataConfig` (seq_len, pairs_per_row, max_*_len)."""
    return PackingConfig(seq_len=data_cfg.seq_len, max_pairs_per_row=data_cfg.pairs_per_row,
                         max_prompt_len=data_cfg.max_prompt_len, max_response_len=data_cfg.max_response_len,
                         pad_id=pad_id)

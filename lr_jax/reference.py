"""Precomputed reference log-probs: the initial policy run once over the data, cached by row content.

Rows are keyed by a hash of their token/mask ids, so the cache is independent of shuffling order and a
resumed run finds every row it will see. The cache is written to `<out_dir>/reference_logps.p<process>.npz`
before the first optimizer step; a resumed run loads it instead of recomputing (its params are no longer the
reference).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable

import numpy as np

KEY_FIELDS = ("tokens", "targets", "loss_mask", "positions", "segment_ids", "branch_ids")


class ReferenceCacheError(ValueError):
    """A batch row has no precomputed reference log-probs (data changed since the reference pass)."""


def row_keys(batch: dict[str, np.ndarray]) -> list[bytes]:
    """A 16-byte content hash per row of a `[batch, seq]` batch."""
    n = batch["tokens"].shape[0]
    keys = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for f in KEY_FIELDS:
            h.update(np.ascontiguousarray(batch[f][i], dtype=np.int32).tobytes())
        keys.append(h.digest())
    return keys


class ReferenceCache:
    """Maps row hash -> `[P, 2]` float32 (chosen, rejected) reference log-probs."""

    def __init__(self, pairs_per_row: int) -> None:
        self.pairs_per_row = pairs_per_row
        self.table: dict[bytes, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.table)

    def missing(self, batch: dict[str, np.ndarray]) -> bool:
        return any(k not in self.table for k in row_keys(batch))

    def add(self, batch: dict[str, np.ndarray], chosen: np.ndarray, rejected: np.ndarray) -> None:
        """Store `chosen`/`rejected` `[batch, P]` for each row of `batch`."""
        for k, c, r in zip(row_keys(batch), chosen, rejected, strict=True):
            self.table[k] = np.stack([c, r], axis=-1).astype(np.float32)

    def lookup(self, batch: dict[str, np.ndarray], where: str = "batch") -> tuple[np.ndarray, np.ndarray]:
        """(`ref_chosen_logps`, `ref_rejected_logps`) `[batch, P]` for the rows of `batch`."""
        out = []
        for i, k in enumerate(row_keys(batch)):
            if k not in self.table:
                raise ReferenceCacheError(
                    f"{where}: row {i} has no precomputed reference log-probs (the data changed since the "
                    f"reference pass; delete reference_logps*.npz in the run directory to recompute)")
            out.append(self.table[k])
        arr = np.stack(out)  # [batch, P, 2]
        return arr[..., 0], arr[..., 1]

    def fill(self, batches: Iterable[dict[str, np.ndarray]],
             compute: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]) -> int:
        """Compute reference log-probs for every batch with an unseen row; returns batches computed."""
        n = 0
        for batch in batches:
            if self.missing(batch):
                chosen, rejected = compute(batch)
                self.add(batch, chosen, rejected)
                n += 1
        return n

    def save(self, path: str) -> None:
        # uint8 [N, 16], not an "S16" array: NumPy strips trailing NUL bytes from fixed-width bytes.
        keys = np.frombuffer(b"".join(self.table), np.uint8).reshape(len(self.table), 16)
        vals = (np.stack(list(self.table.values())) if self.table
                else np.zeros((0, self.pairs_per_row, 2), np.float32))
        tmp = path + ".tmp.npz"
        np.savez(tmp, keys=keys, values=vals)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache

    @classmethod
    def load(cls, path: str, pairs_per_row: int) -> ReferenceCache:
        with np.load(path) as z:
            keys, vals = z["keys"], z["values"]
        if vals.ndim != 3 or vals.shape[1] != pairs_per_row:
            raise ReferenceCacheError(f"{path}: reference cache has shape {vals.shape}, expected [N, "
                                      f"{pairs_per_row}, 2]; delete it to recompute")
        cache = cls(pairs_per_row)
        cache.table = {k.tobytes(): v for k, v in zip(keys, vals, strict=True)}
        return cache

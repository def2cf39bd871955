"""Precomputed reference log-probs: the initial policy run once over the data, cached by row content.

Rows are keyed by a hash of their token/mask ids, so the cache is independent of shuffling order and a
resumed run finds every row it will see. The cache is written beside the checkpoints, to
`<checkpoint_dir>/reference_logps.p<process>.npz` (local or gs://, through lr_jax.io.storage), before the
first optimizer step, so it survives losing the machine's disk. It records which train batches it covers; a
resumed run loads it and computes only what it lacks (the trainer uses its copy of the initial params).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Iterable

import numpy as np

from lr_jax.data.batch import TOKEN_FIELDS
from lr_jax.errors import LrJaxError
from lr_jax.io import storage


class ReferenceCacheError(LrJaxError, ValueError):
    """A batch row has no precomputed reference log-probs (data changed since the reference pass)."""


def row_keys(batch: dict[str, np.ndarray]) -> list[bytes]:
    """A 16-byte content hash per row of a `[batch, seq]` batch."""
    n = batch["tokens"].shape[0]
    keys = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for f in TOKEN_FIELDS:
            h.update(np.ascontiguousarray(batch[f][i], dtype=np.int32).tobytes())
        keys.append(h.digest())
    return keys


def cache_path(directory: str, process_index: int) -> str:
    """`<directory>/reference_logps.p<process>.npz`; `directory` may be local or gs://."""
    return storage.join(directory, f"reference_logps.p{process_index}.npz")


class ReferenceCache:
    """Maps row hash -> `[P, 2]` float32 (chosen, rejected) reference log-probs.

    `covered` = (lo, hi): every row of train batches lo..hi-1 (counted from the start of the data) and of the
    eval batches is in the table; None when unknown (a cache written before this field existed).
    """

    def __init__(self, pairs_per_row: int) -> None:
        self.pairs_per_row = pairs_per_row
        self.table: dict[bytes, np.ndarray] = {}
        self.covered: tuple[int, int] | None = None

    def covers(self, lo: int, hi: int) -> bool:
        """True if train batches lo..hi-1 (and the eval batches) are known to be in the table."""
        return self.covered is not None and self.covered[0] <= lo and hi <= self.covered[1]

    def mark_covered(self, lo: int, hi: int) -> None:
        """Record that batches lo..hi-1 were filled; merged with the old range when the two touch."""
        old = self.covered
        if old is not None and old[0] <= lo <= old[1]:
            self.covered = (old[0], max(old[1], hi))
        else:
            self.covered = (lo, hi)

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
                    f"reference pass; delete reference_logps*.npz in the checkpoint directory to recompute)")
            out.append(self.table[k])
        arr = np.stack(out)  # [batch, P, 2]
        return arr[..., 0], arr[..., 1]

    def fill(self, batches: Iterable[dict[str, np.ndarray]],
             compute: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]], *,
             only_missing: bool = True) -> int:
        """Compute reference log-probs for every batch with an unseen row; returns batches computed.

        `only_missing=False` computes every batch: with several hosts `compute` is a collective step, so all
        hosts must call it for the same batches whatever their own caches hold.
        """
        n = 0
        for batch in batches:
            if not only_missing or self.missing(batch):
                chosen, rejected = compute(batch)
                self.add(batch, chosen, rejected)
                n += 1
        return n

    def save(self, path: str) -> None:
        """Write the cache to a local path or gs:// URL, atomically (a reader sees all of it or nothing)."""
        # uint8 [N, 16], not an "S16" array: NumPy strips trailing NUL bytes from fixed-width bytes.
        keys = np.frombuffer(b"".join(self.table), np.uint8).reshape(len(self.table), 16)
        vals = (np.stack(list(self.table.values())) if self.table
                else np.zeros((0, self.pairs_per_row, 2), np.float32))
        extra = {} if self.covered is None else {"covered": np.asarray(self.covered, np.int64)}
        buf = io.BytesIO()
        np.savez(buf, keys=keys, values=vals, **extra)
        # Local: temp file + rename. gs://: one object upload, which is atomic by itself.
        storage.write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str, pairs_per_row: int) -> ReferenceCache | None:
        """The cache at `path` (local or gs://), or None if there is none."""
        try:
            data = storage.read_bytes(path)
        except FileNotFoundError:
            return None
        try:
            with np.load(io.BytesIO(data)) as z:
                keys, vals = z["keys"], z["values"]
                covered = tuple(int(v) for v in z["covered"]) if "covered" in z.files else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ReferenceCacheError(f"{path}: not a reference cache ({e}); delete it to recompute") from e
        if vals.ndim != 3 or vals.shape[1] != pairs_per_row or keys.shape != (len(vals), 16):
            raise ReferenceCacheError(f"{path}: reference cache has shape {vals.shape}, expected [N, "
                                      f"{pairs_per_row}, 2]; delete it to recompute")
        cache = cls(pairs_per_row)
        cache.table = {k.tobytes(): v for k, v in zip(keys, vals, strict=True)}
        cache.covered = (covered[0], covered[1]) if covered is not None and len(covered) == 2 else None
        return cache

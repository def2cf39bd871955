"""Reading a committed preference dataset: all of it, one host's files, or the records of some residues.

gs:// shards are downloaded once to a local cache; every shard is checked against the sha256 in
``metadata.json`` before it is read.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from lr_jax.errors import ConfigError
from lr_jax.io import storage
from lr_jax.io.records.errors import RecordError
from lr_jax.io.records.example import decode_pair
from lr_jax.io.records.framing import read_frames
from lr_jax.io.records.layout import METADATA_FILE, committed_metadata, sha256_file


def _cache_root() -> str:
    return os.environ.get("LR_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lr_jax"))


def _local_copy(remote: str, meta: dict[str, Any], fname: str, cache_dir: str | None) -> str:
    """Download a gs:// shard once; the cache path holds the commit id, so a rewritten dataset is fetched."""
    key = hashlib.sha1(remote.encode()).hexdigest()[:16]
    local = os.path.join(
        cache_dir or _cache_root(), "records", key, str(meta.get("commit_id", "none")), fname
    )
    if not os.path.exists(local):
        storage.download_file(storage.join(remote, fname), local)
    return local


def read_pairs(
    path: str, *, shard_index: int = 0, shard_count: int = 1, cache_dir: str | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the pairs of a committed dataset directory (local or gs://) as dicts of str/float.

    Host ``shard_index`` of ``shard_count`` reads files ``shard_index, shard_index + shard_count, ...`` —
    whole files, so hosts never read the same record. gs:// shards are downloaded to ``cache_dir`` (default
    ``$LR_JAX_CACHE`` or ``~/.cache/lr_jax``) first, because TensorFlow's gs:// filesystem cannot reach an
    emulator. Failed dimensions come back as NaN.

    Raises:
      RecordError: dataset not committed; shard_count larger than the number of files; a corrupt record or a
        record missing a field (the message names file, record index and field).
    """
    if not 0 <= shard_index < shard_count:
        raise ConfigError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    meta = committed_metadata(path)
    files: list[str] = list(meta["shards"])
    if shard_count > len(files):
        raise RecordError(
            f"{path}: {len(files)} shard file(s) cannot feed shard_count={shard_count} readers; rewrite it "
            f"with --num-shards a multiple of {shard_count}"
        )
    mine = files[shard_index::shard_count]
    checksums = meta.get("sha256") or {}
    for fname in mine:
        full = storage.join(path, fname)
        local = _local_copy(path, meta, fname, cache_dir) if storage.is_gcs(path) else full
        if fname in checksums:
            _verify(local, full, checksums[fname])
        for _, pair in _read_file(local, full, meta.get("compression")):
            yield pair


def files_for_residues(shard_lengths: list[int], modulus: int, residues: Iterable[int]) -> list[int]:
    """Indices of the shard files holding a record ``r`` with ``r % modulus in residues``.

    ``write_pairs`` deals record ``r`` (0-based, in input order) to file ``r % F`` at position ``r // F``
    (F = number of files), so file ``f`` holds ``r = p * F + f`` for ``p < shard_lengths[f]``. Its residues
    mod ``modulus`` repeat with period ``modulus / gcd(F, modulus)``: with F a multiple of ``modulus`` each
    residue lives in ``F / modulus`` files; with F a divisor, residue ``j`` lives in file ``j % F`` only.
    """
    if modulus < 1:
        raise ConfigError(f"modulus must be >= 1, got {modulus}")
    want = {int(j) % modulus for j in residues}
    F = len(shard_lengths)
    period = modulus // math.gcd(F, modulus)
    return [f for f, n in enumerate(shard_lengths)
            if any((p * F + f) % modulus in want for p in range(min(int(n), period)))]


def read_pairs_by_residue(
    path: str, *, modulus: int, residues: Iterable[int], cache_dir: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(r, where, pair)`` for the records whose global index ``r`` has ``r % modulus in residues``.

    ``r`` is the record's position in the writer's input (see :func:`files_for_residues`); ``where`` is
    ``"<file>: record <position in file>"`` for error messages. Only the files holding such records are opened
    (on gs:// only those are downloaded), and only the wanted records are decoded. Records come file by file,
    not in ``r`` order. ``meta``: the dataset's :func:`committed_metadata`, if the caller already read it.
    Raises RecordError like :func:`read_pairs`.
    """
    if modulus < 1:
        raise ConfigError(f"modulus must be >= 1, got {modulus}")
    meta = committed_metadata(path) if meta is None else meta
    files: list[str] = list(meta["shards"])
    lengths = meta.get("shard_lengths")
    if not isinstance(lengths, list) or len(lengths) != len(files):
        raise RecordError(f"{storage.join(path, METADATA_FILE)}: field 'shard_lengths' missing or not one "
                          "count per shard")
    want = {int(j) % modulus for j in residues}
    F = len(files)
    checksums = meta.get("sha256") or {}
    for f in files_for_residues(lengths, modulus, want):
        fname = files[f]
        full = storage.join(path, fname)
        local = _local_copy(path, meta, fname, cache_dir) if storage.is_gcs(path) else full
        if fname in checksums:
            _verify(local, full, checksums[fname])
        keep = lambda p, f=f: (p * F + f) % modulus in want
        for p, pair in _read_file(local, full, meta.get("compression"), keep=keep):
            yield p * F + f, f"{full}: record {p}", pair


def _verify(local: str, shown: str, want: str) -> None:
    """A shard must be the one the commit recorded (catches a concurrent writer, a half-copied cache file)."""
    try:
        got = sha256_file(local)
    except FileNotFoundError as e:
        raise RecordError(f"{shown}: shard listed in {METADATA_FILE} is missing") from e
    if got != want:
        raise RecordError(
            f"{shown}: corrupt data (sha256 differs from {METADATA_FILE}: modified after commit)"
        )


def _read_file(
    local: str, shown: str, compression: str | None, keep: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, pair)`` for the file's records; with ``keep``, only the positions it accepts (the others
    are framed and checksummed but not decoded)."""
    with open(local, "rb") as raw:
        f: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compression else raw
        i = 0
        frames = read_frames(f, shown)
        while True:
            try:
                data = next(frames)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                raise RecordError(
                    f"{shown}: record {i}: corrupt data (bad {compression} stream: {e})"
                ) from None
            if keep is None or keep(i):
                yield i, decode_pair(data, f"{shown}: record {i}")
            i += 1

"""Writing a preference dataset: TFRecord shards, the TFDS files, then ``metadata.json`` (the commit)."""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterable
from typing import IO, Any

from lr_jax.errors import ConfigError
from lr_jax.io import storage
from lr_jax.io.records.errors import AlreadyCommittedError
from lr_jax.io.records.example import BYTES_FIELDS, FIELDS, FLOAT_FIELDS, SCHEMA_VERSION, encode_pair
from lr_jax.io.records.framing import frame
from lr_jax.io.records.layout import (
    DEFAULT_NAME,
    METADATA_FILE,
    SPLIT,
    read_metadata,
    sha256_file,
    shard_name,
)

_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _tfds_files(name: str, shard_lengths: list[int], num_bytes: int, description: str) -> dict[str, str]:
    """dataset_info.json + features.json as ``tfds.builder_from_directory`` reads them (TFDS 4.9 format)."""
    info = {
        "name": name,
        "description": description,
        "fileFormat": "tfrecord",
        "version": "1.0.0",
        "moduleName": "lr_jax.io.records",
        "splits": [
            {
                "name": SPLIT,
                "filepathTemplate": _TEMPLATE,
                "numBytes": str(num_bytes),
                "shardLengths": [str(n) for n in shard_lengths],
            }
        ],
    }
    text = {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}
    scalar = {
        "pythonClassName": "tensorflow_datasets.core.features.scalar.Scalar",
        "tensor": {"dtype": "float32", "encoding": "none", "shape": {}},
    }
    features = {
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
        "featuresDict": {
            "features": {**{f: text for f in BYTES_FIELDS}, **{f: scalar for f in FLOAT_FIELDS}}
        },
    }
    return {"dataset_info.json": json.dumps(info, indent=2), "features.json": json.dumps(features, indent=2)}


def _remove_uncommitted(out: str, name: str) -> None:
    """Delete shard/TFDS files a crashed writer left behind (only called when no metadata.json exists)."""
    if not storage.exists(out):
        return
    for p in storage.list_files(out):
        rel = p[len(out.rstrip("/")) + 1 :]
        if "/" in rel or os.sep in rel:
            continue  # only this directory's own files
        if rel.startswith(f"{name}-{SPLIT}.tfrecord-") or rel in ("dataset_info.json", "features.json"):
            storage.delete(p)


def _write_local_shards(
    pairs: Iterable[dict[str, Any]], paths: list[str], compression: str | None
) -> list[int]:
    """Deal encoded pairs round-robin over ``paths``; returns the record count per file."""
    raw = [open(p, "wb") for p in paths]  # noqa: SIM115 (closed in finally)
    # mtime=0 and no file name in the gzip header: identical input gives identical bytes.
    writers: list[IO[bytes]] = (
        [gzip.GzipFile(filename="", mode="wb", fileobj=r, mtime=0) for r in raw] if compression else raw
    )
    lengths = [0] * len(paths)
    try:
        for i, pair in enumerate(pairs):
            writers[i % len(paths)].write(frame(encode_pair(pair, i)))
            lengths[i % len(paths)] += 1
    finally:
        for w in writers:
            w.close()
        for r in raw:
            r.close()
    return lengths


def write_pairs(
    pairs: Iterable[dict[str, Any]],
    out: str,
    *,
    num_shards: int = 1,
    compression: str | None = None,
    metadata: dict[str, Any] | None = None,
    name: str = DEFAULT_NAME,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write preference pairs as TFRecord shards + TFDS metadata + ``metadata.json`` (the commit) to ``out``.

    Args:
      pairs: dicts with every field in :data:`FIELDS`; float fields except the rewards may be None (-> NaN).
      out: local directory or ``gs://bucket/dir``.
      num_shards: records are dealt round-robin over this many files (record r → file r mod num_shards). For
        training use a multiple or divisor of ``data.batch_size``: each host then opens only the files of its
        batch rows (:func:`read_pairs_by_residue`).
      compression: None or ``"GZIP"``. TFDS cannot load GZIP shards: TFDS files are only written without it.
      metadata: free-form provenance (judge model, counts, ``fingerprint`` of the input, ...) stored in
        ``metadata.json``. If ``out`` already holds a committed dataset whose ``fingerprint`` equals
        ``metadata["fingerprint"]``, nothing is written and the existing metadata is returned (with
        ``"skipped": True``).
      overwrite: replace a committed dataset made from other input (otherwise :class:`AlreadyCommittedError`).

    Returns:
      the metadata written (schema version, shards, counts, ...).
    """
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    if compression not in (None, "GZIP"):
        raise ConfigError(f"compression must be None or 'GZIP', got {compression!r}")
    if not _NAME_RE.match(name):
        raise ConfigError(f"dataset name {name!r} must be snake_case (TFDS requirement)")
    user_meta = dict(metadata or {})
    fingerprint = user_meta.get("fingerprint")

    existing = read_metadata(out)
    if existing is not None:
        if fingerprint is not None and existing.get("fingerprint") == fingerprint:
            return {**existing, "skipped": True}
        if not overwrite:
            raise AlreadyCommittedError(
                f"{storage.join(out, METADATA_FILE)}: a dataset from different input is already committed "
                "here (pass overwrite=True / --overwrite to replace it, or choose another output)"
            )

    with tempfile.TemporaryDirectory(prefix="lr_jax_pairs_") as tmp:
        # 1. Encode everything locally first: bad input fails here, before anything committed is touched.
        files = [shard_name(name, i, num_shards) for i in range(num_shards)]
        lengths = _write_local_shards(pairs, [os.path.join(tmp, f) for f in files], compression)
        num_bytes = sum(os.path.getsize(os.path.join(tmp, f)) for f in files)
        checksums = {f: sha256_file(os.path.join(tmp, f)) for f in files}
        # 2. Un-commit a dataset being replaced: from here on readers see "no dataset", never a mix.
        if existing is not None:
            storage.delete(storage.join(out, METADATA_FILE))
        # 3. Remove what a crashed or replaced writer left (other shard counts included).
        _remove_uncommitted(out, name)
        # 4. Upload create-only: a concurrent writer to the same directory makes one of the two fail loudly.
        storage.makedirs(out)
        for f in files:
            storage.upload_file(os.path.join(tmp, f), storage.join(out, f), if_absent=True)
    if compression is None:
        desc = str(user_meta.get("description", ""))
        for fname, text in _tfds_files(name, lengths, num_bytes, desc).items():
            storage.write_text(storage.join(out, fname), text, if_absent=True)

    meta: dict[str, Any] = {
        **user_meta,
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "split": SPLIT,
        "compression": compression,
        "num_records": sum(lengths),
        "shards": files,
        "shard_lengths": lengths,
        "sha256": checksums,
        "commit_id": uuid.uuid4().hex,
        "fields": list(FIELDS),
    }
    # The commit marker, written last and create-only.
    storage.write_text(
        storage.join(out, METADATA_FILE), json.dumps(meta, indent=2, sort_keys=True), if_absent=True
    )
    return meta

"""A dataset directory's layout: shard file names and ``metadata.json``, the commit marker."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lr_jax.io import storage
from lr_jax.io.records.errors import RecordError
from lr_jax.io.records.example import SCHEMA_VERSION

DEFAULT_NAME = "preference_pairs"
METADATA_FILE = "metadata.json"
SPLIT = "train"


def shard_name(name: str, index: int, count: int) -> str:
    """TFDS shard file name: ``<name>-train.tfrecord-00000-of-00004``."""
    return f"{name}-{SPLIT}.tfrecord-{index:05d}-of-{count:05d}"


def read_metadata(out: str) -> dict[str, Any] | None:
    """The committed ``metadata.json`` of a dataset directory, or None if nothing is committed there."""
    path = storage.join(out, METADATA_FILE)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or "shards" not in meta:
        raise RecordError(f"{path}: field 'shards' missing; not a preference dataset metadata file")
    return meta


def committed_metadata(path: str) -> dict[str, Any]:
    """`path`'s ``metadata.json``; RecordError if the dataset is not committed or has another schema."""
    meta = read_metadata(path)
    if meta is None:
        raise RecordError(
            f"{storage.join(path, METADATA_FILE)}: missing — no committed preference dataset at {path} "
            "(a writer crashed or is still running)"
        )
    if str(meta.get("schema_version")) != SCHEMA_VERSION:
        raise RecordError(
            f"{storage.join(path, METADATA_FILE)}: field 'schema_version' is {meta.get('schema_version')!r}, "
            f"this reader understands {SCHEMA_VERSION!r}"
        )
    return meta


def sha256_file(path: str) -> str:
    """The hex SHA-256 of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""The preference-record schema: ONE definition shared by the writer (`judge.pairs`) and the trainer's reader.

A dataset is a directory (local or ``gs://``) in TFDS layout::

    <out>/preference_pairs-train.tfrecord-00000-of-00002   tf.train.Example shards (optionally GZIP)
    <out>/preference_pairs-train.tfrecord-00001-of-00002
    <out>/dataset_info.json, features.json                  TFDS metadata (uncompressed datasets only)
    <out>/metadata.json                                      written LAST: the commit marker

Each record is a ``tf.train.Example`` with

- bytes features ``prompt_id, context, query, chosen, rejected`` (UTF-8 text, not token ids);
- float features ``chosen_reward, rejected_reward`` and ``chosen_<dim>, rejected_<dim>`` for each dimension in
  :data:`DIMENSIONS`. A dimension whose judge call failed is stored as NaN (the reward is the mean of the
  dimensions that succeeded, so it is never NaN).

Commit protocol: shards and TFDS files are written first; ``metadata.json`` is created last with a create-only
write (``if_generation_match=0`` on gs://), so a dataset without ``metadata.json`` is an unfinished write and
:func:`read_pairs` refuses it. A rerun after a crash finds no ``metadata.json``, removes the leftovers and
writes again; a rerun with the same input fingerprint finds the committed dataset and does nothing.

No TensorFlow and no JAX here: TFRecord framing (length + masked CRC32C) and the ``tf.train.Example``
protobuf are implemented with ``google-crc32c`` and ``protobuf`` (both come with ``google-cloud-storage``).
This matters because importing TensorFlow 2.21 imports JAX when it is installed
(``tensorflow.lite.python.util``), and ``judge`` must not pull JAX in. Stock TensorFlow/TFDS read what this
module writes and vice versa (tested). Only :data:`FEATURE_SPEC` (for ``tf.io.parse_single_example``) imports
TensorFlow, on first access.

Modules: `errors` (RecordError, AlreadyCommittedError), `example` (the fields and their ``tf.train.Example``
encoding), `framing` (TFRecord length + masked CRC32C), `layout` (shard names, ``metadata.json``), `writer`
(:func:`write_pairs`), `reader` (:func:`read_pairs`, :func:`read_pairs_by_residue`). This package re-exports
their public names.
"""

from __future__ import annotations

from typing import Any

# The submodules' public names; NAN_OK, DEFAULT_NAME and SPLIT stay outside __all__, as before the split.
from lr_jax.io.records.errors import AlreadyCommittedError, RecordError
from lr_jax.io.records.example import (
    BYTES_FIELDS,
    DIMENSIONS,
    FIELDS,
    FLOAT_FIELDS,
    SCHEMA_VERSION,
    decode_pair,
    encode_pair,
)
from lr_jax.io.records.example import NAN_OK as NAN_OK
from lr_jax.io.records.layout import DEFAULT_NAME as DEFAULT_NAME
from lr_jax.io.records.layout import METADATA_FILE, committed_metadata, read_metadata, shard_name
from lr_jax.io.records.layout import SPLIT as SPLIT
from lr_jax.io.records.reader import files_for_residues, read_pairs, read_pairs_by_residue
from lr_jax.io.records.writer import write_pairs

__all__ = [
    "BYTES_FIELDS",
    "DIMENSIONS",
    "FEATURE_SPEC",
    "FIELDS",
    "FLOAT_FIELDS",
    "METADATA_FILE",
    "SCHEMA_VERSION",
    "AlreadyCommittedError",
    "RecordError",
    "committed_metadata",
    "decode_pair",
    "encode_pair",
    "files_for_residues",
    "read_metadata",
    "read_pairs",
    "read_pairs_by_residue",
    "shard_name",
    "write_pairs",
]


# Built on first access by the module __getattr__ below (it needs TensorFlow).
FEATURE_SPEC: dict[str, Any]


def _feature_spec() -> dict[str, Any]:
    import tensorflow as tf

    spec: dict[str, Any] = {f: tf.io.FixedLenFeature([], tf.string) for f in BYTES_FIELDS}
    spec.update({f: tf.io.FixedLenFeature([], tf.float32) for f in FLOAT_FIELDS})
    return spec


def __getattr__(name: str) -> Any:
    # FEATURE_SPEC needs TensorFlow; build it on first access so importing this module stays cheap.
    if name == "FEATURE_SPEC":
        spec = _feature_spec()
        globals()["FEATURE_SPEC"] = spec
        return spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

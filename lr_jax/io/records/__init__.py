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
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import re
import struct
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from lr_jax.errors import ConfigError, LrJaxError
from lr_jax.io import storage

SCHEMA_VERSION = "1"
DIMENSIONS: tuple[str, ...] = ("helpfulness", "logicality", "faithfulness", "completeness")
BYTES_FIELDS: tuple[str, ...] = ("prompt_id", "context", "query", "chosen", "rejected")
FLOAT_FIELDS: tuple[str, ...] = (
    "chosen_reward",
    "rejected_reward",
    *(f"chosen_{d}" for d in DIMENSIONS),
    *(f"rejected_{d}" for d in DIMENSIONS),
)
FIELDS: tuple[str, ...] = BYTES_FIELDS + FLOAT_FIELDS
# Fields that may hold NaN (a failed dimension); the rewards may not.
NAN_OK: frozenset[str] = frozenset(f for f in FLOAT_FIELDS if not f.endswith("_reward"))

DEFAULT_NAME = "preference_pairs"
METADATA_FILE = "metadata.json"
SPLIT = "train"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

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


class RecordError(LrJaxError, ValueError):
    """A bad preference record or dataset; the message names the file, record index and field."""


class AlreadyCommittedError(RecordError):
    """``out`` holds a committed dataset from different input and overwriting was not asked for."""


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


def shard_name(name: str, index: int, count: int) -> str:
    """TFDS shard file name: ``<name>-train.tfrecord-00000-of-00004``."""
    return f"{name}-{SPLIT}.tfrecord-{index:05d}-of-{count:05d}"


# ---------------------------------------------------------------------------------------------------- codec
# TFRecord file = records of: uint64 length | uint32 masked_crc32c(length) | data | uint32
# masked_crc32c(data), little-endian; a GZIP file is one gzip stream over that. The CRC mask is
# TensorFlow's (tsl/lib/hash/crc32c.h).

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _frame(record: bytes) -> bytes:
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record))


def _read_frames(f: IO[bytes], where: str) -> Iterator[bytes]:
    """Records of an open TFRecord stream; a bad checksum or a truncated record raises RecordError."""
    i = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise RecordError(f"{where}: record {i}: corrupt data (truncated record header)")
        (length,) = struct.unpack("<Q", header[:8])
        if _masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
            raise RecordError(f"{where}: record {i}: corrupt data (length checksum mismatch)")
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4:
            raise RecordError(f"{where}: record {i}: corrupt data (truncated record)")
        if _masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise RecordError(f"{where}: record {i}: corrupt data (data checksum mismatch)")
        yield data
        i += 1


@functools.cache
def _example_class() -> Any:
    """A message class wire-compatible with ``tensorflow.Example`` (example.proto / feature.proto), built in a
    private descriptor pool so it never clashes with TensorFlow's own when both are loaded."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(
        name="lr_jax/io/example.proto", package="lr_jax_tf", syntax="proto3"
    )
    F = descriptor_pb2.FieldDescriptorProto
    rep_, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL

    def msg(name: str, *fields: tuple[str, int, int, int, str]) -> Any:
        m = fd.message_type.add(name=name)
        for fname, number, label, ftype, type_name in fields:
            f = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                f.type_name = type_name
        return m

    msg("BytesList", ("value", 1, rep_, F.TYPE_BYTES, ""))
    fl = msg("FloatList", ("value", 1, rep_, F.TYPE_FLOAT, ""))
    fl.field[0].options.packed = True
    il = msg("Int64List", ("value", 1, rep_, F.TYPE_INT64, ""))
    il.field[0].options.packed = True
    feat = msg(
        "Feature",
        ("bytes_list", 1, opt, F.TYPE_MESSAGE, ".lr_jax_tf.BytesList"),
        ("float_list", 2, opt, F.TYPE_MESSAGE, ".lr_jax_tf.FloatList"),
        ("int64_list", 3, opt, F.TYPE_MESSAGE, ".lr_jax_tf.Int64List"),
    )
    feat.oneof_decl.add(name="kind")
    for f in feat.field:
        f.oneof_index = 0
    feats = msg("Features", ("feature", 1, rep_, F.TYPE_MESSAGE, ".lr_jax_tf.Features.FeatureEntry"))
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=F.TYPE_MESSAGE, type_name=".lr_jax_tf.Feature")
    entry.options.map_entry = True
    msg("Example", ("features", 1, opt, F.TYPE_MESSAGE, ".lr_jax_tf.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("lr_jax_tf.Example"))


# ---------------------------------------------------------------------------------------------------- writing


def encode_pair(pair: dict[str, Any], index: int = 0) -> bytes:
    """One pair -> serialized ``tf.train.Example`` bytes; bad input raises RecordError naming pair + field."""
    if not isinstance(pair, dict):
        raise RecordError(f"pair {index}: expected a dict, got {type(pair).__name__}")
    ex = _example_class()()
    feats = ex.features.feature
    for f in BYTES_FIELDS:
        if f not in pair:
            raise RecordError(f"pair {index}: missing field {f!r}")
        v = pair[f]
        if isinstance(v, int) and not isinstance(v, bool) and f == "prompt_id":
            v = str(v)
        if not isinstance(v, str):
            raise RecordError(f"pair {index}: field {f!r} must be a string, got {type(v).__name__}")
        feats[f].bytes_list.value.append(v.encode("utf-8"))
    for f in FLOAT_FIELDS:
        if f not in pair:
            raise RecordError(f"pair {index}: missing field {f!r}")
        v = pair[f]
        if v is None:
            v = math.nan
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise RecordError(f"pair {index}: field {f!r} must be a number or None, got {type(v).__name__}")
        if math.isnan(v) and f not in NAN_OK:
            raise RecordError(f"pair {index}: field {f!r} is NaN/None; rewards must be numbers")
        feats[f].float_list.value.append(float(v))
    return ex.SerializeToString(deterministic=True)


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


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
            writers[i % len(paths)].write(_frame(encode_pair(pair, i)))
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
        checksums = {f: _sha256(os.path.join(tmp, f)) for f in files}
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


# ---------------------------------------------------------------------------------------------------- reading


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


def decode_pair(raw: bytes, where: str = "record") -> dict[str, Any]:
    """Serialized ``tf.train.Example`` -> pair dict; a missing or ill-typed field raises RecordError."""
    from google.protobuf.message import DecodeError

    try:
        ex = _example_class().FromString(raw)
    except DecodeError as e:
        raise RecordError(f"{where}: corrupt data (not a tf.train.Example: {e})") from None
    feats = ex.features.feature
    row: dict[str, Any] = {}
    for f in BYTES_FIELDS:
        if f not in feats:
            raise RecordError(f"{where}: missing field {f!r}")
        vals = feats[f].bytes_list.value
        if len(vals) != 1:
            raise RecordError(f"{where}: field {f!r} must hold exactly one bytes value, found {len(vals)}")
        try:
            row[f] = vals[0].decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"{where}: field {f!r} is not UTF-8 ({e})") from e
    for f in FLOAT_FIELDS:
        if f not in feats:
            raise RecordError(f"{where}: missing field {f!r}")
        vals = feats[f].float_list.value
        if len(vals) != 1:
            raise RecordError(f"{where}: field {f!r} must hold exactly one float value, found {len(vals)}")
        row[f] = float(vals[0])
    return row


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


def _verify(local: str, shown: str, want: str) -> None:
    """A shard must be the one the commit recorded (catches a concurrent writer, a half-copied cache file)."""
    try:
        got = _sha256(local)
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
        frames = _read_frames(f, shown)
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

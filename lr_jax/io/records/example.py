"""The record schema: the fields of a pair and their ``tf.train.Example`` encoding (protobuf, no TensorFlow).

Each record is a ``tf.train.Example`` with bytes features :data:`BYTES_FIELDS` (UTF-8 text) and float
features :data:`FLOAT_FIELDS`; a failed dimension is NaN (:data:`NAN_OK`), a reward never is.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from lr_jax.io.records.errors import RecordError

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

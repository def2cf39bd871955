"""TFRecord framing: length + masked CRC32C, written and read without TensorFlow.

TFRecord file = records of: uint64 length | uint32 masked_crc32c(length) | data | uint32
masked_crc32c(data), little-endian; a GZIP file is one gzip stream over that. The CRC mask is
TensorFlow's (tsl/lib/hash/crc32c.h).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO

from lr_jax.io.records.errors import RecordError

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc(header)) + record + struct.pack("<I", masked_crc(record))


def read_frames(f: IO[bytes], where: str) -> Iterator[bytes]:
    """Records of an open TFRecord stream; a bad checksum or a truncated record raises RecordError."""
    i = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise RecordError(f"{where}: record {i}: corrupt data (truncated record header)")
        (length,) = struct.unpack("<Q", header[:8])
        if masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
            raise RecordError(f"{where}: record {i}: corrupt data (length checksum mismatch)")
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4:
            raise RecordError(f"{where}: record {i}: corrupt data (truncated record)")
        if masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise RecordError(f"{where}: record {i}: corrupt data (data checksum mismatch)")
        yield data
        i += 1

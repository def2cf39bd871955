"""The safetensors file format in NumPy (ml_dtypes gives bfloat16): no torch needed, tensors memory-mapped.

`read_safetensors` / `write_safetensors` for one file, `load_hf_tensors` for a (sharded) HF checkpoint dir,
and `Tensors`, the shape-checking name -> array lookup the per-family conversions read from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from lr_jax.convert.errors import ConvertError

_ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


_FLOAT_ST_DTYPES = ("BF16", "F16", "F32", "F64")  # what a weight may be stored as


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-mapped (read-only) tensors of one .safetensors file; copy them before overwriting the file.

    The header is checked against the file before any tensor is viewed: a truncated file, a header that is
    not the safetensors layout, or a tensor whose byte range does not match its dtype and shape is a
    ConvertError naming the file and the tensor (NumPy would only say "cannot reshape array").
    """
    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path}: is a directory, not a safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            header_len = int.from_bytes(head, "little")
            if len(head) < 8 or header_len > size - 8:
                raise ConvertError(
                    f"{path}: not a safetensors file or truncated ({size} bytes; the first 8 bytes give a "
                    f"header of {header_len} bytes)"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not a safetensors file (bad header: {e})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: not a safetensors file (header is a JSON {type(header).__name__}, "
                           "expected an object)")
    data_size = size - 8 - header_len
    entries = {n: _tensor_entry(path, n, info) for n, info in header.items() if n != "__metadata__"}
    need = max((end for *_, end in entries.values()), default=0)
    if need > data_size:
        # Name the first tensor (in file order) that the cut reaches: the one a reader would fail on.
        name, (dtype, shape, start, end) = min(
            ((n, e) for n, e in entries.items() if e[3] > data_size), key=lambda item: item[1][2]
        )
        raise ConvertError(
            f"{path}: truncated: tensor {name} ({_ST_NAMES[dtype]} {list(shape)}) needs bytes [{start}, "
            f"{end}) of the data section, which has {data_size} (expected a file of {8 + header_len + need} "
            f"bytes, got {size})"
        )
    # np.memmap refuses an empty range, so a file of only empty tensors gets an empty buffer instead.
    if data_size:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    else:
        data = np.zeros(0, np.uint8)
    return {name: data[a:b].view(dtype).reshape(shape) for name, (dtype, shape, a, b) in entries.items()}


def _tensor_entry(path: Path, name: str, info: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, checked: known dtype, byte range = dtype x shape."""
    def bad(why: str) -> ConvertError:
        return ConvertError(f"{path}: tensor {name}: bad header entry {info!r} ({why})")

    if not isinstance(info, dict):
        raise bad("expected an object with dtype, shape, data_offsets")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise bad(f"no {key!r}")
    if not isinstance(info["dtype"], str) or info["dtype"] not in _ST_DTYPES:
        raise ConvertError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    dtype = _ST_DTYPES[info["dtype"]]
    shape, offsets = info["shape"], info["data_offsets"]

    def ints(v: Any) -> bool:
        return isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)

    if not ints(shape):
        raise bad("shape must be a list of non-negative ints")
    if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise bad("data_offsets must be [start, end] with 0 <= start <= end")
    start, end = offsets
    want = math.prod(shape) * dtype.itemsize
    if end - start != want:
        raise ConvertError(
            f"{path}: tensor {name} has {end - start} bytes, expected {want} for dtype {info['dtype']} "
            f"shape {shape}"
        )
    return dtype, tuple(shape), start, end


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write tensors (C order, little endian) with `{"format": "pt"}` metadata, as transformers expects."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _ST_NAMES:
            raise ConvertError(f"{path}: cannot write tensor {name} of dtype {arr.dtype}")
        header[name] = {
            "dtype": _ST_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())


def load_hf_tensors(hf_dir: Path) -> dict[str, tuple[np.ndarray, Path]]:
    """All tensors of an HF checkpoint dir: sharded (index json) or single/multiple safetensors files."""
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"{index}: invalid JSON ({e})") from None
        except (KeyError, TypeError):
            raise ConvertError(f"{index}: field 'weight_map' is missing") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ConvertError(f"{index}: field 'weight_map' must map tensor names to file names")
        files = sorted({hf_dir / f for f in weight_map.values()})
    else:
        files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{hf_dir}: no *.safetensors files (PyTorch .bin checkpoints are not supported)")
    out: dict[str, tuple[np.ndarray, Path]] = {}
    for file in files:
        if not file.exists():
            raise ConvertError(f"{index}: lists {file.name}, which does not exist")
        for name, arr in read_safetensors(file).items():
            if name in out:
                # Which copy would win depends on file order: refuse instead of picking one silently.
                raise ConvertError(f"{file}: tensor {name} is also in {out[name][1]}")
            out[name] = (arr, file)
    return out


class Tensors:
    """Name -> array lookup that checks shapes, tracks what was used and reports the file in errors."""

    IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq", "masked_bias", "attn.bias")

    def __init__(self, hf_dir: Path, tensors: dict[str, tuple[np.ndarray, Path]] | None = None):
        """The tensors of HF dir `hf_dir`, or `tensors` (name -> (array, file it came from)) when given."""
        self.hf_dir = hf_dir
        self.tensors = load_hf_tensors(hf_dir) if tensors is None else tensors
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            files = sorted({str(f) for _, f in self.tensors.values()})
            where = files[0] if len(files) == 1 else str(self.hf_dir)  # the file, when there is only one
            raise ConvertError(f"{where}: missing tensor {name} (expected shape {list(shape)})")
        arr, file = self.tensors[name]
        if tuple(arr.shape) != tuple(shape):
            raise ConvertError(
                f"{file}: tensor {name} has shape {list(arr.shape)}, expected {list(shape)} from config.json"
            )
        if _ST_NAMES[arr.dtype] not in _FLOAT_ST_DTYPES:
            # astype(float32) would turn integer or bool data into "weights" without a word.
            raise ConvertError(
                f"{file}: tensor {name} has dtype {_ST_NAMES[arr.dtype]}, expected a floating-point dtype "
                f"({', '.join(_FLOAT_ST_DTYPES)})"
            )
        self.used.add(name)
        return arr

    def check_all_used(self) -> None:
        left = sorted(n for n in self.tensors if n not in self.used and not n.endswith(self.IGNORED_SUFFIXES))
        if left:
            raise ConvertError(
                f"{self.hf_dir}: unexpected tensor(s) not used by the conversion: {left[:8]}"
                + (f" ... ({len(left)} total)" if len(left) > 8 else "")
            )


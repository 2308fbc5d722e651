"""Write safetensors files of MLX arrays, also from a thread that must not wait for MLX.

`mx.save_safetensors` synchronises with MLX's scheduler. When a data-parallel peer dies, the
surviving process's CPU stream can stay blocked in the dead collective for ever, and any MLX call
that waits for that stream hangs too. The last finished step's arrays are already evaluated, so
`direct=True` writes their buffers (Python's buffer protocol, no scheduling) in the safetensors
layout: an 8-byte header length, a JSON header, then the raw little-endian data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx

_DTYPES = {mx.float32: "F32", mx.float16: "F16", mx.bfloat16: "BF16", mx.float64: "F64", mx.int8: "I8",
           mx.int16: "I16", mx.int32: "I32", mx.int64: "I64", mx.uint8: "U8", mx.uint16: "U16",
           mx.uint32: "U32", mx.uint64: "U64", mx.bool_: "BOOL"}


def save(path: str | Path, arrays: dict, metadata: dict | None = None, *, direct: bool = False) -> None:
    if not direct:
        mx.eval(arrays)
        mx.save_safetensors(str(path), arrays, metadata=metadata)
        return
    header, blobs, offset = {}, [], 0
    for name in sorted(arrays):
        a = arrays[name]
        data = memoryview(a).cast("B") if a.size else b""
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            fh.write(blob)


_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "U8": 1,
             "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 << 20


def read_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size without reading the
    data; ValueError says what is wrong (MLX's own loader ends such files in a C++ exception)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"it is {size} bytes long, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(MAX_HEADER, size - 8):
            raise ValueError(f"its header claims {n:,} bytes but the file has {size:,}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    data_size = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = 1
            for d in shape:
                if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                    raise TypeError
                count *= d
            ok = (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_size
                  and (dtype not in _ITEMSIZE or end - begin == count * _ITEMSIZE[dtype]))
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"tensor '{name[:100]}' has a malformed entry in the header") from None
        if not ok:
            raise ValueError(f"tensor '{name[:100]}' does not fit in the file (truncated or damaged)")
    return header

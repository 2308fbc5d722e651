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

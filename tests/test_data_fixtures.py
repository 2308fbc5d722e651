"""Helpers shared by the tests/test_data_*.py modules: tiny images and files written on the fly."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def png(path: Path, size=(8, 6), colour=(200, 30, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else 0).save(path)
    return path


def jsonl(path: Path, rows, *, raw_lines=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def roles(sample) -> list[str]:
    return [t.role for t in sample.turns]


def test_helpers_write_files(tmp_path):
    assert png(tmp_path / "a.png").stat().st_size > 0
    assert jsonl(tmp_path / "a.jsonl", [{"a": 1}]).read_text() == '{"a": 1}\n'


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb, without the pixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def png_bytes(size=(8, 6), colour=(10, 20, 30)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()

"""Fast content fingerprints of a dataset or a model: "is this the same data as that run's?"

Reading every image of a large dataset would take minutes, so a fingerprint hashes what changes
when the content changes: each file's relative name, size and modification time, plus the first
and last KiB of the files that are not images (annotations, weights' headers and tails, configs).
Thousands of files take milliseconds; the result is a short hex digest with a kind prefix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

EDGE = 1024  # bytes read from each end of a non-image file
MAX_FILES = 200_000  # beyond this a folder's fingerprint covers the first files (sorted) and the count
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
SKIP_DIRS = {".git", "__pycache__", ".cache", ".ipynb_checkpoints"}


def _edges(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            head = fh.read(EDGE)
            if size <= 2 * EDGE:
                return head + fh.read()
            fh.seek(-EDGE, os.SEEK_END)
            return head + fh.read(EDGE)
    except OSError:
        return b""


def _walk(root: Path):
    """(relative path, stat) of every regular file under root, sorted, hidden folders skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            try:
                st = full.stat()
            except OSError:
                continue
            out.append((full.relative_to(root).as_posix(), full, st))
            if len(out) >= MAX_FILES:
                break
        if len(out) >= MAX_FILES:
            break
    out.sort(key=lambda t: t[0])
    return out


def fingerprint_path(path: str | Path) -> str:
    """`file:<hex>`, `dir:<hex>` for local content, `missing:` when the path does not exist."""
    p = Path(path).expanduser()
    h = hashlib.blake2b(digest_size=12)
    try:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            h.update(_edges(p, st.st_size))
            return "file:" + h.hexdigest()
        if p.is_dir():
            files = _walk(p)
            for rel, full, st in files:
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
                if full.suffix.lower() not in IMAGE_SUFFIXES:
                    h.update(_edges(full, st.st_size))
            h.update(f"files={len(files)}".encode())
            return "dir:" + h.hexdigest()
    except OSError:
        pass
    return "missing:"


def fingerprint_model(source: str) -> str:
    """A local model folder's fingerprint; for a hub id not on disk, the id itself (`hub:<id>`)."""
    if not source:
        return ""
    p = Path(source).expanduser()
    if p.exists():
        return fingerprint_path(p)
    return f"hub:{source}"

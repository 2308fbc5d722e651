"""The run folders this data folder has recorded, kept beside the database as plain text.

The run folders are the source of truth (train_config.toml, metrics.jsonl, checkpoints/); the
database is an index over them. A damaged database cannot say where its runs were, so every run
folder recorded is also appended to `run-folders.txt` (one absolute path a line). Each line goes
in with one O_APPEND write, which the OS applies whole even with several processes appending, so
no process's line is lost and a kill leaves at most one unfinished last line (ignored).

A deleted run's folder is forgotten the same way: a line `-PATH` (never an absolute path, so an
older Finetune skips it), which takes back every earlier `PATH` line; a later `PATH` (the folder
trained again) brings it back. So a run deleted with its files kept stays deleted when the
database is rebuilt.
"""

from __future__ import annotations

import os
from pathlib import Path

INDEX_NAME = "run-folders.txt"
FORGET = "-"  # a line "-PATH": the run in PATH was deleted


def index_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / INDEX_NAME


def read(data_dir: str | Path) -> list[str]:
    """The recorded run folders, oldest first, each once (an unreadable index reads as empty)."""
    try:
        raw = index_path(data_dir).read_bytes()
    except OSError:
        return []
    text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # an unfinished last line (a killed writer)
    seen: dict[str, None] = {}
    for line in lines:
        line = line.strip()
        if "\x00" in line:
            continue
        if line.startswith(FORGET) and os.path.isabs(line[len(FORGET):]):
            seen.pop(line[len(FORGET):], None)
        elif line and os.path.isabs(line):
            seen.setdefault(line, None)
    return list(seen)


def add(data_dir: str | Path, *folders: str | Path) -> None:
    """Remember run folders (already listed ones are skipped). Raises OSError when it cannot write."""
    path = index_path(data_dir)
    try:
        raw = path.read_bytes()
    except OSError:
        raw = b""
    known = set(read(data_dir))
    new = []
    for f in folders:
        f = str(f)
        if f and f not in known and "\n" not in f and "\x00" not in f:
            known.add(f)
            new.append(f)
    if new:
        _append(path, raw, new)


def forget(data_dir: str | Path, folder: str | Path) -> None:
    """The run in `folder` was deleted: a rebuild must not bring it back (raises OSError)."""
    folder = str(folder)
    if folder in read(data_dir) and "\n" not in folder:
        path = index_path(data_dir)
        _append(path, path.read_bytes(), [FORGET + folder])


def _append(path: Path, raw: bytes, lines: list[str]) -> None:
    """One O_APPEND write of whole lines (after a newline if the last line was left unfinished)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n" if raw and not raw.endswith(b"\n") else "") + "".join(f + "\n" for f in lines)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)

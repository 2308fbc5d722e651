"""Atomic writes: a crash or kill never leaves a half-written file or folder in place.

Files are written to a temporary sibling, flushed and fsynced, then renamed over the target.
Folders are built under a temporary sibling name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in `path` durable (POSIX: the directory itself is fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets a normal file's mode
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def temp_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it onto `path` if the block succeeds.

    For writers that insist on a file name (mx.save_safetensors, coremltools)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if tmp.is_dir():
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        else:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staged_dir(dest: str | Path, *, overwrite: bool = False, marker: str | None = None,
               publish: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name beside `dest`, then move it into place whole.

    If the block raises (or the process dies), `dest` is untouched and the staging folder is
    removed (or, after a kill, left under a hidden `.name.staging-*` name that is never `dest`).
    `marker`: a file in the staging folder holding this process's id while the block runs, so a
    later process can tell a dead export's folder from a live one (core.export.publish).
    `publish(stage, dest)`: how the finished folder replaces `dest` (export bundles keep a journal:
    core.export.publish.publish); by default an older `dest` is renamed aside, then removed."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # with a marker, the name carries the pid too: a kill between creating the marker and writing
    # it leaves an empty marker, and the name still says whose folder it was
    owner = f"{os.getpid()}-" if marker else ""
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-{owner}", dir=dest.parent))
    stage.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; the folder gets a normal folder's mode
    try:
        if marker:
            (stage / marker).write_text(str(os.getpid()))
        yield stage
        if dest.exists() and not overwrite:  # made by someone else meanwhile: never replaced
            raise FileExistsError(dest)
        if marker:
            (stage / marker).unlink(missing_ok=True)
        (publish or _swap_in)(stage, dest)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, dest: Path) -> None:
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, trash)
        os.replace(stage, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, dest)
    fsync_dir(dest.parent)

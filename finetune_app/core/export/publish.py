"""Move a finished export into place, replacing an older bundle, so that a kill at any instant
leaves either the old or the new bundle at the destination.

Two renames cannot swap folders atomically everywhere (Linux has renameat2(RENAME_EXCHANGE), macOS
renamex_np(RENAME_SWAP), neither portable), so the swap keeps a journal instead:

1. `.NAME.export-swap.json` is written (atomically) beside the destination: the backup's and the
   staging folder's names, the process id and its start token;
2. the old bundle is renamed to the backup `.NAME.old-<pid>-<n>`;
3. the staging folder is renamed to the destination;
4. the journal is removed, then the backup.

`recover(dest)` (run by every export before it looks at its destination) reads a journal whose
process is gone: destination missing -> the backup is renamed back (the old bundle returns);
destination present -> the new bundle made it, the backup is removed. A backup without a journal
(left by an older Finetune, whose swap had none) is treated the same way. Staging folders of dead
exports are removed (`remove_stale_stages`).

While a swap is under way a pointer to its destination also sits in the data folder
(`export-swaps/`), so `recover_pending()` (run at the start of every export, whatever its
destination, and callable at the app's start) repairs a killed swap elsewhere too. Nothing here
imports MLX or Qt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from finetune_app.core import atomic

STAGE_MARKER = ".finetune-export.pid"  # in a staging folder while its export runs: the pid
STALE_UNMARKED_SECONDS = 60.0


def journal_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.export-swap.json")


def _backup_re(dest: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(dest.name)}\.old-(\d+)(?:-\d+)?$")


def _token(pid: int) -> str | None:
    from finetune_app.core.runs import process_start_token

    return process_start_token(pid)


def _alive(pid: int | None, token: str | None = None) -> bool:
    from finetune_app.core.runs import pid_alive

    return bool(pid) and pid_alive(pid, token)


def publish(stage: Path, dest: Path) -> None:
    """Rename the finished `stage` to `dest`, replacing an existing `dest` recoverably. An export
    stages its bundle with `atomic.staged_dir(dest, marker=STAGE_MARKER, publish=publish)`."""
    marker = stage / STAGE_MARKER
    if marker.exists():
        marker.unlink()
    if not dest.exists():
        os.replace(stage, dest)
        atomic.fsync_dir(dest.parent)
        return
    pid = os.getpid()
    n = 0
    backup = dest.with_name(f".{dest.name}.old-{pid}-{n}")
    while backup.exists():
        n += 1
        backup = dest.with_name(f".{dest.name}.old-{pid}-{n}")
    journal = journal_path(dest)
    pointer = _point_at(dest)
    atomic.write_json(journal, {"dest": dest.name, "backup": backup.name, "stage": stage.name, "pid": pid,
                                "token": _token(pid), "time": time.time()})
    try:
        os.replace(dest, backup)
    except BaseException:  # the old bundle cannot move (an immutable folder): it stays as it was
        journal.unlink(missing_ok=True)
        if pointer is not None:
            pointer.unlink(missing_ok=True)
        raise
    try:
        os.replace(stage, dest)
    except BaseException:
        os.replace(backup, dest)  # the old bundle goes back before the error is reported
        journal.unlink(missing_ok=True)
        raise
    atomic.fsync_dir(dest.parent)
    journal.unlink(missing_ok=True)
    atomic.fsync_dir(dest.parent)
    shutil.rmtree(backup, ignore_errors=True)
    if pointer is not None:
        pointer.unlink(missing_ok=True)


def _pending_dir() -> Path:
    from finetune_app.core.runs import data_dir

    return data_dir() / "export-swaps"


def _point_at(dest: Path) -> Path | None:
    """Note `dest` in the data folder while it is swapped (best effort: the journal beside it is
    what recovery trusts; this only lets a later export elsewhere, or the app, find it)."""
    import hashlib

    pointer = _pending_dir() / (hashlib.sha1(str(dest).encode("utf-8", "surrogateescape")).hexdigest() + ".json")
    try:
        atomic.write_json(pointer, {"dest": str(dest)})
    except OSError:
        return None
    return pointer


def recover_pending() -> list[str]:
    """Repair every killed swap noted in the data folder; returns one sentence per repair."""
    done: list[str] = []
    try:
        pointers = sorted(_pending_dir().glob("*.json"))
    except OSError:
        return done
    for pointer in pointers:
        try:
            dest = Path(json.loads(pointer.read_text(encoding="utf-8"))["dest"])
        except (OSError, ValueError, KeyError, TypeError):
            pointer.unlink(missing_ok=True)
            continue
        try:
            if journal_path(dest).is_file() and _journal_alive(dest):
                continue  # that export is swapping right now
            done += recover(dest)
            done += [f"Removed the staging folder '{p}' of a killed export." for p in remove_stale_stages(dest)]
        except OSError:
            continue  # try again next time
        pointer.unlink(missing_ok=True)
    return done


def _journal_alive(dest: Path) -> bool:
    try:
        data = json.loads(journal_path(dest).read_text(encoding="utf-8"))
        return _alive(int(data["pid"]), data.get("token"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def recover(dest: Path) -> list[str]:
    """Undo or finish what a killed export left at `dest`; returns one sentence per repair."""
    done: list[str] = []
    parent = dest.parent
    if not parent.is_dir():
        return done
    journal = journal_path(dest)
    pattern = _backup_re(dest)
    if journal.is_file():
        try:
            data = json.loads(journal.read_text(encoding="utf-8"))
            pid, token, backup_name = int(data["pid"]), data.get("token"), str(data["backup"])
            stage_name = str(data.get("stage") or "")
        except (OSError, ValueError, KeyError, TypeError):
            pid, token, backup_name, stage_name = None, None, "", ""
        if pid is not None and _alive(pid, token):
            return done  # that export is swapping right now
        if backup_name and pattern.match(backup_name):
            done += _settle(dest, parent / backup_name)
        if re.match(rf"^\.{re.escape(dest.name)}\.staging-[^/\\]+$", stage_name) and (parent / stage_name).is_dir():
            shutil.rmtree(parent / stage_name, ignore_errors=True)  # its marker was already gone
        journal.unlink(missing_ok=True)
    for backup in sorted(parent.iterdir()) if parent.is_dir() else []:
        m = pattern.match(backup.name)
        if m and backup.is_dir() and not _alive(int(m.group(1))):
            done += _settle(dest, backup)
    return done


def _settle(dest: Path, backup: Path) -> list[str]:
    if not backup.is_dir():
        return []
    if not dest.exists():
        os.replace(backup, dest)
        atomic.fsync_dir(dest.parent)
        return [f"An earlier export was killed while replacing '{dest}': its previous bundle was put back."]
    shutil.rmtree(backup, ignore_errors=True)
    return [f"Removed the previous bundle's backup '{backup.name}' left by a killed export (the new one is in place)."]


def remove_stale_stages(dest: Path) -> list[Path]:
    """Staging folders of earlier exports to `dest` whose process is gone (killed mid-export)."""
    removed = []
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.glob(f".{dest.name}.staging-*"):
        try:
            pid = int((p / STAGE_MARKER).read_text().strip())
        except (OSError, ValueError):  # no marker, or killed before its pid was written: the name's pid
            named = re.match(rf"^\.{re.escape(dest.name)}\.staging-(\d+)-", p.name)
            pid = int(named.group(1)) if named else None
        if pid is None:
            # An export writes its marker right after creating the folder and removes it just before
            # the rename: a folder without one for a while was killed at either moment.
            try:
                stale = time.time() - p.stat().st_mtime > STALE_UNMARKED_SECONDS or not any(p.iterdir())
                stale = stale and time.time() - p.stat().st_mtime > 5
            except OSError:
                stale = False
        else:
            stale = not _alive(pid)
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed

"""Runs are never lost: every training run is recorded in a SQLite database in the app-data folder.

* `RunRecorder` is an engine listener: it records a run's start (config, run folder, model and
  dataset identity, process id), every train/validation report, sample generations, checkpoints,
  notices and the final state, each as one small transaction.
* `mark_interrupted()` (run at start-up by the app, `runs list` and `resumable_runs()`) finds runs
  still marked "running" whose process is gone (or whose heartbeat went stale on another host)
  and marks them "interrupted"; `resume_run()` continues one from its newest good checkpoint.
* The database lives at `data_dir()/runs.sqlite3`: `$FINETUNE_DATA_DIR` when set, else
  `~/Library/Application Support/Finetune` (macOS), `%APPDATA%\\Finetune` (Windows),
  `$XDG_DATA_HOME/finetune-app` or `~/.local/share/finetune-app` (Linux).
* The run folders are the source of truth; the database indexes them. Every recorded folder is
  also listed in `run-folders.txt` beside it (run_records.folder_index), so `open_store()` can move
  a damaged database aside (`runs.sqlite3.damaged-<time>`, never deleted) and rebuild it from the
  folders, saying so. A database that cannot be written (read-only folder) opens read-only;
  locked, full-disk and other SQLite failures are FinetuneErrors naming the file and the fix.

No Qt and no MLX at import: `finetune-app runs list` must be instant.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_app.core import run_folder
from finetune_app.core.errors import FinetuneError
from finetune_app.core.run_records import folder_index
from finetune_app.core.run_records.fingerprint import fingerprint_model, fingerprint_path
from finetune_app.core.run_records.store import (STATUSES, CheckpointRecord, DamagedDatabase, DatabaseReadOnly,
                                                 RunRecord, RunStore)

__all__ = ["RunRecorder", "RunRecord", "RunStore", "CheckpointRecord", "STATUSES", "data_dir", "db_path",
           "open_store", "mark_interrupted", "resumable_runs", "resume_run", "resume_config", "delete_run",
           "disk_usage", "resolve_run", "record_export", "take_notices", "is_resumable", "recover_at_startup", "import_run"]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "FINETUNE_DATA_DIR"
RECORD_ENV = "FINETUNE_RECORD_RUNS"  # "0": the CLI does not record runs
DB_NAME = "runs.sqlite3"
HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 180.0  # a run on another host with no heartbeat for this long is interrupted
ENDED = ("finished", "stopped", "failed", "interrupted")


# ---- where ---------------------------------------------------------------------------------------

def data_dir() -> Path:
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Finetune"
    if os.name == "nt":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "Finetune"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else home / ".local" / "share") / "finetune-app"


def db_path() -> Path:
    return data_dir() / DB_NAME


_NOTICES: list[str] = []  # what opening the database had to do, until a front end shows it


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)
    _NOTICES.append(text)


def take_notices() -> list[str]:
    """The repairs open_store made in this process since the last call (the app shows them)."""
    out = list(_NOTICES)
    _NOTICES.clear()
    return out


def open_store(path: str | Path | None = None, *, notify=None) -> RunStore:
    """Open (creating or upgrading) the run database.

    A damaged one (a folder, empty, garbage, truncated, another schema) is moved aside and
    rebuilt from the run folders; a new or emptied one is refilled from them; one that cannot be
    written opens read-only. What was done is in `store.notice` and told to `notify(message)`
    (default: a warning on stderr). Other failures raise a FinetuneError naming the file."""
    path = Path(path) if path else db_path()
    notify = notify or _warn
    try:
        store = _open(path)
    except DamagedDatabase as err:
        aside = move_aside(path, err.reason)
        store = _open(path)
        folders = folder_index.read(path.parent) + salvage_folders(aside)
        found, skipped = rebuild(store, folders)
        store.notice = (f"{path}: the run database {err.reason}. It was moved to '{aside}' and rebuilt from the "
                        f"run folders: {_runs_recovered(found, skipped)}")
        notify(store.notice)
        return store
    if store.read_only:
        store.notice = (f"{path}: the run database's folder cannot be written, so the run history is read-only "
                        f"(nothing can be recorded or deleted). Make '{path.parent}' writable, or set "
                        f"{DATA_DIR_ENV} to a writable folder.")
        notify(store.notice)
    elif store.migrated_from == 0:  # new, or emptied (a zero-length file): refill it from the folders we know
        folders = folder_index.read(path.parent)
        found, skipped = rebuild(store, folders) if folders else (0, 0)
        if found or skipped:  # a listed folder that holds no run yet (its first run starting) is nothing to report
            store.notice = f"{path}: the run database was missing or empty; rebuilt from the run folders: " + \
                _runs_recovered(found, skipped)
            notify(store.notice)
    elif not folder_index.index_path(path.parent).exists():  # recorded by an older Finetune: start the list
        try:
            folder_index.add(path.parent, *[r.run_dir for r in store.runs()])
        except (OSError, FinetuneError):
            pass
    return store


def _open(path: Path) -> RunStore:
    try:
        return RunStore(path)
    except DatabaseReadOnly:
        if not path.is_file():
            raise
        return RunStore(path, read_only=True)


def _runs_recovered(found: int, skipped: list[str]) -> str:
    text = f"{found} run{'s' if found != 1 else ''} recovered."
    if skipped:
        text += f" Skipped {len(skipped)}: " + "; ".join(skipped[:3]) + "."
    return text + " Add a run folder it does not list with `finetune-app runs import DIR`."


def move_aside(path: Path, reason: str = "is damaged") -> Path:
    """Rename a damaged database (and its -wal/-shm/-journal files) to `NAME.damaged-<time>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    k = 1
    while aside.exists() or aside.is_symlink():
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{k}")
        k += 1
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return aside  # another process moved it first (its new -wal must stay where it is)
    except OSError as err:
        raise FinetuneError(f"The run database {reason}, and it could not be moved aside ({err.strerror}).",
                            f"Move or rename it yourself (nothing is deleted), or set {DATA_DIR_ENV} to another "
                            "folder.", file=path) from None
    for suffix in ("-wal", "-shm", "-journal"):  # a stale -wal would be replayed into the new database
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            try:
                os.rename(companion, aside.with_name(aside.name + suffix))
            except OSError as err:
                raise FinetuneError(f"The run database {reason}; its '{companion.name}' could not be moved aside "
                                    f"({err.strerror}).", "Move it away yourself, then run the command again.",
                                    file=companion) from None
    return aside


def salvage_folders(damaged: Path) -> list[str]:
    """The run folders a damaged database still names, where its `runs` table can be read."""
    import sqlite3

    if not damaged.is_file():
        return []
    try:
        db = sqlite3.connect(f"{damaged.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return []
    try:
        return [str(r[0]) for r in db.execute("SELECT run_dir FROM runs ORDER BY id") if isinstance(r[0], str)]
    except sqlite3.Error:
        return []
    finally:
        db.close()


def rebuild(store: RunStore, folders) -> tuple[int, list[str]]:
    """Record every run folder of `folders` that still holds a run. Returns (recorded, skipped reasons)."""
    found, skipped = 0, []
    seen = set()
    for folder in folders:
        if folder in seen or not run_folder.config_path(folder).is_file():
            continue  # deleted since, or never got as far as its settings
        seen.add(folder)
        try:
            import_run(folder, store)
            found += 1
        except FinetuneError as err:
            skipped.append(err.message)
        except Exception as err:  # a damaged folder must not stop the others
            skipped.append(f"{folder}: {err}")
    return found, skipped


def remember_folder(folder: str | Path, where: Path | None = None) -> None:
    """Add a run folder to the list kept beside the database (raises OSError if it cannot)."""
    folder_index.add(where or data_dir(), _norm_dir(folder))


def _norm_dir(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


# ---- which process -------------------------------------------------------------------------------

def process_start_token(pid: int) -> str | None:
    """Something that identifies a process beyond its pid (pids are reused): its start time."""
    try:
        if sys.platform.startswith("linux"):
            stat = Path(f"/proc/{pid}/stat").read_text()
            return "linux:" + stat[stat.rindex(")") + 2:].split()[19]  # field 22: starttime
        if os.name == "posix":
            import subprocess

            out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
            text = out.stdout.strip()
            return f"ps:{text}" if text else None
    except (OSError, ValueError, IndexError):
        return None
    except Exception:
        return None
    return None


def pid_alive(pid: int | None, token: str | None = None) -> bool:
    """Is process `pid` running (not a zombie) and, when its start token is known, the same process?"""
    if not pid or pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - not a supported training platform
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    except OSError:
        return False
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X"):
                return False  # killed, waiting for its parent to reap it
        except (OSError, ValueError):
            return False
    if token:
        now = process_start_token(pid)
        if now is not None and now != token:
            return False  # the pid was reused by another process
    return True


def _host() -> str:
    return socket.gethostname()


# ---- recording -----------------------------------------------------------------------------------

class RunRecorder:
    """Engine listener that records a run: `Trainer(cfg, listeners=[RunRecorder(cfg, resume=...)])`.

    The database opens on the first event, on whichever thread runs the trainer. A failing
    database never stops training: `warn(message)` is told once (default: stderr) and recording
    goes on trying. The run folder is listed beside the database first, so a database that fails
    now can be rebuilt with this run later."""

    def __init__(self, config, *, resume: bool = False, store: RunStore | None = None,
                 path: str | Path | None = None, heartbeat_seconds: float = HEARTBEAT_SECONDS, warn=None):
        self.config = config
        self.resume = resume
        self.run_dir = _norm_dir(config.output) if config.output else ""
        self._store = store
        self._own_store = store is None
        self._path = path
        self.run_id: int | None = None
        self.heartbeat_seconds = heartbeat_seconds
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._warned = False
        self._warn = warn or _warn
        self.errors = 0

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = open_store(self._path, notify=self._warn)
        return self._store

    @property
    def _db_file(self) -> Path:
        return self._store.path if self._store is not None else Path(self._path or db_path())

    def __call__(self, event) -> None:
        try:
            self._handle(event)
        except Exception as err:
            self.errors += 1
            if not self._warned:
                self._warned = True
                why = err.message if isinstance(err, FinetuneError) else f"{self._db_file}: {type(err).__name__}: {err}"
                self._warn(f"this run is not being recorded in the run history: {why} Training goes on; "
                           f"once the database works again, record it with `finetune-app runs import {self.run_dir}`.")
                log.debug("recording the run failed", exc_info=True)

    # events -----------------------------------------------------------------------------------
    def _handle(self, event) -> None:
        from finetune_app.core.training import events as ev

        if isinstance(event, ev.StateChanged):
            self._state(event)
            return
        if self.run_id is None:
            return
        if isinstance(event, ev.TrainReport):
            self.store.add_train(self.run_id, ev.to_dict(event))
        elif isinstance(event, ev.ValReport):
            self.store.add_val(self.run_id, ev.to_dict(event))
        elif isinstance(event, ev.EvalReport):
            self.store.add_eval(self.run_id, ev.to_dict(event))
        elif isinstance(event, ev.ObjectiveReport):
            self.store.add_objective(self.run_id, ev.to_dict(event))
        elif isinstance(event, ev.SampleReport):
            self.store.add_samples(self.run_id, event.step, [ev.to_dict(i) for i in event.items])
        elif isinstance(event, ev.CheckpointSaved):
            self._sync_checkpoints(new_step=event.step)
        elif isinstance(event, ev.Notice):
            self.store.log(self.run_id, "notice", event.message)

    def _state(self, event) -> None:
        s = event.state
        if s == "loading":
            self._start()
        elif self.run_id is None:
            return
        elif s == "started":
            # a resume restarts at the checkpoint's step; anything recorded after it comes again
            self.store.forget_after(self.run_id, event.step)
            if self.resume:
                remove_stale_temporaries(self.run_dir)
            self._sync_checkpoints()
        elif s in ("finished", "stopped", "failed"):
            self._stop_heartbeat()
            self._sync_checkpoints()
            self.store.set_status(self.run_id, s, event.reason, step=event.step or None)
            self.store.update_run(self.run_id, disk_bytes=disk_usage(self.run_dir))
        elif s in ("paused", "resumed", "stopping", "preparing"):
            self.store.heartbeat(self.run_id)

    def _start(self) -> None:
        cfg = self.config
        try:  # opened (and refilled if new) before this run's folder is listed, so a first run is no "repair"
            self.store
        except FinetuneError:
            pass  # the same error comes again below, where it is reported; the folder is listed all the same
        if self.run_dir:
            try:
                remember_folder(self.run_dir, self._db_file.parent)
            except OSError as err:
                self._warn(f"could not list the run folder in {folder_index.index_path(self._db_file.parent)} "
                           f"({err.strerror or err}); a rebuilt run history would miss this run.")
        config = cfg.to_dict()
        pid = os.getpid()
        token = process_start_token(pid)
        model_fp = fingerprint_model(cfg.model)
        data_fp = fingerprint_path(cfg.data) if cfg.data else ""
        # The folder's own record: a resumed run continues it; so does a run started again in the
        # folder of one killed before its first checkpoint (run_folder.check_new_output allows no
        # other), which starts over: its history shows one run per folder, not a dead twin that
        # the launch would offer to recover.
        existing = self.store.find_by_dir(self.run_dir) if self.run_dir else None
        if existing is not None:
            self.run_id = existing.id
            self.store.begin_session(existing.id, config=config, pid=pid, host=_host(), pid_started=token,
                                     model_fingerprint=model_fp, data_fingerprint=data_fp,
                                     what="resumed" if self.resume else "started again")
            if not self.resume:
                self.store.update_run(existing.id, model=cfg.model, data=cfg.data, total_steps=cfg.iters or 0)
        else:
            self.run_id = self.store.create_run(
                name=Path(self.run_dir).name or "run", run_dir=self.run_dir, config=config, model=cfg.model,
                model_fingerprint=model_fp, data=cfg.data, data_fingerprint=data_fp, pid=pid, host=_host(),
                pid_started=token, total_steps=cfg.iters or 0)
            if self.resume:  # a run trained before it was recorded: bring in what its folder knows
                import_metrics(self.store, self.run_id, self.run_dir)
        self._start_heartbeat()

    def _sync_checkpoints(self, new_step: int | None = None) -> None:
        from finetune_app.core.training.checkpoint import STEP_DIR, list_checkpoints

        on_disk = [(int(STEP_DIR.match(p.name).group(1)), str(p)) for p in list_checkpoints(Path(self.run_dir))]
        self.store.sync_checkpoints(self.run_id, on_disk, new_step=new_step)

    # heartbeat --------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        if self.heartbeat_seconds <= 0 or self._beat is not None:
            return
        run_id, store, stop = self.run_id, self.store, self._beat_stop

        def beat() -> None:
            while not stop.wait(self.heartbeat_seconds):
                try:
                    store.heartbeat(run_id)
                except Exception:
                    pass

        self._beat = threading.Thread(target=beat, name="finetune-run-heartbeat", daemon=True)
        self._beat.start()

    def _stop_heartbeat(self) -> None:
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None

    def close(self) -> None:
        self._stop_heartbeat()
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None


def default_recorder(config, *, resume: bool = False) -> RunRecorder | None:
    """The recorder the CLI adds, unless $FINETUNE_RECORD_RUNS is 0."""
    if os.environ.get(RECORD_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return RunRecorder(config, resume=resume)


def import_metrics(store: RunStore, run_id: int, run_dir: str | Path) -> int:
    """Copy a run folder's metrics.jsonl (train/val reports, samples) into the record."""
    n = 0
    for row in run_folder.read_metrics(run_dir):
        kind = row.get("kind")
        if kind == "train" and "step" in row:
            store.add_train(run_id, row)
        elif kind == "val" and "step" in row:
            store.add_val(run_id, row)
        elif kind == "objective" and "step" in row:
            store.add_objective(run_id, row)
        elif kind == "samples" and "step" in row:
            store.add_samples(run_id, row["step"], list(row.get("items") or []))
        else:
            continue
        n += 1
    return n


def import_run(run_dir: str | Path, store: RunStore | None = None) -> RunRecord:
    """Record a run folder trained without a record (another data folder, an older Finetune):
    settings, metrics, samples and checkpoints. Already recorded: returns that record."""
    from finetune_app.core.config import TrainConfig

    own = store is None
    store = store or open_store()
    try:
        folder = _norm_dir(run_dir)
        existing = store.find_by_dir(folder)
        if existing is not None:
            return existing
        toml = run_folder.config_path(folder)
        if not toml.is_file():
            raise FinetuneError(f"'{folder}' holds no run (no {run_folder.CONFIG_FILE}).",
                                "Pass the folder of a run made by `finetune-app train` or the app.", file=folder)
        cfg = TrainConfig.load(toml)
        st = toml.stat()
        try:
            remember_folder(folder, store.path.parent)
        except OSError:
            pass  # the database still records it; only a rebuild would miss it
        run_id = store.create_run(name=Path(folder).name, run_dir=folder, config=cfg.to_dict(), model=cfg.model,
                                  model_fingerprint=fingerprint_model(cfg.model), data=cfg.data,
                                  data_fingerprint=fingerprint_path(cfg.data) if cfg.data else "",
                                  status="stopped", total_steps=cfg.iters or 0)
        import_metrics(store, run_id, folder)
        from finetune_app.core.training.checkpoint import STEP_DIR, list_checkpoints

        store.sync_checkpoints(run_id, [(int(STEP_DIR.match(p.name).group(1)), str(p))
                                        for p in list_checkpoints(Path(folder))])
        rec = store.get(run_id)
        done = rec.total_steps and rec.step >= rec.total_steps and run_folder.adapter_path(folder).is_file()
        metrics = run_folder.metrics_path(folder)
        store.update_run(run_id, status="finished" if done else "stopped", started_at=st.st_mtime,
                         ended_at=metrics.stat().st_mtime if metrics.exists() else st.st_mtime, message="imported from its run folder",
                         disk_bytes=disk_usage(folder), pid=None, host=None)
        return store.get(run_id)
    finally:
        if own:
            store.close()


# ---- crash recovery ------------------------------------------------------------------------------

def is_interrupted(rec: RunRecord, *, now: float | None = None) -> bool:
    """A run marked running whose process is gone (same host) or silent for too long (other host)."""
    if rec.status != "running":
        return False
    now = time.time() if now is None else now
    if rec.host == _host():
        return not pid_alive(rec.pid, rec.pid_started)
    return (now - (rec.heartbeat_at or rec.started_at or rec.created_at)) > STALE_SECONDS


def mark_interrupted(store: RunStore) -> list[RunRecord]:
    """Mark the runs whose training process died as interrupted; returns them (updated)."""
    changed = []
    if store.read_only:
        return changed
    for rec in store.runs(status="running"):
        if is_interrupted(rec):
            last = last_checkpoint(rec)
            where = f"; it can resume from {last.name}" if last else "; no checkpoint was written"
            store.set_status(rec.id, "interrupted",
                             f"The training process (pid {rec.pid}) ended without finishing at step {rec.step}{where}.")
            store.update_run(rec.id, ended_at=rec.heartbeat_at or time.time())
            changed.append(store.get(rec.id))
    return changed


def last_checkpoint(rec: RunRecord) -> Path | None:
    """The newest checkpoint of the run that reads back whole (the one a resume starts from)."""
    from finetune_app.core.training.checkpoint import latest_valid

    found, _ = latest_valid(Path(rec.run_dir))
    return found


def is_resumable(rec: RunRecord) -> bool:
    """Interrupted, stopped or failed with a good checkpoint left to continue from."""
    return rec.status in ("interrupted", "stopped", "failed") and last_checkpoint(rec) is not None


def resumable_runs(store: RunStore | None = None) -> list[RunRecord]:
    """Runs that can continue: interrupted ones first (newest first), then stopped and failed."""
    own = store is None
    store = store or open_store()
    try:
        mark_interrupted(store)
        found = [r for r in store.runs() if is_resumable(r)]
    finally:
        if own:
            store.close()
    order = {"interrupted": 0, "stopped": 1, "failed": 2}
    return sorted(found, key=lambda r: (order[r.status], -(r.heartbeat_at or r.created_at)))


def recover_at_startup(store: RunStore | None = None) -> list[RunRecord]:
    """For the app's start-up: mark dead runs interrupted and return those that can resume now."""
    return [r for r in resumable_runs(store) if r.status == "interrupted"]


def resolve_run(store: RunStore, ref: str | int) -> RunRecord:
    """A run by id, by run folder path, or by folder name (newest when several share it)."""
    text = str(ref).strip()
    if text.isdigit():
        rec = store.get(int(text))
        if rec is not None:
            return rec
    p = Path(text).expanduser()
    if p.exists():
        rec = store.find_by_dir(_norm_dir(p))
        if rec is not None:
            return rec
    named = [r for r in store.runs() if r.name == text]
    if named:
        return named[-1]
    raise FinetuneError(f"No recorded run '{ref}'.", "See `finetune-app runs list` for the run ids.")


def resume_config(rec: RunRecord, *, iters: int | None = None, epochs: float | None = None):
    """The TrainConfig a resume of `rec` trains with (the run folder's own, extended when asked)."""
    from finetune_app.core.config import TrainConfig

    toml = run_folder.config_path(rec.run_dir)
    cfg = TrainConfig.load(toml) if toml.is_file() else TrainConfig.from_dict(rec.config)
    cfg = cfg.replace(output=rec.run_dir)
    if iters is not None:
        cfg = cfg.replace(iters=iters, epochs=None)
    elif epochs is not None:
        cfg = cfg.replace(iters=None, epochs=epochs)
    return cfg


def check_can_resume(store: RunStore, rec: RunRecord, *, extend: bool = False) -> None:
    mark_interrupted(store)
    rec = store.get(rec.id) or rec
    if rec.status == "running":
        raise FinetuneError(f"Run {rec.id} is training now (pid {rec.pid} on {rec.host}).",
                            "Stop it first, or wait for it to end.")
    if not Path(rec.run_dir).is_dir():
        raise FinetuneError(f"Run {rec.id}'s folder '{rec.run_dir}' no longer exists.",
                            "Its files were moved or deleted; it cannot continue.")
    if last_checkpoint(rec) is None and not _never_checkpointed(rec):
        raise FinetuneError(f"Run {rec.id} has no usable checkpoint in '{rec.run_dir}' to continue from.",
                            "Start a new run (duplicate its settings in the run history).")
    if rec.status == "finished" and not extend:
        raise FinetuneError(f"Run {rec.id} finished all {rec.total_steps} steps.",
                            "To train it further, give more steps (--iters N, N > "
                            f"{rec.step}) or epochs (--epochs E).")


def _never_checkpointed(rec: RunRecord) -> bool:
    """Killed before its first checkpoint: a resume starts it again from step 0 (nothing to lose)."""
    from finetune_app.core.training.checkpoint import list_checkpoints

    folder = Path(rec.run_dir)
    return (run_folder.config_path(folder).is_file() and not list_checkpoints(folder)
            and not run_folder.adapter_path(folder).exists())


def resume_run(run_id: int | str, *, listeners=(), control=None, store: RunStore | None = None,
               iters: int | None = None, epochs: float | None = None, base=None):
    """Continue a run from its newest good checkpoint (or extend a finished one by more steps or
    epochs, with its optimizer state). Returns the engine's RunResult; records as it goes."""
    from finetune_app.core.runner import start_run

    own = store is None
    store = store or open_store()
    try:
        rec = resolve_run(store, run_id)
        check_can_resume(store, rec, extend=iters is not None or epochs is not None)
        cfg = resume_config(rec, iters=iters, epochs=epochs)
        return start_run(cfg, resume=True, listeners=listeners, control=control, base=base, store=store).result
    finally:
        if own:
            store.close()


# ---- disk ----------------------------------------------------------------------------------------

def disk_usage(path: str | Path) -> int:
    """Bytes used by the files under `path` (0 when it does not exist)."""
    total = 0
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except (NotADirectoryError, FileNotFoundError, PermissionError):
            if top == str(path):
                try:
                    return Path(path).stat().st_size if Path(path).is_file() else 0
                except OSError:
                    return 0
    return total


def remove_stale_temporaries(run_dir: str | Path) -> int:
    """Delete what a killed process left half-written in a run folder (hidden staging folders of
    checkpoints, temporary files of atomic writes). Only call it while no process trains the run."""
    import re

    freed = 0
    root = Path(run_dir)
    staging = re.compile(r"^\.step-\d+\.(staging-|old-).+")
    patterns = [(run_folder.checkpoints_dir(root), staging.match),
                (root, run_folder.is_our_temporary)]  # only our own files' temporaries, never the user's *.tmp
    for folder, ours in patterns:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if not ours(entry.name):
                continue
            freed += disk_usage(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                try:
                    entry.unlink()
                except OSError:
                    pass
    return freed


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def delete_run(store: RunStore, run_id: int, *, files: bool = True) -> int:
    """Forget a run and (by default) delete the files it wrote (its manifest's, never anything else
    in the folder; the folder itself only when that leaves it empty). Returns the bytes freed."""
    rec = store.get(run_id)
    if rec is None:
        raise FinetuneError(f"No recorded run {run_id}.", "See `finetune-app runs list`.")
    mark_interrupted(store)
    rec = store.get(run_id)
    if rec.status == "running":
        raise FinetuneError(f"Run {rec.id} is training now (pid {rec.pid}).", "Stop it before deleting it.")
    if store.read_only:  # the record could not be removed afterwards: delete nothing
        raise FinetuneError(f"{store.path}: the run history is read-only here, so run {rec.id} cannot be forgotten.",
                            "Make the app-data folder writable (or set FINETUNE_DATA_DIR to a writable folder), "
                            "then delete the run again; nothing was deleted.", file=None)
    freed = 0
    folder = Path(rec.run_dir)
    others = [r for r in store.runs() if r.id != rec.id and Path(r.run_dir) == folder]
    if files and folder.is_dir():
        run_folder.check_not_locked(folder)  # a process trains it now (maybe unrecorded)
    if not others:  # a rebuilt history must not bring the run back (its files may be kept)
        try:
            folder_index.forget(Path(store.path).parent, _norm_dir(folder))
        except OSError as err:
            raise FinetuneError(f"{folder_index.index_path(Path(store.path).parent)}: cannot be written "
                                f"({err.strerror or err}), so run {rec.id} would come back after a rebuild.",
                                "Make the app-data folder writable, then delete the run again; nothing was "
                                "deleted.") from None
    if files and folder.is_dir() and not others:  # never delete a folder another record points at
        freed = run_folder.delete_run_files(folder)  # only what the run wrote, never the user's files
    store.delete_run(rec.id)
    return freed


def record_export(run_dir: str | Path, target: str, path: str | Path, details: dict | None = None,
                  store: RunStore | None = None) -> int | None:
    """Remember an export of the run in `run_dir` (no-op when the run is not recorded)."""
    own = store is None
    store = store or open_store()
    try:
        rec = store.find_by_dir(_norm_dir(run_dir))
        if rec is None:
            return None
        return store.add_export(rec.id, target, str(Path(path).expanduser().resolve()), details)
    finally:
        if own:
            store.close()


@dataclass
class RunSummary:
    """One line of `runs list`: the record plus what the disk says now."""

    record: RunRecord
    disk_bytes: int
    resumable: bool

    def to_dict(self) -> dict:
        d = self.record.to_dict()
        d.pop("config", None)
        d.update(disk_bytes=self.disk_bytes, resumable=self.resumable)
        return d


def summaries(store: RunStore) -> list[RunSummary]:
    mark_interrupted(store)
    return [RunSummary(r, disk_usage(r.run_dir), is_resumable(r)) for r in store.runs()]

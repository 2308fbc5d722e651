"""RunStore: the run database (SQLite, WAL) with small, self-contained transactions.

Every write is one short transaction, so a process killed at any instant leaves the database at
the last committed write (SQLite's journal guarantees it; WAL lets the GUI read while a training
process writes). One connection may be shared by threads (the trainer's thread, a heartbeat
thread, the GUI thread): a lock serialises them.

Opening checks that the file is a whole run database (a folder, a zero-length or garbage file, a
truncated one, one with other tables): `DamagedDatabase` says what is wrong, and
core.runs.open_store moves it aside and rebuilds it. Every other SQLite failure (locked, a
read-only folder, a full disk) becomes a FinetuneError naming the file and the fix (`db_error`):
the callers never see a sqlite3 exception.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from finetune_app.core.errors import FinetuneError
from finetune_app.core.run_records import schema

STATUSES = ("running", "finished", "stopped", "failed", "interrupted")
BUSY_TIMEOUT_MS = 10_000


@dataclass
class RunRecord:
    id: int
    name: str
    run_dir: str
    status: str
    config: dict
    model: str
    model_fingerprint: str
    data: str
    data_fingerprint: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    heartbeat_at: float | None
    pid: int | None
    host: str | None
    pid_started: str | None
    step: int
    total_steps: int
    last_loss: float | None
    last_val_loss: float | None
    message: str
    best_val_loss: float | None = None
    best_step: int | None = None
    sessions: int = 1
    disk_bytes: int | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "RunRecord":
        d = dict(row)
        try:
            d["config"] = json.loads(d.get("config") or "{}")
        except ValueError:  # a damaged row: the run folder's train_config.toml still holds the settings
            d["config"] = {}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def folder(self) -> Path:
        return Path(self.run_dir)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or self.heartbeat_at or self.started_at
        return max(0.0, end - self.started_at)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class CheckpointRecord:
    step: int
    path: str
    created_at: float
    val_loss: float | None = None
    exists: bool = field(default=True)


class DamagedDatabase(FinetuneError):
    """The file at the database's path is not a usable run database (`reason` says why)."""

    def __init__(self, path: str | Path, reason: str):
        self.reason = reason
        super().__init__(f"The run database {reason}.",
                         "It can be moved aside and rebuilt from the run folders (finetune-app runs list does it).",
                         file=path)


class DatabaseReadOnly(FinetuneError):
    """The database (or its folder) cannot be written; it may still be read."""


# SQLite messages that mean the file itself is bad, not the circumstances.
_DAMAGE = ("malformed", "not a database", "file is encrypted", "disk image", "corrupt")
_OTHER_SCHEMA = ("no such table", "no such column", "already exists", "has no column")


def db_error(err: BaseException, path: str | Path) -> FinetuneError:
    """A sqlite3 failure as a located, actionable error (DamagedDatabase when the file is bad)."""
    path = Path(path)
    text = str(err)
    low = text.lower()
    if any(k in low for k in _DAMAGE):
        return DamagedDatabase(path, f"is damaged ({text})")
    if any(k in low for k in _OTHER_SCHEMA):
        return DamagedDatabase(path, f"has another schema ({text})")
    if "locked" in low or "busy" in low:
        return FinetuneError(f"The run database is locked by another process (still busy after "
                             f"{BUSY_TIMEOUT_MS / 1000:g} s).",
                             "Wait for the other Finetune process (a training run or the app) to finish, or close it, "
                             "then try again.", file=path)
    if "full" in low:
        return FinetuneError("The disk holding the run database is full.",
                             "Free some space on that disk, or set FINETUNE_DATA_DIR to a folder on another disk.",
                             file=path)
    if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
        folder = path.parent
        return DatabaseReadOnly(f"The run database cannot be written: its folder '{folder}' is read-only or not "
                                f"accessible ({text}).",
                                "Make that folder writable, or set FINETUNE_DATA_DIR to a writable folder.", file=path)
    return FinetuneError(f"The run database could not be used ({text}).",
                         "Check the disk and the folder's permissions, or set FINETUNE_DATA_DIR to another folder.",
                         file=path)


def connect(path: str | Path, *, read_only: bool = False) -> sqlite3.Connection:
    db = _open(path, read_only=read_only)
    if not read_only:
        _set_modes(db)
    return db


def _open(path: str | Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection that has not written anything yet (the file may still be foreign)."""
    path = Path(path)
    if read_only:  # a read-only folder: no WAL index can be created, so read the file as it is
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None,
                             check_same_thread=False)
        db.row_factory = sqlite3.Row
        return db
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return db


def _set_modes(db: sqlite3.Connection) -> None:
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # a file system without shared memory (some network mounts)
        db.execute("PRAGMA journal_mode = DELETE")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
    db.execute("PRAGMA foreign_keys = ON")


class RunStore:
    """The run records. Open with `RunStore(path)`; `close()` when done (or use `with`)."""

    def __init__(self, path: str | Path, *, migrate: bool = True, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.notice = ""  # what opening it had to do (core.runs.open_store: moved aside and rebuilt)
        if self.path.is_dir():
            raise DamagedDatabase(self.path, "is a folder, not a database file")
        self.lock = threading.RLock()
        self.db = None
        try:
            self.db = _open(self.path, read_only=read_only)
            # look before writing anything: a foreign or damaged file is moved aside unchanged
            if self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise DamagedDatabase(self.path, "is damaged (its integrity check failed)")
            self.migrated_from = schema.current_version(self.db)
            if self.migrated_from <= schema.LATEST:
                lacking = schema.missing(self.db, self.migrated_from)
                if lacking:
                    raise DamagedDatabase(self.path, "has another schema (" + ", ".join(lacking[:4]) + ")")
            if not read_only:
                _set_modes(self.db)
            if read_only:
                if self.migrated_from != schema.LATEST:
                    raise FinetuneError("The run database needs upgrading, but its folder is read-only.",
                                        "Make the folder writable, or set FINETUNE_DATA_DIR to a writable folder.",
                                        file=self.path)
            elif migrate:
                self.migrated_from, _ = schema.migrate(self.db)
            missing = schema.missing(self.db) if (migrate or read_only) else []
            if missing:
                raise DamagedDatabase(self.path, "has another schema (" + ", ".join(missing[:4]) + ")")
        except sqlite3.Error as err:
            self._close_quietly()
            raise db_error(err, self.path) from None
        except OSError as err:  # its folder cannot be made (a file in the way, no permission)
            self._close_quietly()
            raise FinetuneError(f"The run database's folder '{self.path.parent}' cannot be created "
                                f"({err.strerror or err}).",
                                "Set FINETUNE_DATA_DIR to a folder you can write to.", file=self.path) from None
        except FinetuneError as err:
            self._close_quietly()
            if err.file is None:
                err.file = str(self.path)
            raise
        except BaseException:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass

    # ---- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        with self.lock:
            self._close_quietly()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def version(self) -> int:
        with self.lock:
            try:
                return schema.current_version(self.db)
            except sqlite3.Error as err:
                raise db_error(err, self.path) from None

    def transaction(self):
        store = self

        class _Tx:
            def __enter__(self_inner):
                store.lock.acquire()
                try:
                    store.db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as err:
                    store.lock.release()
                    raise db_error(err, store.path) from None
                except BaseException:
                    store.lock.release()
                    raise
                return store.db

            def __exit__(self_inner, exc_type, exc, tb):
                try:
                    store.db.execute("ROLLBACK" if exc_type else "COMMIT")
                except sqlite3.Error as err:
                    if exc_type is None:  # the commit failed (disk full, read-only): nothing was written
                        try:
                            store.db.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                        raise db_error(err, store.path) from None
                finally:
                    store.lock.release()
                if exc_type is not None and issubclass(exc_type, sqlite3.Error):
                    raise db_error(exc, store.path) from None
                return False

        return _Tx()

    def query(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self.lock:
            try:
                return self.db.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise db_error(err, self.path) from None

    def integrity_ok(self) -> bool:
        return self.query("PRAGMA integrity_check")[0][0] == "ok"

    # ---- runs ----------------------------------------------------------------------------------
    def create_run(self, *, name: str, run_dir: str, config: dict, model: str = "", model_fingerprint: str = "",
                   data: str = "", data_fingerprint: str = "", pid: int | None = None, host: str | None = None,
                   pid_started: str | None = None, status: str = "running", total_steps: int = 0) -> int:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (name, run_dir, status, config, model, model_fingerprint, data, data_fingerprint,"
                " created_at, started_at, heartbeat_at, pid, host, pid_started, total_steps)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (name, run_dir, status, json.dumps(config), model, model_fingerprint, data, data_fingerprint,
                 now, now, now, pid, host, pid_started, total_steps))
            run_id = int(cur.lastrowid)
            db.execute("INSERT INTO run_log (run_id, t, kind, message) VALUES (?,?,?,?)",
                       (run_id, now, "session", f"started (pid {pid} on {host})"))
        return run_id

    def begin_session(self, run_id: int, *, config: dict, pid: int | None, host: str | None,
                      pid_started: str | None, model_fingerprint: str | None = None,
                      data_fingerprint: str | None = None, what: str = "resumed") -> None:
        """A resumed (or restarted) run: running again, in another process."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE runs SET status='running', config=?, pid=?, host=?, pid_started=?, heartbeat_at=?,"
                       " ended_at=NULL, message='', sessions=sessions+1,"
                       " model_fingerprint=coalesce(?, model_fingerprint), data_fingerprint=coalesce(?, data_fingerprint)"
                       " WHERE id=?",
                       (json.dumps(config), pid, host, pid_started, now, model_fingerprint, data_fingerprint, run_id))
            db.execute("INSERT INTO run_log (run_id, t, kind, message) VALUES (?,?,?,?)",
                       (run_id, now, "session", f"{what} (pid {pid} on {host})"))

    def update_run(self, run_id: int, **values) -> None:
        if not values:
            return
        cols = ", ".join(f"{k}=?" for k in values)
        with self.transaction() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE id=?", (*values.values(), run_id))

    def heartbeat(self, run_id: int) -> None:
        self.update_run(run_id, heartbeat_at=time.time())

    def set_status(self, run_id: int, status: str, message: str = "", *, step: int | None = None,
                   ended: bool = True) -> None:
        assert status in STATUSES, status
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE runs SET status=?, message=?, ended_at=?, heartbeat_at=?,"
                       " step=coalesce(?, step) WHERE id=?",
                       (status, message, now if ended else None, now, step, run_id))
            db.execute("INSERT INTO run_log (run_id, t, kind, message) VALUES (?,?,?,?)",
                       (run_id, now, "state", f"{status}" + (f": {message}" if message else "")))

    def get(self, run_id: int) -> RunRecord | None:
        rows = self.query("SELECT * FROM runs WHERE id=?", (int(run_id),))
        return RunRecord.from_row(rows[0]) if rows else None

    def runs(self, *, status: str | None = None) -> list[RunRecord]:
        if status:
            rows = self.query("SELECT * FROM runs WHERE status=? ORDER BY id", (status,))
        else:
            rows = self.query("SELECT * FROM runs ORDER BY id")
        return [RunRecord.from_row(r) for r in rows]

    def find_by_dir(self, run_dir: str | Path) -> RunRecord | None:
        rows = self.query("SELECT * FROM runs WHERE run_dir=? ORDER BY id DESC LIMIT 1", (str(run_dir),))
        return RunRecord.from_row(rows[0]) if rows else None

    def delete_run(self, run_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))  # the rest cascades

    def log(self, run_id: int, kind: str, message: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO run_log (run_id, t, kind, message) VALUES (?,?,?,?)",
                       (run_id, time.time(), kind, message))

    def run_log(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.query("SELECT t, kind, message FROM run_log WHERE run_id=? ORDER BY id", (run_id,))]

    # ---- metrics and samples -------------------------------------------------------------------
    def add_train(self, run_id: int, report: dict) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO metrics (run_id, kind, step, loss, learning_rate, data, t)"
                       " VALUES (?,?,?,?,?,?,?)",
                       (run_id, "train", report["step"], report.get("loss"), report.get("learning_rate"),
                        json.dumps(report), now))
            db.execute("UPDATE runs SET step=?, total_steps=?, last_loss=?, heartbeat_at=? WHERE id=?",
                       (report["step"], report.get("total_steps", 0), report.get("loss"), now, run_id))

    def add_val(self, run_id: int, report: dict) -> None:
        now = time.time()
        loss = report.get("val_loss")
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO metrics (run_id, kind, step, loss, learning_rate, data, t)"
                       " VALUES (?,?,?,?,?,?,?)", (run_id, "val", report["step"], loss, None, json.dumps(report), now))
            db.execute("UPDATE runs SET last_val_loss=?, heartbeat_at=? WHERE id=?", (loss, now, run_id))
            self._update_best(db, run_id)

    def add_eval(self, run_id: int, report: dict) -> None:
        """Scores of generations during training (an EvalReport, its rows' outputs left out)."""
        data = {k: v for k, v in report.items() if k != "items"}
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO metrics (run_id, kind, step, loss, learning_rate, data, t)"
                       " VALUES (?,?,?,?,?,?,?)", (run_id, "eval", report["step"], None, None, json.dumps(data), time.time()))

    def add_objective(self, run_id: int, report: dict) -> None:
        """What an objective measures besides its loss (an ObjectiveReport: GRPO's rewards), kept
        as kind 'objective', or 'objective_valid' when held out."""
        kind = "objective" if report.get("split", "train") == "train" else "objective_valid"
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO metrics (run_id, kind, step, loss, learning_rate, data, t)"
                       " VALUES (?,?,?,?,?,?,?)", (run_id, kind, report["step"], None, None, json.dumps(report), time.time()))

    def objective_series(self, run_id: int) -> dict[str, tuple[list[int], list[float]]]:
        """name -> (steps, values) of the objective's metrics (reward accuracy, KL, reward mean, ...):
        from training reports and objective reports (objective_metrics.py names them)."""
        from finetune_app.core.training import objective_metrics

        rows = self.query("SELECT data FROM metrics WHERE run_id=? AND kind IN ('train', 'objective', 'objective_valid')"
                          " ORDER BY step, kind", (run_id,))  # a step's train report last, as the live plot
        return objective_metrics.series(_json_or_empty(r["data"]) for r in rows)

    @staticmethod
    def _update_best(db: sqlite3.Connection, run_id: int) -> None:
        db.execute("""UPDATE runs SET
            best_val_loss = (SELECT loss FROM metrics m WHERE m.run_id = runs.id AND m.kind='val' AND loss IS NOT NULL
                             ORDER BY loss, step LIMIT 1),
            best_step = (SELECT step FROM metrics m WHERE m.run_id = runs.id AND m.kind='val' AND loss IS NOT NULL
                         ORDER BY loss, step LIMIT 1)
            WHERE id=?""", (run_id,))

    def add_samples(self, run_id: int, step: int, items: list[dict]) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM samples WHERE run_id=? AND step=?", (run_id, step))
            db.executemany(
                "INSERT INTO samples (run_id, step, position, item_index, prompt, reference, output, image)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [(run_id, step, k, it.get("index"), it.get("prompt", ""), it.get("reference", ""),
                  it.get("output", ""), it.get("image", "")) for k, it in enumerate(items)])

    def forget_after(self, run_id: int, step: int) -> None:
        """A resume restarts from `step`: what was recorded after it will be recorded again."""
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, step))
            db.execute("DELETE FROM samples WHERE run_id=? AND step>?", (run_id, step))
            db.execute("UPDATE runs SET step=? WHERE id=?", (step, run_id))
            last = db.execute("SELECT loss FROM metrics WHERE run_id=? AND kind='train' ORDER BY step DESC LIMIT 1",
                              (run_id,)).fetchone()
            lastv = db.execute("SELECT loss FROM metrics WHERE run_id=? AND kind='val' ORDER BY step DESC LIMIT 1",
                               (run_id,)).fetchone()
            db.execute("UPDATE runs SET last_loss=?, last_val_loss=? WHERE id=?",
                       (last[0] if last else None, lastv[0] if lastv else None, run_id))
            self._update_best(db, run_id)

    def metrics(self, run_id: int, kind: str | None = None) -> list[dict]:
        if kind:
            rows = self.query("SELECT kind, step, loss, learning_rate, data, t FROM metrics WHERE run_id=? AND kind=?"
                              " ORDER BY step", (run_id, kind))
        else:
            rows = self.query("SELECT kind, step, loss, learning_rate, data, t FROM metrics WHERE run_id=?"
                              " ORDER BY kind, step", (run_id,))
        return [dict(r) for r in rows]

    def losses(self, run_id: int, kind: str = "train") -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.metrics(run_id, kind)}

    def samples(self, run_id: int) -> list[dict]:
        rows = self.query("SELECT step, position, item_index, prompt, reference, output, image FROM samples"
                          " WHERE run_id=? ORDER BY step, position", (run_id,))
        return [dict(r) for r in rows]

    # ---- checkpoints and exports ---------------------------------------------------------------
    def sync_checkpoints(self, run_id: int, on_disk: list[tuple[int, str]], *, new_step: int | None = None) -> None:
        """Make the checkpoint rows match the folders on disk (rotation removes old ones)."""
        now = time.time()
        with self.transaction() as db:
            known = {r[0] for r in db.execute("SELECT step FROM checkpoints WHERE run_id=?", (run_id,))}
            steps = {s for s, _ in on_disk}
            for step in known - steps:
                db.execute("DELETE FROM checkpoints WHERE run_id=? AND step=?", (run_id, step))
            for step, path in on_disk:
                if step not in known or step == new_step:
                    val = db.execute("SELECT loss FROM metrics WHERE run_id=? AND kind='val' AND step=?",
                                     (run_id, step)).fetchone()
                    db.execute("INSERT OR REPLACE INTO checkpoints (run_id, step, path, created_at, val_loss)"
                               " VALUES (?,?,?,?,?)", (run_id, step, path, now, val[0] if val else None))
            db.execute("UPDATE runs SET heartbeat_at=? WHERE id=?", (now, run_id))

    def checkpoints(self, run_id: int) -> list[CheckpointRecord]:
        rows = self.query("SELECT step, path, created_at, val_loss FROM checkpoints WHERE run_id=? ORDER BY step",
                          (run_id,))
        return [CheckpointRecord(r["step"], r["path"], r["created_at"], r["val_loss"], Path(r["path"]).is_dir())
                for r in rows]

    def add_export(self, run_id: int, target: str, path: str, details: dict | None = None) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO exports (run_id, target, path, created_at, details) VALUES (?,?,?,?,?)",
                             (run_id, target, path, time.time(), json.dumps(details or {})))
            return int(cur.lastrowid)

    def exports(self, run_id: int) -> list[dict]:
        rows = self.query("SELECT id, target, path, created_at, details FROM exports WHERE run_id=? ORDER BY id",
                          (run_id,))
        return [{**dict(r), "details": _json_or_empty(r["details"]), "exists": Path(r["path"]).exists()}
                for r in rows]


def _json_or_empty(text: str | None) -> dict:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {}

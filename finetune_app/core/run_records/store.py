"""RunStore: the run database (SQLite, WAL) with small, self-contained transactions.

Every write is one short transaction, so a process killed at any instant leaves the database at
the last committed write (SQLite's journal guarantees it; WAL lets the GUI read while a training
process writes). One connection may be shared by threads (the trainer's thread, a heartbeat
thread, the GUI thread): a lock serialises them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

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
        d["config"] = json.loads(d.get("config") or "{}")
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


def connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # a file system without shared memory (some network mounts)
        db.execute("PRAGMA journal_mode = DELETE")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
    db.execute("PRAGMA foreign_keys = ON")
    return db


class RunStore:
    """The run records. Open with `RunStore(path)`; `close()` when done (or use `with`)."""

    def __init__(self, path: str | Path, *, migrate: bool = True):
        self.path = Path(path)
        self.db = connect(self.path)
        self.lock = threading.RLock()
        self.migrated_from = schema.current_version(self.db)
        if migrate:
            with self.lock:
                self.migrated_from, _ = schema.migrate(self.db)

    # ---- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        with self.lock:
            self.db.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def version(self) -> int:
        with self.lock:
            return schema.current_version(self.db)

    def transaction(self):
        store = self

        class _Tx:
            def __enter__(self_inner):
                store.lock.acquire()
                try:
                    store.db.execute("BEGIN IMMEDIATE")
                except BaseException:
                    store.lock.release()
                    raise
                return store.db

            def __exit__(self_inner, exc_type, exc, tb):
                try:
                    store.db.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    store.lock.release()
                return False

        return _Tx()

    def query(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, params).fetchall()

    def integrity_ok(self) -> bool:
        with self.lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

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
                      data_fingerprint: str | None = None) -> None:
        """A resumed run: running again, in another process."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE runs SET status='running', config=?, pid=?, host=?, pid_started=?, heartbeat_at=?,"
                       " ended_at=NULL, message='', sessions=sessions+1,"
                       " model_fingerprint=coalesce(?, model_fingerprint), data_fingerprint=coalesce(?, data_fingerprint)"
                       " WHERE id=?",
                       (json.dumps(config), pid, host, pid_started, now, model_fingerprint, data_fingerprint, run_id))
            db.execute("INSERT INTO run_log (run_id, t, kind, message) VALUES (?,?,?,?)",
                       (run_id, now, "session", f"resumed (pid {pid} on {host})"))

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
        return [{**dict(r), "details": json.loads(r["details"] or "{}"), "exists": Path(r["path"]).exists()}
                for r in rows]

"""The run database's schema, as an ordered list of migrations.

`schema_version` holds one row: the number of migrations applied. Opening a database applies the
missing ones, each in its own transaction, so an old database upgrades in place and a kill during
an upgrade leaves it at the last complete version. Never edit a released migration: append one.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

Migration = Callable[[sqlite3.Connection], None]


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run DDL statements inside the caller's transaction (executescript would commit it first)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    """The first schema: runs, their metrics, sample generations and checkpoints."""
    _script(db, """
        CREATE TABLE runs (
            id            INTEGER PRIMARY KEY,
            name          TEXT NOT NULL,
            run_dir       TEXT NOT NULL,
            status        TEXT NOT NULL,        -- running / finished / stopped / failed / interrupted
            config        TEXT NOT NULL,        -- TrainConfig as JSON
            model         TEXT NOT NULL DEFAULT '',
            model_fingerprint TEXT NOT NULL DEFAULT '',
            data          TEXT NOT NULL DEFAULT '',
            data_fingerprint  TEXT NOT NULL DEFAULT '',
            created_at    REAL NOT NULL,
            started_at    REAL,
            ended_at      REAL,
            heartbeat_at  REAL,
            pid           INTEGER,
            host          TEXT,
            pid_started   TEXT,                 -- the process's start time, against pid reuse
            step          INTEGER NOT NULL DEFAULT 0,
            total_steps   INTEGER NOT NULL DEFAULT 0,
            last_loss     REAL,
            last_val_loss REAL,
            message       TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX runs_by_dir ON runs(run_dir);
        CREATE INDEX runs_by_status ON runs(status);
        CREATE TABLE metrics (
            run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            kind          TEXT NOT NULL,        -- train / val
            step          INTEGER NOT NULL,
            loss          REAL,
            learning_rate REAL,
            data          TEXT NOT NULL,        -- the whole report as JSON
            t             REAL NOT NULL,
            PRIMARY KEY (run_id, kind, step)
        );
        CREATE TABLE samples (
            run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step          INTEGER NOT NULL,
            position      INTEGER NOT NULL,
            item_index    INTEGER,
            prompt        TEXT NOT NULL DEFAULT '',
            reference     TEXT NOT NULL DEFAULT '',
            output        TEXT NOT NULL DEFAULT '',
            image         TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, step, position)
        );
        CREATE TABLE checkpoints (
            run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step          INTEGER NOT NULL,
            path          TEXT NOT NULL,
            created_at    REAL NOT NULL,
            PRIMARY KEY (run_id, step)
        );
    """)


def _v2(db: sqlite3.Connection) -> None:
    """Exports, a log of notices/sessions, the best validation loss and the run's disk usage."""
    _script(db, """
        CREATE TABLE exports (
            id            INTEGER PRIMARY KEY,
            run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            target        TEXT NOT NULL,
            path          TEXT NOT NULL,
            created_at    REAL NOT NULL,
            details       TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE run_log (
            id            INTEGER PRIMARY KEY,
            run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            t             REAL NOT NULL,
            kind          TEXT NOT NULL,        -- session / notice / state
            message       TEXT NOT NULL
        );
        CREATE INDEX run_log_by_run ON run_log(run_id);
        ALTER TABLE runs ADD COLUMN best_val_loss REAL;
        ALTER TABLE runs ADD COLUMN best_step INTEGER;
        ALTER TABLE runs ADD COLUMN sessions INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE runs ADD COLUMN disk_bytes INTEGER;
        ALTER TABLE checkpoints ADD COLUMN val_loss REAL;
    """)
    # backfill what v1 already knew
    db.execute("""
        UPDATE runs SET
            best_val_loss = (SELECT min(loss) FROM metrics m WHERE m.run_id = runs.id AND m.kind = 'val'),
            best_step = (SELECT step FROM metrics m WHERE m.run_id = runs.id AND m.kind = 'val'
                         ORDER BY loss, step LIMIT 1)
    """)
    db.execute("""
        UPDATE checkpoints SET val_loss = (SELECT loss FROM metrics m WHERE m.run_id = checkpoints.run_id
                                           AND m.kind = 'val' AND m.step = checkpoints.step)
    """)


MIGRATIONS: list[Migration] = [_v1, _v2]
LATEST = len(MIGRATIONS)


def current_version(db: sqlite3.Connection) -> int:
    has = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
    if not has:
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    try:
        return int(row[0]) if row else 0
    except (TypeError, ValueError):
        raise sqlite3.DatabaseError(f"schema_version is malformed ({row[0]!r})") from None


_EXPECTED: dict[int, dict[str, set[str]]] = {}


def expected_columns(version: int = LATEST) -> dict[str, set[str]]:
    """Table -> columns of a database at `version` (built once, in memory, by the migrations)."""
    if version not in _EXPECTED:
        mem = sqlite3.connect(":memory:", isolation_level=None)
        try:
            if version:
                migrate(mem, upto=version)
            _EXPECTED[version] = _columns(mem)
        finally:
            mem.close()
    return _EXPECTED[version]


def _columns(db: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master"
                                       " WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    return {t: {r[1] for r in db.execute("PRAGMA table_info(\"%s\")" % t.replace('"', '""'))} for t in tables}


def missing(db: sqlite3.Connection, version: int = LATEST) -> list[str]:
    """Tables and columns a database at `version` has and this one lacks (empty: the schema is
    whole). At version 0 (nothing applied) any table at all is foreign."""
    have = _columns(db)
    if version == 0:
        return [f"unknown table {t}" for t in sorted(have)]
    out = []
    for table, cols in expected_columns(version).items():
        if table not in have:
            out.append(f"no table {table}")
        else:
            out.extend(f"no column {table}.{c}" for c in sorted(cols - have[table]))
    return out


def migrate(db: sqlite3.Connection, *, upto: int | None = None) -> tuple[int, int]:
    """Apply the missing migrations (each one atomically). Returns (version before, version after).

    `db` must be in autocommit mode (isolation_level=None): the transactions are explicit here."""
    target = LATEST if upto is None else upto
    before = current_version(db)
    if before > LATEST:
        from finetune_app.core.errors import FinetuneError

        raise FinetuneError(f"The run database is from a newer Finetune (schema {before}; this one knows {LATEST}).",
                            "Update Finetune, or point FINETUNE_DATA_DIR at another folder.")
    version = before
    while version < target:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = current_version(db)  # another process may have migrated meanwhile
            if version >= target:
                db.execute("COMMIT")
                break
            if version == 0:
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            MIGRATIONS[version](db)
            version += 1
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return before, version

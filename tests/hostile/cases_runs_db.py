"""Hostile run databases: damaged files (moved aside and rebuilt from the run folders, with a
message saying where they went) and a database that cannot be used now (locked, read-only folder,
a newer Finetune's), through `runs list/show/resume/delete` and `train`."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

from hostile import case
from hostile.ro_folder import read_only


def _db() -> Path:
    return Path(os.environ["FINETUNE_DATA_DIR"]) / "runs.sqlite3"


def _fake_run(env, name: str) -> Path:
    """A run folder as training leaves it (settings and metrics), recorded with `runs import`."""
    from finetune_app.core.config import TrainConfig

    folder = env.tmp / name
    folder.mkdir()
    TrainConfig(model=str(env.tmp / "model"), data=str(env.tmp / "data"), output=str(folder), iters=2).save(
        folder / "train_config.toml")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 2.0 / s}) + "\n"
                                                  for s in (1, 2)))
    env.expect("runs", "import", folder, exit=0)
    return folder


def _train_args(env, out: Path, iters: int = 1) -> list:
    return ["train", "--model", env.tiny_model("qwen2"), "--data", env.instruction_data, "--output", out,
            "--iters", iters, "--batch-size", 2, "--save-every", 1, "--steps-per-eval", 1, "--sample-count", 0,
            "--quiet"]


def _trained_run(env, name: str = "trained") -> Path:
    out = env.tmp / name
    env.expect(*_train_args(env, out), exit=0)
    return out


def _settle(db: Path) -> None:
    """Fold the write-ahead log into the file and drop it, so damaging the file damages the records."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def _aside_is(db: Path, data: bytes) -> None:
    """The damaged file was moved aside with its bytes, never deleted."""
    aside = [p for p in db.parent.glob(db.name + ".damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].read_bytes() == data, aside


@contextlib.contextmanager
def _locked(db: Path):
    """Another process's exclusive lock on the database (SQLite waits 0.2 s here, not 10 s)."""
    from finetune_app.core.run_records import store

    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    was, store.BUSY_TIMEOUT_MS = store.BUSY_TIMEOUT_MS, 200
    try:
        yield
    finally:
        store.BUSY_TIMEOUT_MS = was
        holder.execute("ROLLBACK")
        holder.close()


@case("runs-db", "truncated-runs-list")
def _(env):
    run = _fake_run(env, "run-a")
    db = _db()
    _settle(db)
    data = db.read_bytes()[:6000]
    db.write_bytes(data)
    env.keep(run)
    res = env.expect("runs", "list", exit=0, says=["runs.sqlite3", "moved to", ".damaged-", "1 run recovered", "run-a"])
    assert str(run) in res.out
    _aside_is(db, data)


@case("runs-db", "garbage-runs-show")
def _(env):
    run = _fake_run(env, "run-b")
    db = _db()
    _settle(db)
    db.write_bytes(b"this is not a database at all\n" * 100)
    env.keep(run)
    env.expect("runs", "show", "run-b", exit=0, says=["runs.sqlite3", "file is not a database", "moved to", "run-b"])
    _aside_is(db, b"this is not a database at all\n" * 100)


@case("runs-db", "zero-byte-runs-list")
def _(env):
    run = _fake_run(env, "run-c")
    db = _db()
    _settle(db)
    db.write_bytes(b"")
    res = env.expect("runs", "list", "--json", exit=0, says=["runs.sqlite3", "empty", "rebuilt", "runs import"])
    assert [Path(r["run_dir"]).name for r in json.loads(res.out)] == ["run-c"]


@case("runs-db", "folder-in-its-place-runs-resume")
def _(env):
    run = _trained_run(env)
    db = _db()
    _settle(db)
    db.unlink()
    db.mkdir()
    (db / "user-file.txt").write_text("mine")
    env.expect("runs", "resume", "trained", "--iters", 2, "--quiet", exit=0,
               says=["runs.sqlite3", "is a folder", "moved to", "finished: step 2/2"])
    aside = list(db.parent.glob("runs.sqlite3.damaged-*"))
    assert (aside[0] / "user-file.txt").read_text() == "mine"
    res = env.expect("runs", "show", "trained", "--json", exit=0)
    assert json.loads(res.out)["step"] == 2 and (run / "adapters.safetensors").is_file()


@case("runs-db", "other-schema-runs-delete")
def _(env):
    run = _fake_run(env, "run-d")
    db = _db()
    _settle(db)
    db.unlink()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE runs (who TEXT, what BLOB)")  # another program's database under our name
    con.execute("INSERT INTO runs VALUES ('someone', 'their data')")
    con.commit()
    con.close()
    data = db.read_bytes()
    env.keep(run)
    env.expect("runs", "delete", "run-d", "--yes", "--keep-files", exit=0,
               says=["runs.sqlite3", "another schema", "moved to", "deleted run"])
    _aside_is(db, data)
    res = env.expect("runs", "list", "--json", exit=0)
    assert json.loads(res.out) == []


@case("runs-db", "garbage-train")
def _(env):
    old = _fake_run(env, "run-e")
    db = _db()
    _settle(db)
    db.write_bytes(os.urandom(8192))
    env.expect(*_train_args(env, env.tmp / "new-run"), exit=0, says=["runs.sqlite3", "moved to", "finished"])
    res = env.expect("runs", "list", "--json", exit=0)
    names = sorted(Path(r["run_dir"]).name for r in json.loads(res.out))
    assert names == ["new-run", "run-e"], names  # the new run is recorded, the old one rebuilt
    env.keep(old)


@case("runs-db", "version-row-garbage-runs-list")
def _(env):
    _fake_run(env, "run-f")
    db = _db()
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_version SET version = 'two'")
    con.commit()
    con.close()
    env.expect("runs", "list", exit=0, says=["runs.sqlite3", "schema_version", "moved to", "run-f"])


@case("runs-db", "garbage-config-row-runs-show")
def _(env):
    _fake_run(env, "run-g")
    con = sqlite3.connect(_db())
    con.execute("UPDATE runs SET config = '{not json'")
    con.commit()
    con.close()
    env.expect("runs", "show", "run-g", exit=0, says=["run-g", "config"])


@case("runs-db", "newer-finetune-runs-list")
def _(env):
    _fake_run(env, "run-h")
    db = _db()
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    data = db.read_bytes()
    env.expect("runs", "list", exit=2, says=["runs.sqlite3", "newer Finetune", "update"])
    assert db.read_bytes() == data and not list(db.parent.glob("*.damaged-*"))  # never moved aside


@case("runs-db", "read-only-data-folder-runs-list")
def _(env):
    run = _fake_run(env, "run-i")
    with read_only(_db().parent):
        res = env.expect("runs", "list", exit=0, says=["runs.sqlite3", "read-only", "writable", "run-i"])
        assert str(run) in res.out


@case("runs-db", "read-only-data-folder-runs-delete")
def _(env):
    run = _fake_run(env, "run-j")
    env.keep(run)
    with read_only(_db().parent):
        env.expect("runs", "delete", "run-j", "--yes", "--keep-files", exit=2,
                   says=["runs.sqlite3", "read-only", "writable"])
        # deleting the files too: refused before any file goes (the record could not follow)
        env.expect("runs", "delete", "run-j", "--yes", exit=2,
                   says=["runs.sqlite3", "read-only", "writable", "nothing was deleted"])
    env.expect("runs", "show", "run-j", exit=0, says=["run-j"])  # still recorded


@case("runs-db", "read-only-data-folder-train")
def _(env):
    _fake_run(env, "run-k")
    with read_only(_db().parent):
        env.expect(*_train_args(env, env.tmp / "unrecorded"), exit=0,
                   says=["runs.sqlite3", "not being recorded", "runs import", "finished"])
    env.expect("runs", "import", env.tmp / "unrecorded", exit=0, says=["unrecorded"])


@case("runs-db", "locked-runs-show")
def _(env):
    _fake_run(env, "run-l")
    with _locked(_db()):
        env.expect("runs", "show", "run-l", exit=2, says=["runs.sqlite3", "locked", "wait"])


@case("runs-db", "locked-train")
def _(env):
    _fake_run(env, "run-m")
    with _locked(_db()):
        env.expect(*_train_args(env, env.tmp / "while-locked"), exit=0,
                   says=["runs.sqlite3", "locked", "not being recorded", "runs import", "finished"])


@case("runs-db", "garbage-in-read-only-data-folder")
def _(env):
    _fake_run(env, "run-n")
    db = _db()
    _settle(db)
    db.write_bytes(b"garbage" * 500)
    env.keep(db)
    with read_only(db.parent):  # cannot be moved aside: said so, nothing deleted
        env.expect("runs", "list", exit=2, says=["runs.sqlite3", "could not be moved aside", "move or rename it"])


@case("runs-db", "data-folder-is-a-file")
def _(env):
    blocker = env.tmp / "appdata-file"
    blocker.write_text("a file where the data folder should be")
    env.keep(blocker)
    was = os.environ["FINETUNE_DATA_DIR"]
    os.environ["FINETUNE_DATA_DIR"] = str(blocker / "sub")
    try:
        env.expect("runs", "list", exit=2, says=["appdata-file", "cannot be created", "FINETUNE_DATA_DIR"])
        env.expect(*_train_args(env, env.tmp / "unrecorded"), exit=0,
                   says=["appdata-file", "not being recorded", "finished"])
    finally:
        os.environ["FINETUNE_DATA_DIR"] = was

"""A damaged run database loses no run (issue 14): the run folders are the source of truth.

Each kind of damage (truncated, garbage, zero bytes, a folder in its place, another schema, a
garbage version row) is detected when the database opens, the file is moved aside (same bytes,
`runs.sqlite3.damaged-<time>`, never deleted) with a message saying where, and the database is
rebuilt from the run folders listed beside it (run-folders.txt). SQLite failures that are not
damage (locked, read-only folder) are located FinetuneErrors, and the training recorder only warns.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from finetune_app.cli import main
from finetune_app.core import runs
from finetune_app.core.errors import FinetuneError
from finetune_app.core.run_records import folder_index, store as store_mod


@pytest.fixture
def datadir(tmp_path, monkeypatch):
    d = tmp_path / "appdata"
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(d))
    return d


def run_folder(root: Path, name: str, steps: int = 3) -> Path:
    """A run folder as training leaves it (settings, metrics), without training."""
    from finetune_app.core.config import TrainConfig

    folder = root / name
    folder.mkdir(parents=True)
    TrainConfig(model=str(root / "model"), data=str(root / "data"), output=str(folder), iters=steps).save(
        folder / "train_config.toml")
    lines = [{"kind": "train", "step": s, "loss": 3.0 - s / 10, "learning_rate": 1e-3, "total_steps": steps}
             for s in range(1, steps + 1)] + [{"kind": "val", "step": steps, "val_loss": 2.5}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def recorded(tmp_path: Path, n: int = 2) -> list[Path]:
    """`n` run folders recorded through `runs import` (which lists them beside the database)."""
    folders = [run_folder(tmp_path / "runs", f"run{i}") for i in range(n)]
    assert main(["runs", "import", *map(str, folders)]) == 0
    return folders


def checkpointed(db: Path) -> None:
    """Fold the WAL into the main file, so damaging the file damages the records."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def damage(db: Path, kind: str) -> None:
    if kind == "truncated":
        checkpointed(db)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2 + 100])
    elif kind == "garbage":
        db.write_bytes(b"definitely not SQLite \x00\xff" * 300)
    elif kind == "zero-bytes":
        db.write_bytes(b"")
    elif kind == "folder":
        db.unlink()
        db.mkdir()
        (db / "something").write_text("x")
    elif kind == "other-schema":
        db.unlink()
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE runs (x)")
        con.commit()
        con.close()
    elif kind == "bad-version":
        con = sqlite3.connect(db)
        con.execute("UPDATE schema_version SET version='two'")
        con.commit()
        con.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


KINDS = ["truncated", "garbage", "zero-bytes", "folder", "other-schema", "bad-version"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_database_is_moved_aside_and_rebuilt_from_the_run_folders(tmp_path, datadir, capsys, kind):
    folders = recorded(tmp_path)
    db = datadir / "runs.sqlite3"
    damage(db, kind)
    before = db.read_bytes() if db.is_file() else None
    capsys.readouterr()

    assert main(["runs", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert sorted(Path(r["run_dir"]).name for r in json.loads(out)) == ["run0", "run1"]
    assert "Traceback" not in err and "runs.sqlite3" in err and "2 runs recovered" in err
    aside = sorted(p for p in datadir.glob("runs.sqlite3.damaged-*") if not p.name.endswith(("-wal", "-shm")))
    if kind == "zero-bytes":
        assert "missing or empty" in err and not aside  # nothing in it to keep
    else:
        assert len(aside) == 1 and str(aside[0]) in err  # says where it went
        if before is not None:
            assert aside[0].read_bytes() == before  # moved, never changed or deleted
        else:
            assert (aside[0] / "something").read_text() == "x"
    # the rebuilt records carry what the folders hold
    with runs.open_store() as store:
        rec = runs.resolve_run(store, str(folders[0]))
        assert rec.step == 3 and rec.last_val_loss == 2.5 and store.integrity_ok()
    assert main(["runs", "show", "run1"]) == 0 and "run1" in capsys.readouterr().out


def test_runs_gone_from_a_damaged_database_are_salvaged_when_readable(tmp_path, datadir):
    """A database from before the folder list: the damaged copy's own table still names the runs."""
    folders = recorded(tmp_path)
    (datadir / folder_index.INDEX_NAME).unlink()
    db = datadir / "runs.sqlite3"
    checkpointed(db)
    con = sqlite3.connect(db)
    con.execute("DROP TABLE run_log")  # another schema now, but the runs table reads
    con.commit()
    con.close()
    told = []
    with runs.open_store(notify=told.append) as store:
        assert sorted(r.run_dir for r in store.runs()) == sorted(str(f) for f in folders)
    assert "moved to" in told[0]


def test_older_database_starts_the_folder_list(tmp_path, datadir):
    folders = recorded(tmp_path)
    (datadir / folder_index.INDEX_NAME).unlink()
    runs.open_store().close()
    assert folder_index.read(datadir) == [str(f) for f in folders]


def test_a_first_run_is_not_reported_as_a_repair(tmp_path, datadir, capsys):
    """A fresh data folder whose list already names the starting run's folder (no settings in it
    yet) opens quietly: nothing was missing, nothing is said to be rebuilt."""
    folder_index.add(datadir, str(tmp_path / "first-run"))
    store = runs.open_store()
    assert store.notice in (None, ""), store.notice
    store.close()
    assert "rebuilt" not in capsys.readouterr().err


def test_folder_list_survives_a_torn_last_line(tmp_path):
    index = tmp_path / folder_index.INDEX_NAME
    index.write_text("/a/run1\n/a/ru")  # a writer killed mid-line
    assert folder_index.read(tmp_path) == ["/a/run1"]
    folder_index.add(tmp_path, "/a/run2")  # starts on a line of its own: the fragment stays a harmless line
    assert folder_index.read(tmp_path) == ["/a/run1", "/a/ru", "/a/run2"]


def test_locked_database_is_a_located_error_and_the_recorder_only_warns(tmp_path, datadir, monkeypatch, capsys):
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import events as ev

    recorded(tmp_path, 1)
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 100)
    holder = sqlite3.connect(datadir / "runs.sqlite3", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        capsys.readouterr()
        assert main(["runs", "delete", "run0", "--yes", "--keep-files"]) == 2
        err = capsys.readouterr().err
        assert "runs.sqlite3" in err and "locked" in err and "Traceback" not in err
        told = []
        cfg = TrainConfig(model="m", data="d", output=str(tmp_path / "new-run"))
        rec = runs.RunRecorder(cfg, heartbeat_seconds=0, warn=told.append)
        rec(ev.StateChanged("loading"))  # training goes on
        rec(ev.StateChanged("finished"))
        assert rec.errors >= 1 and len(told) == 1 and "locked" in told[0] and "runs import" in told[0]
        assert str(tmp_path / "new-run") in folder_index.read(datadir)  # a later rebuild finds it
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert main(["runs", "import", str(run_folder(tmp_path, "later"))]) == 0


def test_read_only_data_folder_lists_runs_and_refuses_writes(tmp_path, datadir, capsys):
    from hostile.ro_folder import read_only

    recorded(tmp_path, 1)
    capsys.readouterr()
    with read_only(datadir):
        assert main(["runs", "list"]) == 0
        out, err = capsys.readouterr()
        assert "run0" in out and "read-only" in err
        assert main(["runs", "delete", "run0", "--yes", "--keep-files"]) == 2
        err = capsys.readouterr().err
        assert "runs.sqlite3" in err and "writable" in err and "Traceback" not in err


def test_newer_database_names_the_file(tmp_path, datadir):
    db = datadir / "runs.sqlite3"
    runs.open_store().close()
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_version SET version=99")
    con.commit()
    con.close()
    with pytest.raises(FinetuneError, match="newer Finetune") as info:
        runs.open_store()
    assert info.value.file == str(db) and db.is_file()  # a newer app's database is never moved


def test_full_disk_is_a_located_error_and_the_recorder_only_warns(tmp_path):
    """SQLite's own "database or disk is full" (max_page_count caps the file, as a full disk would)."""
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import events as ev

    told = []
    cfg = TrainConfig(model="m", data="d", output=str(tmp_path / "run"))
    rec = runs.RunRecorder(cfg, path=tmp_path / "runs.sqlite3", heartbeat_seconds=0, warn=told.append)
    rec(ev.StateChanged("loading"))
    pages = rec.store.query("PRAGMA page_count")[0][0]
    rec.store.db.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(FinetuneError, match="disk holding the run database is full") as info:
        rec.store.add_samples(rec.run_id, 1, [{"output": "x" * 100_000}])
    assert info.value.file == str(tmp_path / "runs.sqlite3")
    rec(ev.SampleReport(step=1, items=[ev.SampleItem(index=0, prompt="p", reference="r", output="y" * 100_000)]))
    assert rec.errors == 1 and "full" in told[-1] and "Training goes on" in told[-1]
    rec.store.db.execute(f"PRAGMA max_page_count = {pages + 50}")  # space again: recording goes on
    rec(ev.TrainReport(step=1, total_steps=1, epoch=0.1, loss=1.0, learning_rate=1e-3, tokens_per_second=1.0,
                       examples_per_second=1.0, peak_memory_gb=0.0, active_memory_gb=0.0, step_time=1.0,
                       eta_seconds=0.0, trained_tokens=1))
    assert rec.store.losses(rec.run_id) == {1: 1.0} and rec.errors == 1
    rec.close()


def test_a_run_deleted_with_its_files_kept_stays_deleted_after_a_rebuild(tmp_path, datadir, capsys):
    folders = recorded(tmp_path)
    assert main(["runs", "delete", "run0", "--yes", "--keep-files"]) == 0
    assert (folders[0] / "train_config.toml").is_file()  # kept
    assert folder_index.read(datadir) == [str(folders[1])]
    damage(datadir / "runs.sqlite3", "garbage")
    capsys.readouterr()
    assert main(["runs", "list", "--json"]) == 0
    assert [Path(r["run_dir"]).name for r in json.loads(capsys.readouterr().out)] == ["run1"]
    folder_index.add(datadir, str(folders[0]))  # trained again: listed again
    assert folder_index.read(datadir) == [str(folders[1]), str(folders[0])]

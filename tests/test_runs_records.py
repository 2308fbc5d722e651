"""The run database without training: schema and migrations, the store, fingerprints, crash
detection (dead pid, pid reuse, stale heartbeat), the data folder, and `runs list/show/delete`."""

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_app.core import runs
from finetune_app.core.run_records import schema
from finetune_app.core.run_records.fingerprint import fingerprint_model, fingerprint_path
from finetune_app.core.run_records.store import RunStore, connect


@pytest.fixture
def datadir(tmp_path, monkeypatch):
    d = tmp_path / "appdata"
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(d))
    return d


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def add_run(store, run_dir, *, status="running", pid=None, host=None, token=None, steps=4):
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    rid = store.create_run(name=Path(run_dir).name, run_dir=str(run_dir), config={"iters": steps, "output": str(run_dir)},
                           model="m", data="d", pid=pid, host=host or runs._host(), pid_started=token,
                           status=status, total_steps=steps)
    for s in range(1, steps + 1):
        store.add_train(rid, {"step": s, "loss": 5.0 - s / 10, "learning_rate": 1e-3, "total_steps": steps})
    store.add_val(rid, {"step": steps, "val_loss": 4.5})
    return rid


# ---- locations ------------------------------------------------------------------------------------

def test_data_dir_env_and_platform_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "x"))
    assert runs.db_path() == tmp_path / "x" / "runs.sqlite3"
    monkeypatch.delenv("FINETUNE_DATA_DIR")
    monkeypatch.setattr(runs.sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert runs.data_dir() == tmp_path / "xdg" / "finetune-app"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runs.data_dir() == tmp_path / "home" / ".local" / "share" / "finetune-app"
    monkeypatch.setattr(runs.sys, "platform", "darwin")
    assert runs.data_dir() == tmp_path / "home" / "Library" / "Application Support" / "Finetune"


# ---- schema -------------------------------------------------------------------------------------

def test_new_database_is_latest_and_wal(tmp_path):
    with RunStore(tmp_path / "r.sqlite3") as store:
        assert store.version == schema.LATEST
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.integrity_ok()


def test_v1_database_upgrades_with_its_data(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = connect(path)
    assert schema.migrate(db, upto=1) == (0, 1)
    now = time.time()
    db.execute("INSERT INTO runs (name, run_dir, status, config, created_at, step, total_steps)"
               " VALUES ('old', '/x/old', 'finished', '{}', ?, 3, 3)", (now,))
    for step, loss in ((1, 3.0), (2, 2.0), (3, 2.5)):
        db.execute("INSERT INTO metrics VALUES (1, 'val', ?, ?, NULL, '{}', ?)", (step, loss, now))
    db.execute("INSERT INTO checkpoints VALUES (1, 2, '/x/old/checkpoints/step-0000002', ?)", (now,))
    db.close()

    with RunStore(path) as store:
        assert store.migrated_from == 1 and store.version == schema.LATEST
        rec = store.get(1)
        assert rec.name == "old" and rec.status == "finished"
        assert (rec.best_val_loss, rec.best_step) == (2.0, 2), "v2 backfills the best validation loss"
        assert store.checkpoints(1)[0].val_loss == 2.0
        assert store.exports(1) == [] and rec.sessions == 1
        store.add_export(1, "adapter", str(tmp_path / "exp"))
        assert store.exports(1)[0]["target"] == "adapter"


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "new.sqlite3"
    RunStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(Exception, match="newer Finetune"):
        RunStore(path)


def test_store_records_and_forgets_after_a_resume_point(tmp_path):
    with RunStore(tmp_path / "r.sqlite3") as store:
        rid = add_run(store, tmp_path / "run", steps=6)
        store.add_samples(rid, 6, [{"index": 0, "prompt": "p", "reference": "r", "output": "o"}])
        assert sorted(store.losses(rid)) == [1, 2, 3, 4, 5, 6]
        store.forget_after(rid, 4)
        assert sorted(store.losses(rid)) == [1, 2, 3, 4]
        assert store.samples(rid) == [] and store.losses(rid, "val") == {}
        rec = store.get(rid)
        assert rec.step == 4 and rec.last_loss == pytest.approx(4.6) and rec.best_val_loss is None
        store.delete_run(rid)
        assert store.get(rid) is None and store.query("SELECT count(*) FROM metrics")[0][0] == 0


# ---- fingerprints -------------------------------------------------------------------------------

def test_fingerprints_change_with_content_not_with_reading(tmp_path):
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    (d / "captions.csv").write_text("file,caption\na.png,hello\n")
    (d / "images" / "a.png").write_bytes(b"\x89PNG" + b"0" * 5000)
    first = fingerprint_path(d)
    assert first.startswith("dir:") and fingerprint_path(d) == first
    (d / "captions.csv").write_text("file,caption\na.png,hullo\n")  # same size, new content
    os.utime(d / "captions.csv", ns=(1, 1))
    second = fingerprint_path(d)
    assert second != first
    (d / "images" / "b.png").write_bytes(b"x")
    assert fingerprint_path(d) != second
    assert fingerprint_path(d / "captions.csv").startswith("file:")
    assert fingerprint_path(tmp_path / "nope") == "missing:"
    assert fingerprint_model("org/some-model") == "hub:org/some-model"


def test_fingerprint_of_many_images_reads_no_image_bytes(tmp_path, monkeypatch):
    """Fast because images are fingerprinted by name, size and time only: none is opened."""
    import builtins

    d = tmp_path / "many"
    d.mkdir()
    for i in range(2000):
        (d / f"{i:05d}.jpg").write_bytes(b"\xff\xd8" + bytes([i % 256]) * 4096)
    (d / "captions.csv").write_text("file_name,text\n")
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    fingerprint_path(d)
    assert opened == [str(d / "captions.csv")]


# ---- crash detection ----------------------------------------------------------------------------

def test_dead_process_is_marked_interrupted_live_one_is_not(tmp_path):
    with RunStore(tmp_path / "r.sqlite3") as store:
        dead = add_run(store, tmp_path / "dead", pid=dead_pid())
        live = add_run(store, tmp_path / "live", pid=os.getpid(), token=runs.process_start_token(os.getpid()))
        reused = add_run(store, tmp_path / "reused", pid=os.getpid(), token="linux:1")  # pid reused since
        far = add_run(store, tmp_path / "far", pid=1, host="another-host")
        store.update_run(far, heartbeat_at=time.time() - runs.STALE_SECONDS - 5)
        near = add_run(store, tmp_path / "near", pid=1, host="another-host")
        changed = {r.id for r in runs.mark_interrupted(store)}
        expect = {dead, far} | ({reused} if sys.platform.startswith("linux") else set())
        assert changed == expect
        assert store.get(live).status == "running" and store.get(near).status == "running"
        rec = store.get(dead)
        assert rec.status == "interrupted" and "no checkpoint was written" in rec.message
        assert rec.ended_at is not None


def test_interrupted_run_with_checkpoint_is_resumable(tmp_path):
    from finetune_app.core.training import checkpoint as ckpt

    with RunStore(tmp_path / "r.sqlite3") as store:
        run_dir = tmp_path / "run"
        rid = add_run(store, run_dir, pid=dead_pid())
        assert runs.resumable_runs(store) == [], "no checkpoint, nothing to resume"
        c = run_dir / "checkpoints" / "step-0000002"
        c.mkdir(parents=True)
        (c / "state.json").write_text(json.dumps({"step": 2}))
        (c / "adapter_config.json").write_text("{}")
        for name in ("adapters.safetensors", "optimizer.safetensors"):
            header = b"{}"
            (c / name).write_bytes(len(header).to_bytes(8, "little") + header)
        assert ckpt.is_valid(c)
        found = runs.resumable_runs(store)
        assert [r.id for r in found] == [rid] and found[0].status == "interrupted"
        assert [r.id for r in runs.recover_at_startup(store)] == [rid]
        assert runs.last_checkpoint(found[0]) == c


def test_resolve_run_by_id_folder_and_name(tmp_path):
    with RunStore(tmp_path / "r.sqlite3") as store:
        rid = add_run(store, (tmp_path / "alpha").resolve(), status="finished")
        assert runs.resolve_run(store, str(rid)).id == rid
        assert runs.resolve_run(store, str(tmp_path / "alpha")).id == rid
        assert runs.resolve_run(store, "alpha").id == rid
        with pytest.raises(Exception, match="No recorded run"):
            runs.resolve_run(store, "beta")


def test_disk_usage_and_stale_temporaries(tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints" / "step-0000002").mkdir(parents=True)
    (d / "checkpoints" / "step-0000002" / "a").write_bytes(b"x" * 1000)
    (d / "checkpoints" / ".step-0000004.staging-abc").mkdir()
    (d / "checkpoints" / ".step-0000004.staging-abc" / "b").write_bytes(b"x" * 500)
    (d / ".adapters.partial123.safetensors").write_bytes(b"x" * 200)
    (d / "metrics.jsonl").write_bytes(b"x" * 10)
    assert runs.disk_usage(d) == 1710
    assert runs.remove_stale_temporaries(d) == 700
    assert runs.disk_usage(d) == 1010 and (d / "checkpoints" / "step-0000002").is_dir()
    assert runs.disk_usage(tmp_path / "missing") == 0
    assert runs.human_bytes(1_500_000) == "1.5 MB"


def test_record_export(tmp_path, datadir):
    with runs.open_store() as store:
        rid = add_run(store, (tmp_path / "run").resolve(), status="finished")
    assert runs.record_export(tmp_path / "run", "fused", tmp_path / "out", {"bits": 4}) is not None
    assert runs.record_export(tmp_path / "other", "fused", tmp_path / "out") is None
    with runs.open_store() as store:
        [e] = store.exports(rid)
    assert e["target"] == "fused" and e["details"] == {"bits": 4} and not e["exists"]


# ---- the CLI ------------------------------------------------------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, "-m", "finetune_app", "runs", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_cli_list_show_delete(tmp_path, datadir):
    with runs.open_store() as store:
        done = add_run(store, (tmp_path / "done").resolve(), status="finished")
        crashed = add_run(store, (tmp_path / "crashed").resolve(), pid=dead_pid())
    (tmp_path / "done" / "adapters.safetensors").write_bytes(b"x" * 4096)

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "finished" in listed.stdout and "interrupted" in listed.stdout and "4.1 KB" in listed.stdout
    data = json.loads(cli("list", "--json").stdout)
    assert [(r["id"], r["status"]) for r in data] == [(done, "finished"), (crashed, "interrupted")]
    assert data[0]["disk_bytes"] == 4096 and "config" not in data[0]
    assert [r["id"] for r in json.loads(cli("list", "--json", "--status", "interrupted").stdout)] == [crashed]

    shown = cli("show", done)
    assert shown.returncode == 0 and "status      finished" in shown.stdout and "iters = 4" in shown.stdout
    detail = json.loads(cli("show", "done", "--json").stdout)
    assert [m["step"] for m in detail["train"]] == [1, 2, 3, 4] and detail["val"][0]["val_loss"] == 4.5

    no = cli("delete", done)  # not a terminal and no --yes: refuses
    assert no.returncode == 2 and (tmp_path / "done").exists()
    gone = cli("delete", done, "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "freed 4.1 KB" in gone.stdout and not (tmp_path / "done").exists()
    assert cli("show", done).returncode == 2
    resumed = cli("resume", crashed)
    assert resumed.returncode != 0 and "error:" in resumed.stderr
    assert cli("list", "--json").returncode == 0


# ---- the recorder without training --------------------------------------------------------------

def test_recorder_records_events_and_heartbeats(tmp_path):
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import events as ev

    db = tmp_path / "r.sqlite3"
    cfg = TrainConfig(model="org/model", data=str(tmp_path), output=str(tmp_path / "run"), iters=3)
    rec = runs.RunRecorder(cfg, path=db, heartbeat_seconds=0.05)
    rec(ev.StateChanged("failed", "bad settings"))  # refused before loading: no record
    rec(ev.StateChanged("loading"))
    rec(ev.StateChanged("started", step=0))
    with RunStore(db) as store:
        first = store.get(rec.run_id).heartbeat_at
        time.sleep(0.3)
        assert store.get(rec.run_id).heartbeat_at > first, "the heartbeat thread beats"
    for step in (1, 2, 3):
        rec(ev.TrainReport(step=step, total_steps=3, epoch=0.1, loss=3.0 - step / 10, learning_rate=1e-3,
                           tokens_per_second=1, examples_per_second=1, peak_memory_gb=0, active_memory_gb=0,
                           step_time=0.1, eta_seconds=0, trained_tokens=step))
    rec(ev.ValReport(step=3, val_loss=2.5, val_tokens=10, seconds=0.1))
    rec(ev.SampleReport(step=3, items=(ev.SampleItem(index=0, prompt="p", reference="r", output="o"),)))
    rec(ev.Notice("something to know"))
    rec(ev.StateChanged("finished", step=3))
    rec.close()
    assert rec.errors == 0
    with RunStore(db) as store:
        r = store.get(rec.run_id)
        assert (r.status, r.step, r.total_steps, r.last_val_loss, r.best_step) == ("finished", 3, 3, 2.5, 3)
        assert r.model_fingerprint == "hub:org/model" and r.data_fingerprint.startswith("dir:")
        assert r.pid == os.getpid() and r.ended_at is not None and r.config["iters"] == 3
        assert store.losses(rec.run_id) == pytest.approx({1: 2.9, 2: 2.8, 3: 2.7})
        assert store.samples(rec.run_id)[0]["output"] == "o"
        assert [e["kind"] for e in store.run_log(rec.run_id)] == ["session", "notice", "state"]
        assert len(store.runs()) == 1


def test_a_broken_database_never_stops_training(tmp_path):
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import events as ev

    # a database that cannot be opened at all (its folder is a file): a warning, training goes on
    (tmp_path / "not-a-folder").write_text("x")
    cfg = TrainConfig(model="m", data="d", output=str(tmp_path / "run"))
    told = []
    rec = runs.RunRecorder(cfg, path=tmp_path / "not-a-folder" / "runs.sqlite3", heartbeat_seconds=0, warn=told.append)
    rec(ev.StateChanged("loading"))  # must not raise
    rec(ev.StateChanged("finished"))
    assert rec.errors >= 1 and any("not being recorded" in t and "runs import" in t for t in told)
    # a folder where the database should be is moved aside and the run is recorded
    (tmp_path / "db-is-a-folder").mkdir()
    rec = runs.RunRecorder(cfg, path=tmp_path / "db-is-a-folder", heartbeat_seconds=0, warn=told.append)
    rec(ev.StateChanged("loading"))
    rec(ev.StateChanged("finished"))
    assert rec.errors == 0 and rec.store.get(rec.run_id).status == "finished"
    assert any("moved to" in t for t in told) and list(tmp_path.glob("db-is-a-folder.damaged-*"))
    rec.close()


def test_a_run_training_now_is_not_resumed_or_deleted(tmp_path, datadir):
    me = os.getpid()
    with runs.open_store() as store:
        rid = add_run(store, tmp_path / "live", pid=me, token=runs.process_start_token(me))
        with pytest.raises(Exception, match="is training now"):
            runs.check_can_resume(store, store.get(rid))
        with pytest.raises(Exception, match="is training now"):
            runs.delete_run(store, rid)
    assert (tmp_path / "live").is_dir()


def test_a_run_started_again_in_its_folder_continues_its_own_record(tmp_path):
    """`train --output DIR` after a kill before the first checkpoint (the only restart the folder
    check allows) starts over in the same record: one run per folder, no interrupted twin."""
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import events as ev

    db = tmp_path / "r.sqlite3"
    cfg = TrainConfig(model="org/model", data=str(tmp_path), output=str(tmp_path / "run"), iters=3)
    killed = runs.RunRecorder(cfg, path=db, heartbeat_seconds=0)
    killed(ev.StateChanged("loading"))
    killed(ev.StateChanged("started", step=0))
    killed(ev.TrainReport(step=1, total_steps=3, epoch=0.1, loss=3.0, learning_rate=1e-3, tokens_per_second=1,
                          examples_per_second=1, peak_memory_gb=0, active_memory_gb=0, step_time=0.1,
                          eta_seconds=0, trained_tokens=1))
    killed.close()  # killed: no final state

    again = runs.RunRecorder(cfg.replace(iters=5), path=db, heartbeat_seconds=0)
    again(ev.StateChanged("loading"))
    again(ev.StateChanged("started", step=0))
    again.close()
    with RunStore(db) as store:
        assert [r.id for r in store.runs()] == [killed.run_id] == [again.run_id]
        r = store.get(again.run_id)
        assert (r.status, r.step, r.total_steps) == ("running", 0, 5)
        assert store.losses(r.id) == {}, "the killed attempt's curve is not this run's"
        assert [e["message"].split(" (")[0] for e in store.run_log(r.id) if e["kind"] == "session"] == \
            ["started", "started again"]

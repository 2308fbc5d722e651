"""Exports a user can trust (issue 14): a `--force` export SIGKILLed between its two renames leaves
the old or the new bundle at the destination, never nothing, and the next export puts back or
cleans up what it left; a folder that cannot be written is a located error before any work;
`compare --save x.csv` writes formula-leading cells inert.

The kill is real: the export runs in a subprocess whose os.replace / os.rename SIGKILLs the
process right after the rename that moved the old bundle away (or right after the one that put
the new bundle in place) - whatever the export code names its folders.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")

from test_export_support import make_adapter

from finetune_app.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Runs `finetune-app ARGV`, SIGKILLing itself right after the first rename whose source (mode
# "away") or target (mode "into") is the destination folder.
KILLER = r"""
import os, signal, sys
dest, mode = os.path.abspath(sys.argv[1]), sys.argv[2]
def wrap(real):
    def rename(src, dst, *a, **k):
        real(src, dst, *a, **k)
        hit = os.path.abspath(src) if mode == "away" else os.path.abspath(dst)
        if hit == dest:
            os.kill(os.getpid(), signal.SIGKILL)
    return rename
os.replace, os.rename = wrap(os.replace), wrap(os.rename)
from finetune_app.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_adapter("qwen2", tmp_path_factory.mktemp("trust-export") / "run")


def hidden_leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def export_args(run_dir: Path, dest: Path, *more: str) -> list[str]:
    return ["export", "--adapter", str(run_dir), "--target", "adapter", "--output", str(dest), "--no-verify", *more]


@pytest.mark.parametrize("mode", ["away", "into"])
def test_force_export_killed_between_renames_leaves_a_bundle(run_dir, tmp_path, mode):
    dest = tmp_path / "bundle"
    assert main(export_args(run_dir, dest)) == 0
    (dest / "my-notes.txt").write_text("the user's own note in the old bundle")
    old = {p.name: p.read_bytes() for p in dest.iterdir()}

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(dest), mode, *export_args(run_dir, dest, "--force")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    # The next export (here: one without --force, which must refuse) first repairs what the kill left.
    rc = main(export_args(run_dir, dest))
    assert rc == 2  # "already exists": a bundle is at the destination
    assert dest.is_dir()
    now = {p.name: p.read_bytes() for p in dest.iterdir()}
    if mode == "away":  # killed with the old bundle moved away: it is put back, whole
        assert now == old
    else:  # killed after the new bundle went in: the new one stays, the old one's backup goes
        assert "my-notes.txt" not in now and "adapters.safetensors" in now
    assert hidden_leftovers(dest) == []  # no backup or staging folder left behind


def test_an_export_elsewhere_also_repairs_a_killed_swap(run_dir, tmp_path, monkeypatch):
    # A data folder of its own: any export repairs the killed swaps noted in the data folder, so an
    # export in a test running beside this one would otherwise repair this swap before it is looked at.
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "app-data"))
    dest = tmp_path / "bundle"
    assert main(export_args(run_dir, dest)) == 0
    old = {p.name: p.read_bytes() for p in dest.iterdir()}
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(dest), "away", *export_args(run_dir, dest, "--force")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL and not dest.exists()
    assert main(export_args(run_dir, tmp_path / "elsewhere" / "other")) == 0
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == old and hidden_leftovers(dest) == []


def test_force_export_replaces_and_leaves_nothing_hidden(run_dir, tmp_path):
    dest = tmp_path / "bundle"
    assert main(export_args(run_dir, dest)) == 0
    (dest / "stale.txt").write_text("x")
    assert main(export_args(run_dir, dest, "--force")) == 0
    assert not (dest / "stale.txt").exists() and (dest / "adapters.safetensors").is_file()
    assert hidden_leftovers(dest) == []


def test_stale_backup_and_staging_of_dead_exports_are_cleaned(run_dir, tmp_path):
    from finetune_app.core.export import publish

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dest = tmp_path / "bundle"
    assert main(export_args(run_dir, dest)) == 0
    # an older Finetune's backup (no journal) with the destination gone: it comes back
    os.replace(dest, tmp_path / f".bundle.old-{dead}")
    stage = tmp_path / ".bundle.staging-abc"
    stage.mkdir()
    (stage / publish.STAGE_MARKER).write_text(dead)
    (stage / "half.safetensors").write_bytes(b"\0" * 10)
    # a journal of a dead export naming a backup that is gone, and garbage: both ignored, removed
    publish.journal_path(dest).write_text("{not json")
    notes = publish.recover(dest)
    assert dest.is_dir() and (dest / "adapters.safetensors").is_file() and "put back" in notes[0]
    assert publish.remove_stale_stages(dest) == [stage]
    assert hidden_leftovers(dest) == []


def test_read_only_output_folder_is_a_located_error(run_dir, tmp_path, capsys):
    from hostile.ro_folder import read_only

    parent = tmp_path / "locked"
    parent.mkdir()
    with read_only(parent):
        rc = main(export_args(run_dir, parent / "out"))
        err = capsys.readouterr().err
        assert not (parent / "out").exists()
    assert rc == 2 and str(parent) in err and "writ" in err and "Traceback" not in err


def test_compare_csv_cells_cannot_run_as_formulas(tmp_path):
    from finetune_app.core.compare import CompareRow, rows_to_csv

    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "plain", "a=b"]
    rows = [CompareRow(index=i, label="", image="", prompt=h, reference=h, base=h, tuned=h, error="")
            for i, h in enumerate(hostile)]
    back = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    for row, h in zip(back, hostile):
        for col in ("prompt", "reference", "base", "tuned"):
            assert row[col] == (h if h in ("plain", "a=b") else "'" + h), (col, row[col])
    assert back[0]["index"] == "0"


def test_compare_save_to_a_read_only_folder_is_refused_first(tmp_path, capsys):
    from hostile.ro_folder import read_only

    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        rc = main(["compare", "--adapter", str(tmp_path / "no-run"), "--data", str(tmp_path / "no-data"),
                   "--save", str(parent / "x.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "x.csv" in err and "writable" in err  # refused before looking at the adapter
    rc = main(["compare", "--adapter", str(tmp_path), "--data", str(tmp_path), "--save", str(tmp_path)])
    assert rc == 2 and "is a folder" in capsys.readouterr().err


def test_journal_names_only_hidden_siblings(tmp_path):
    """A journal cannot make recovery rename anything but the destination's own backup."""
    from finetune_app.core.export import publish

    dest = tmp_path / "bundle"
    victim = tmp_path / "important"
    victim.mkdir()
    (victim / "f").write_text("keep")
    publish.journal_path(dest).write_text(json.dumps({"pid": 1 << 30, "backup": "../important"}))
    publish.recover(dest)
    assert (victim / "f").read_text() == "keep" and not dest.exists()


def test_one_staging_folder_implementation_marks_and_never_replaces_a_newcomer(tmp_path):
    """atomic.staged_dir is the one staging folder (checkpoints, datasets, export bundles): the
    export's pid marker is there while the block runs and gone from the published folder, and a
    destination someone else created meanwhile is never replaced without overwrite."""
    import os

    from finetune_app.core import atomic
    from finetune_app.core.export import publish

    dest = tmp_path / "bundle"
    with atomic.staged_dir(dest, marker=publish.STAGE_MARKER, publish=publish.publish) as stage:
        assert (stage / publish.STAGE_MARKER).read_text() == str(os.getpid())
        (stage / "model.safetensors").write_bytes(b"x")
    assert sorted(p.name for p in dest.iterdir()) == ["model.safetensors"]

    other = tmp_path / "other"
    with pytest.raises(FileExistsError):
        with atomic.staged_dir(other) as stage:
            (stage / "mine").write_text("new")
            other.mkdir()  # another process's folder appears meanwhile
    assert list(other.iterdir()) == [] and not list(tmp_path.glob(".other.staging-*"))


def test_staging_folder_killed_before_its_marker_was_written_is_removed(tmp_path):
    """A kill between creating the pid marker and writing it leaves an empty marker: the folder's
    name carries the pid, so the next export still knows the folder's process is gone."""
    import subprocess
    import sys

    from finetune_app.core.export.publish import STAGE_MARKER, remove_stale_stages

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dest = tmp_path / "bundle"
    stage = tmp_path / f".bundle.staging-{dead.pid}-abc123"
    stage.mkdir()
    (stage / STAGE_MARKER).write_text("")  # created, pid never written
    (stage / "model.safetensors").write_bytes(b"partial")
    live = tmp_path / f".bundle.staging-{__import__('os').getpid()}-def456"  # this process: alive
    live.mkdir()
    (live / STAGE_MARKER).write_text("")
    assert remove_stale_stages(dest) == [stage]
    assert not stage.exists() and live.exists()

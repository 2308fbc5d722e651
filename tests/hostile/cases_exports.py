"""Hostile export destinations: folders that cannot be written, what a killed `export --force` left
(the old bundle in a hidden backup, a journal, a staging folder), and `compare --save` targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hostile import case
from hostile.ro_folder import read_only


def _run(env) -> Path:
    from test_export_support import make_adapter

    return make_adapter(str(env.tiny_model("qwen2")), env.tmp / "run")


def _export(run: Path, out: Path, *more):
    return ("export", "--adapter", run, "--target", "adapter", "--output", out, "--no-verify", *more)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@case("export", "read-only-output-folder")
def _(env):
    run = _run(env)
    parent = env.tmp / "shared"
    parent.mkdir()
    with read_only(parent):
        env.expect(*_export(run, parent / "bundle"), exit=2, says=[str(parent), "writ"])
    assert not (parent / "bundle").exists()


@case("export", "killed-between-renames-old-bundle-put-back")
def _(env):
    run = _run(env)
    out = env.tmp / "bundle"
    env.expect(*_export(run, out), exit=0)
    (out / "notes.txt").write_text("the user's own notes")
    env.keep(out)
    # what a --force export SIGKILLed between its renames leaves: the old bundle in a hidden backup,
    # the journal naming it, the new bundle in its staging folder; the destination missing
    pid = _dead_pid()
    backup = env.tmp / f".bundle.old-{pid}-0"
    out.rename(backup)
    stage = env.tmp / ".bundle.staging-x1"
    stage.mkdir()
    (stage / "adapters.safetensors").write_bytes(b"half")
    (env.tmp / ".bundle.export-swap.json").write_text(json.dumps(
        {"dest": "bundle", "backup": backup.name, "stage": stage.name, "pid": pid, "token": None}))
    env.expect(*_export(run, out), exit=2, says=["bundle", "put back", "already exists", "--force"])
    assert _hidden(out) == []


@case("export", "older-finetune-backup-without-journal")
def _(env):
    run = _run(env)
    out = env.tmp / "bundle"
    env.expect(*_export(run, out), exit=0)
    out.rename(env.tmp / f".bundle.old-{_dead_pid()}")  # an older Finetune's swap, killed midway
    env.expect(*_export(run, out, "--force"), exit=0, says=["put back", "exported adapter"])
    assert (out / "adapters.safetensors").is_file() and _hidden(out) == []


@case("export", "garbage-swap-journal")
def _(env):
    run = _run(env)
    out = env.tmp / "bundle"
    env.expect(*_export(run, out), exit=0)
    (env.tmp / ".bundle.export-swap.json").write_bytes(b"\x00garbage{")
    env.expect(*_export(run, out, "--force"), exit=0, says=["exported adapter"])
    assert _hidden(out) == []


@case("export", "journal-pointing-outside")
def _(env):
    run = _run(env)
    victim = env.tmp / "precious"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    env.keep(victim)
    (env.tmp / ".bundle.export-swap.json").write_text(json.dumps(
        {"backup": "../precious", "stage": "../precious", "pid": _dead_pid()}))
    out = env.tmp / "bundle"
    env.expect(*_export(run, out), exit=0, says=["exported adapter"])
    assert victim.is_dir()


@case("export", "destination-is-a-file")
def _(env):
    run = _run(env)
    target = env.tmp / "bundle.txt"
    target.write_text("mine")
    env.keep(target)
    env.expect(*_export(run, target, "--force"), exit=2, says=["bundle.txt", "is a file", "folder"])


@case("export", "compare-save-read-only-folder")
def _(env):
    parent = env.tmp / "reports"
    parent.mkdir()
    with read_only(parent):
        env.expect("compare", "--adapter", env.tmp / "run", "--data", env.shapes_data, "--save", parent / "x.csv",
                   exit=2, says=["x.csv", "writable"])


@case("export", "compare-save-is-a-folder")
def _(env):
    (env.tmp / "out.csv").mkdir()
    env.expect("compare", "--adapter", env.tmp / "run", "--data", env.shapes_data, "--save", env.tmp / "out.csv",
               exit=2, says=["out.csv", "is a folder", "file name"])


@case("export", "force-over-a-destination-that-cannot-move")
def _(env):
    run = _run(env)
    out = env.tmp / "bundle"
    env.expect(*_export(run, out), exit=0)
    (out / "notes.txt").write_text("mine")
    env.keep(out)
    if os.geteuid() != 0:  # chmod does not stop renaming a folder within its parent; chattr +i (root) does
        import pytest

        pytest.skip("needs an immutable folder (root and chattr)")
    with read_only(out):  # the old bundle cannot be renamed away: it stays, whole
        env.expect(*_export(run, out, "--force"), exit=2, says=["bundle", "could not write the export", "writable"])
    assert _hidden(out) == []

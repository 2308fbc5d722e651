"""Run folders (issue #14, "own only what you made"): output folders that are not ours, read-only
folders, resumes that would change what the run is, and deletes that must spare the user's files."""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from hostile import case

_PRISTINE: dict[str, Path] = {}


def train_args(env, out, *, data=None, iters=2):
    return ["train", "--model", env.tiny_model("llama"), "--data", data or env.instruction_data, "--output", out,
            "--iters", iters, "--batch-size", 2, "--lora-rank", 4, "--steps-per-report", 1, "--steps-per-eval", 1000,
            "--save-every", 2, "--sample-count", 0, "--seed", 1, "--quiet"]


def trained_run(env, name: str = "run") -> Path:
    """A private copy of a finished 4-step run (checkpoints at steps 2 and 4), trained once per session."""
    model = str(env.tiny_model("llama"))
    if model not in _PRISTINE:
        root = Path(tempfile.mkdtemp(prefix="hostile-pristine-run-")) / "run"
        atexit.register(shutil.rmtree, root.parent, True)
        env.expect(*train_args(env, root, iters=4), exit=0)
        _PRISTINE[model] = root
    dest = env.tmp / name
    shutil.copytree(_PRISTINE[model], dest)
    return dest


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` read-only even for root (chmod, and the immutable flag where the OS has it)."""
    folder.chmod(0o555)
    immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0 \
        if shutil.which("chattr") else False
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def _is_read_only(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


@case("run-folder", "output-is-a-documents-folder")
def _(env):
    docs = env.tmp / "home" / "Documents"
    (docs / "taxes").mkdir(parents=True)
    (docs / "thesis.docx").write_bytes(b"my thesis")
    (docs / "taxes" / "2025.pdf").write_bytes(b"%PDF-1.7")
    env.keep(docs)
    env.expect(*train_args(env, docs), exit=5, says=["Documents", "not empty", "thesis.docx", "new or empty folder"])
    assert sorted(p.name for p in docs.iterdir()) == ["taxes", "thesis.docx"], "nothing of ours left behind"


@case("run-folder", "output-is-the-dataset-folder")
def _(env):
    data = env.copy(env.instruction_data, "mydata")
    env.keep(data)
    env.expect(*train_args(env, data, data=data), exit=5, says=["mydata", "dataset", "new or empty folder"])


@case("run-folder", "output-is-a-file")
def _(env):
    target = env.tmp / "notes.txt"
    target.write_text("mine")
    env.keep(target)
    env.expect(*train_args(env, target), exit=5, says=["notes.txt", "is a file", "folder"])


@case("run-folder", "output-folder-read-only")
def _(env):
    out = env.tmp / "locked"
    out.mkdir()
    with read_only(out):
        if not _is_read_only(out):
            return  # this file system cannot make a folder read-only for this user
        env.expect(*train_args(env, out), exit=5, says=["locked", "cannot write", "writable"])


@case("run-folder", "output-parent-read-only")
def _(env):
    parent = env.tmp / "readonly-parent"
    parent.mkdir()
    with read_only(parent):
        if not _is_read_only(parent):
            return
        env.expect(*train_args(env, parent / "run"), exit=5, says=["readonly-parent", "cannot write", "writable"])


@case("run-folder", "resume-read-only-run")
def _(env):
    run = trained_run(env)
    with read_only(run):
        if not _is_read_only(run):
            return
        env.expect("train", "--resume", run, "--iters", 6, "--quiet", exit=5, says=[str(run), "cannot write", "writable"])


@case("run-folder", "resume-changes-lora-rank")
def _(env):
    run = trained_run(env)
    env.keep(run / "checkpoints", run / "adapters.safetensors", run / "train_config.toml")
    env.expect("train", "--resume", run, "--iters", 6, "--lora-rank", 8, "--quiet", exit=5,
               says=["train_config.toml", "lora_rank", "4 -> 8", "new run"])


@case("run-folder", "resume-changes-data")
def _(env):
    run = trained_run(env)
    env.keep(run / "checkpoints", run / "train_config.toml")
    env.expect("train", "--resume", run, "--iters", 6, "--data", env.shapes_data, "--quiet", exit=5,
               says=["train_config.toml", "data", "shapes", "new run"])


@case("run-folder", "resume-changes-fine-tune-type")
def _(env):
    run = trained_run(env)
    env.keep(run / "checkpoints", run / "train_config.toml")
    env.expect("train", "--resume", run, "--iters", 6, "--fine-tune-type", "full", "--quiet", exit=5,
               says=["train_config.toml", "fine_tune_type", "'lora' -> 'full'"])


@case("run-folder", "resume-with-a-preset")
def _(env):
    run = trained_run(env)
    env.keep(run / "train_config.toml")
    env.expect("train", "--resume", run, "--preset", "quality", "--quiet", exit=5,
               says=["train_config.toml", "--preset", "drop"])


@case("run-folder", "resume-a-foreign-folder")
def _(env):
    docs = env.tmp / "Documents"
    docs.mkdir()
    (docs / "letter.txt").write_text("dear")
    env.keep(docs)
    env.expect("train", "--resume", docs, "--quiet", exit=5, says=["Documents", "no run to resume", "train_config.toml"])


@case("run-folder", "delete-keeps-the-users-files")
def _(env):
    run = trained_run(env)
    env.expect("runs", "import", run, exit=0)
    (run / "notes.txt").write_text("mine")
    (run / "exports").mkdir()
    (run / "exports" / "model.gguf").write_bytes(b"my export")
    env.keep(run / "notes.txt", run / "exports")
    env.expect("runs", "delete", run, "--yes", exit=0, says=["Deleted"])
    assert not (run / "train_config.toml").exists() and not (run / "checkpoints").exists()


@case("run-folder", "delete-with-a-manifest-that-points-outside")
def _(env):
    run = trained_run(env)
    victim = env.tmp / "victim.txt"
    victim.write_text("mine")
    elsewhere = env.tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    env.keep(victim, elsewhere)
    manifest = json.loads((run / "run.json").read_text())
    manifest["files"] += ["../victim.txt", str(victim), "../elsewhere", "checkpoints/../../victim.txt"]
    (run / "run.json").write_text(json.dumps(manifest))
    env.expect("runs", "import", run, exit=0)
    env.expect("runs", "delete", run, "--yes", exit=0, says=["Deleted"])
    assert not run.exists()


@case("run-folder", "delete-with-checkpoints-linked-to-user-folder")
def _(env):
    run = trained_run(env)
    mine = env.tmp / "my-checkpoints"
    for step in ("step-0000004", "step-0000009"):  # step-0000004 is also in the run's manifest
        (mine / step).mkdir(parents=True)
        (mine / step / "adapters.safetensors").write_bytes(b"my own adapter")
    env.keep(mine)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(mine, target_is_directory=True)
    env.expect("runs", "import", run, exit=0)
    env.expect("runs", "delete", run, "--yes", exit=0, says=["Deleted"])


@case("run-folder", "delete-a-read-only-run")
def _(env):
    run = trained_run(env)
    env.expect("runs", "import", run, exit=0)
    env.keep(run / "checkpoints", run / "train_config.toml", run / "adapters.safetensors")
    with read_only(run):
        if not _is_read_only(run):
            return
        env.expect("runs", "delete", run, "--yes", exit=5, says=[str(run), "writable", "nothing was deleted"])
    env.expect("runs", "show", run, exit=0, says=[str(run)])  # the record is kept too


@case("run-folder", "lock-file-is-a-link-to-a-user-file")
def _(env):
    run = trained_run(env)
    mine = env.tmp / "diary.txt"
    mine.write_text("my own words")
    env.keep(mine)
    (run / ".run.lock").unlink()
    (run / ".run.lock").symlink_to(mine)
    env.expect("train", "--resume", run, "--iters", 6, "--quiet", exit=5, says=[str(run), "cannot write", "writable"])


@case("run-folder", "resume-keeps-the-users-hidden-temporary-files")
def _(env):
    run = trained_run(env)
    (run / ".notes.tmp").write_text("my scratch notes")
    (run / ".draft.partial1.txt").write_text("my draft")
    env.keep(run / ".notes.tmp", run / ".draft.partial1.txt")
    env.expect("train", "--resume", run, "--iters", 6, "--quiet", exit=0, says=["Resuming from step-0000004"])

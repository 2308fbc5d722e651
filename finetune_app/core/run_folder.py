"""A run folder is ours to write and delete only as far as we made it.

* Its file names live here, each with its path and its reader (and writer where it is written
  whole): the rest of the app asks this module instead of spelling a name.
* `run.json` is the manifest: it marks the folder as a run of ours and lists what the run wrote,
  so deleting a run removes exactly those files (and the folder only when it ends up empty),
  never the user's own files beside them.
* `check_new_output()` refuses an output folder that is neither new, empty, nor a run of ours
  (the user's Documents, the dataset folder...), before anything is written there.
* `RunLock` is the one-writer rule: an OS lock (flock) on `.run.lock`, held while a process
  trains the run and released by the kernel when it exits or is killed.
* `check_resume_changes()` says which settings a resume may change (steps, intervals, the
  learning rate) and refuses the rest (model, data, adapter shape...) with old and new values.

No MLX and no Qt here: `runs delete` and the GUI use it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from finetune_app.core import atomic
from finetune_app.core.errors import ConfigError, FinetuneError

MANIFEST_FILE = "run.json"
LOCK_FILE = ".run.lock"
CONFIG_FILE = "train_config.toml"
METRICS_FILE = "metrics.jsonl"
REWARDS_FILE = "rewards.jsonl"  # GRPO: every sampled answer with its reward
ADAPTER_FILE = "adapters.safetensors"  # the libraries' adapter layout (core/adapters.py writes it)
ADAPTER_CONFIG_FILE = "adapter_config.json"
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"  # inside a checkpoint
OPTIMIZER_FILE = "optimizer.safetensors"  # inside a checkpoint
BEST_FILE = "best_checkpoint.json"  # which checkpoint is the best, by what (the trainer rewrites it at each checkpoint)
STEP_DIR = re.compile(r"^step-(\d{7,})$")
MANIFEST_FORMAT = "finetune-run"

# What a run writes at the top of its folder, and in each checkpoint folder.
RUN_FILES = (MANIFEST_FILE, LOCK_FILE, CONFIG_FILE, METRICS_FILE, ADAPTER_FILE, ADAPTER_CONFIG_FILE, BEST_FILE,
             REWARDS_FILE)
CHECKPOINT_FILES = (ADAPTER_FILE, ADAPTER_CONFIG_FILE, CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE)
# Half-written leftovers of our atomic writes: `.NAME.XXXX.tmp`, `.STEM.partialPID.SUFFIX`,
# `.step-N.staging-XXXX`, `.step-N.old-PID`.
_TEMP = re.compile(r"^\.(?P<name>[^/]+?)(\.[A-Za-z0-9_]+\.tmp|\.partial\d+.*|\.staging-.+|\.old-\d+)$")

_TEMP_OWNERS = frozenset(RUN_FILES) | {Path(f).stem for f in RUN_FILES}


# ---- the files, their paths and readers ----------------------------------------------------------

def config_path(folder: str | Path) -> Path:
    return Path(folder) / CONFIG_FILE


def read_config(folder: str | Path):
    """The run's settings (a TrainConfig; ConfigError naming the file when it cannot be read)."""
    from finetune_app.core.config import TrainConfig

    return TrainConfig.load(config_path(folder))


def write_config(folder: str | Path, config) -> Path:
    return config.save(config_path(folder))


def read_settings(folder: str | Path) -> dict:
    """The run's settings as written, without validating them ({} when missing or unreadable):
    for readers that need a value or two (the split, the base model) of any run, old or odd."""
    import tomllib

    try:
        return tomllib.loads(config_path(folder).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def metrics_path(folder: str | Path) -> Path:
    return Path(folder) / METRICS_FILE


def read_metrics(folder: str | Path) -> list[dict]:
    """The rows of the run's metrics.jsonl (written by events.MetricsLog; a cut last line dropped)."""
    from finetune_app.core.training.events import MetricsLog

    return MetricsLog.read(metrics_path(folder))


def rewards_path(folder: str | Path) -> Path:
    return Path(folder) / REWARDS_FILE


def append_rewards(folder: str | Path, rows: list[dict]) -> None:
    """Append GRPO's scored answers (one JSON object per line, each with its `step`), flushed
    whole; a line cut short by a kill is dropped on read, and resume truncates to the checkpoint."""
    import json

    path = rewards_path(folder)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()
    if new:
        record_files(folder, REWARDS_FILE)


def read_rewards(folder: str | Path) -> list[dict]:
    from finetune_app.core.training.events import MetricsLog

    return MetricsLog.read(rewards_path(folder))  # the same JSON-lines reading


def truncate_rewards(folder: str | Path, step: int) -> None:
    """Keep the rows of steps up to `step` (resume: the steps after the checkpoint run again)."""
    import json

    path = rewards_path(folder)
    if path.exists():
        rows = [r for r in read_rewards(folder) if r.get("step", 0) <= step]
        atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def adapter_path(folder: str | Path) -> Path:
    return Path(folder) / ADAPTER_FILE


def has_adapter(folder: str | Path) -> bool:
    """Both files of an adapter in the libraries' layout are there."""
    return adapter_path(folder).is_file() and (Path(folder) / ADAPTER_CONFIG_FILE).is_file()


def checkpoints_dir(folder: str | Path) -> Path:
    return Path(folder) / CHECKPOINTS


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoint_dir(folder: str | Path, step: int) -> Path:
    return checkpoints_dir(folder) / checkpoint_name(step)


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a checkpoint folder from its name, or None when it is no checkpoint's name."""
    m = STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def run_of(path: str | Path) -> Path:
    """The run folder a path belongs to: a checkpoint's run, else the path itself."""
    p = Path(path)
    return p.parent.parent if p.parent.name == CHECKPOINTS else p


def best_path(folder: str | Path) -> Path:
    return Path(folder) / BEST_FILE


def write_best(folder: str | Path, step: int, by: str, value: float) -> Path:
    """Mark the best checkpoint: {"checkpoint": "checkpoints/step-N", "step", "by", "value"}."""
    return atomic.write_text(best_path(folder), json.dumps(
        {"checkpoint": checkpoint_entry(step), "step": step, "by": by, "value": value}, indent=2) + "\n")


def read_best(folder: str | Path) -> dict | None:
    """What best_checkpoint.json says (None when missing, unreadable or naming no checkpoint folder)."""
    try:
        data = json.loads(best_path(folder).read_text(encoding="utf-8"))
        step = data["step"]
    except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError):
        return None
    return data if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def best_checkpoint_dir(folder: str | Path) -> Path | None:
    """The checkpoint best_checkpoint.json marks, when it is still there."""
    best = read_best(folder)
    path = checkpoint_dir(folder, best["step"]) if best else None
    return path if path is not None and path.is_dir() else None


def pick_checkpoint(folder: str | Path, which: str) -> Path:
    """A run's checkpoint folder by name: "best" (best_checkpoint.json), "latest", or a step
    number; ConfigError naming the run and what it has otherwise."""
    folder = Path(folder).expanduser()
    steps = sorted(s for p in (checkpoints_dir(folder).iterdir() if checkpoints_dir(folder).is_dir() else ())
                   if p.is_dir() and (s := checkpoint_step(p)) is not None)
    have = f"it has {', '.join(map(str, steps))}" if steps else "it has none"
    if which == "best":
        found = best_checkpoint_dir(folder)
        if found is None:
            raise ConfigError(f"The run in '{folder}' marks no best checkpoint ({BEST_FILE} is missing or names "
                              f"a checkpoint that is gone; {have}).",
                              "Choose --checkpoint latest or a step number.", file=best_path(folder))
        return found
    if which == "latest" and steps:
        return checkpoint_dir(folder, steps[-1])
    if which.isdigit() and int(which) in steps:
        return checkpoint_dir(folder, int(which))
    raise ConfigError(f"The run in '{folder}' has no checkpoint '{which}' ({have}).",
                      "Choose best, latest or one of its steps.", file=checkpoints_dir(folder))


def read_state(checkpoint: str | Path) -> dict:
    """A checkpoint's state.json (step, epoch, data position...); raises OSError / ValueError."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text(encoding="utf-8"))


# ---- the manifest -------------------------------------------------------------------------------

def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of a run folder, or None when there is none (or it is not ours / unreadable)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    files = data.get("files")
    data["files"] = [f for f in files if _safe_relative(f)] if isinstance(files, list) else []
    return data


def _safe_relative(name) -> bool:
    """A manifest entry may only name something inside the run folder."""
    if not isinstance(name, str) or not name or name.startswith(("/", "\\")) or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def record_files(folder: str | Path, *names: str, forget: tuple[str, ...] = ()) -> None:
    """Add `names` (relative paths this run wrote) to the manifest, drop `forget`; atomic."""
    folder = Path(folder)
    data = read_manifest(folder) or {"format": MANIFEST_FORMAT, "version": 1, "created": time.time(), "files": []}
    files = [f for f in data["files"] if f not in forget]
    files += [n for n in names if n not in files]
    if files != data["files"] or not (folder / MANIFEST_FILE).exists():
        data["files"] = files
        if MANIFEST_FILE not in files:
            files.insert(0, MANIFEST_FILE)
        atomic.write_json(folder / MANIFEST_FILE, data)


def start_manifest(folder: str | Path) -> None:
    """Mark `folder` as a run of ours, with the files every run writes."""
    record_files(folder, MANIFEST_FILE, LOCK_FILE, CONFIG_FILE, METRICS_FILE, ADAPTER_FILE, ADAPTER_CONFIG_FILE)


def record_sources(folder: str | Path, config) -> None:
    """Remember the fingerprints of the model and the dataset the run started from."""
    from finetune_app.core.run_records.fingerprint import fingerprint_model, fingerprint_path

    folder = Path(folder)
    data = read_manifest(folder) or {"format": MANIFEST_FORMAT, "version": 1, "created": time.time(),
                                      "files": [MANIFEST_FILE]}
    data["sources"] = {"model": fingerprint_model(config.model), "data": fingerprint_path(config.data) if config.data else ""}
    atomic.write_json(folder / MANIFEST_FILE, data)


def changed_sources(folder: str | Path, config) -> list[str]:
    """Which of the run's model and dataset changed on disk since it started (by fingerprint)."""
    from finetune_app.core.run_records.fingerprint import fingerprint_model, fingerprint_path

    was = (read_manifest(folder) or {}).get("sources")
    if not isinstance(was, dict):
        return []
    now = {"model": fingerprint_model(config.model), "data": fingerprint_path(config.data) if config.data else ""}
    names = {"model": f"the model '{config.model}'", "data": f"the dataset '{config.data}'"}
    return [names[k] for k in ("model", "data") if was.get(k) and was.get(k) != now[k]]


def checkpoint_entry(step: int) -> str:
    """A checkpoint as the manifest lists it (relative to the run folder)."""
    return f"{CHECKPOINTS}/{checkpoint_name(step)}"


# ---- what is ours -------------------------------------------------------------------------------

def _is_ours_name(name: str) -> bool:
    if name in RUN_FILES or name == CHECKPOINTS:
        return True
    m = _TEMP.match(name)
    return bool(m and m.group("name") in _TEMP_OWNERS)


def is_our_temporary(name: str) -> bool:
    """A half-written leftover of one of our atomic writes at the top of a run folder."""
    return name not in RUN_FILES and name != CHECKPOINTS and _is_ours_name(name)


def is_run(folder: str | Path) -> bool:
    """A run of ours: it has our manifest, or (runs made before manifests) a train_config.toml."""
    folder = Path(folder)
    return read_manifest(folder) is not None or (folder / CONFIG_FILE).is_file()


def foreign_entries(folder: str | Path) -> list[str]:
    """Names at the top of `folder` that no run of ours writes (the user's own files)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [n for n in names if not _is_ours_name(n)]


def has_progress(folder: str | Path) -> bool:
    """The run got as far as a checkpoint or a final adapter (so a fresh start would overwrite work)."""
    folder = Path(folder)
    root = folder / CHECKPOINTS
    steps = root.is_dir() and any(STEP_DIR.match(p.name) for p in root.iterdir())
    return bool(steps) or (folder / ADAPTER_FILE).exists()


def check_new_output(folder: str | Path, *, data: str | Path | None = None) -> str:
    """May a new run be trained into `folder`? Returns "new", "empty" or "restart" (a run of ours
    that stopped before its first checkpoint); raises ConfigError naming the folder otherwise."""
    d = Path(folder).expanduser()
    if d.exists() and not d.is_dir():
        raise ConfigError(f"The output '{d}' is a file.", "Choose a new or empty folder for the run.", file=d)
    if data:
        dp = Path(data).expanduser()
        try:
            same = dp.exists() and d.exists() and (dp.resolve() == d.resolve() or d.resolve() in dp.resolve().parents)
        except OSError:
            same = False
        if same:
            raise ConfigError(f"The output folder '{d}' holds the dataset '{dp}'.",
                              "Choose a new or empty folder for the run (the dataset's folder is yours, not the run's).",
                              file=d)
    if not d.exists():
        return "new"
    try:
        names = os.listdir(d)
    except OSError as exc:
        raise ConfigError(f"The output folder '{d}' cannot be read ({exc.strerror or exc}).",
                          "Choose a folder you can write to.", file=d) from None
    if not names:
        return "empty"
    foreign = foreign_entries(d)
    ours = is_run(d)
    if ours or not foreign:
        if has_progress(d):
            raise ConfigError(f"The run folder '{d}' already holds a run.",
                              f"Continue it with --resume {d}, or choose a new output folder.", file=d)
        if not foreign:  # a run of ours that stopped before its first checkpoint, or our leftovers
            return "restart" if ours else "empty"
    shown = ", ".join(sorted(foreign)[:5]) + (" …" if len(foreign) > 5 else "")
    raise ConfigError(f"The output folder '{d}' is not empty and is not a Finetune run folder (it holds {shown}).",
                      "Choose a new or empty folder for the run, e.g. a new folder inside it "
                      "(a run may only write into, and later delete, a folder it owns).", file=d)


def check_writable(folder: str | Path) -> None:
    """Refuse, before training, a run folder that cannot be written (read-only disk or folder)."""
    d = Path(folder).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".{MANIFEST_FILE}.probe{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise unwritable(d, exc) from None


def unwritable(folder: str | Path, exc: OSError) -> FinetuneError:
    where = exc.filename or folder
    return ConfigError(f"Cannot write in the run folder '{folder}' ({exc.strerror or exc}; at {where}).",
                       "Choose a folder you can write to (not read-only, on a disk with space), "
                       "or make this one writable.", file=folder)


# ---- deleting a run -----------------------------------------------------------------------------

def delete_run_files(folder: str | Path) -> int:
    """Delete what the run in `folder` wrote (its manifest's entries and our known files and
    checkpoints), never anything else; the folder too when nothing else is left. Returns bytes freed."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return 0
    manifest = read_manifest(folder)
    entries = set(manifest["files"]) if manifest else set()
    entries.update(RUN_FILES)
    freed = 0
    for name in os.listdir(folder):  # leftovers of our atomic writes
        if name != CHECKPOINTS and _is_ours_name(name) and name not in RUN_FILES:
            entries.add(name)
    root = folder / CHECKPOINTS
    if root.is_dir() and not root.is_symlink():
        for p in root.iterdir():
            if STEP_DIR.match(p.name) or (p.name.startswith(".step-") and _TEMP.match(p.name)):
                entries.add(f"{CHECKPOINTS}/{p.name}")
    for where in (folder, root):  # all or nothing: a read-only folder is refused before deleting
        if where.is_dir() and not where.is_symlink():
            try:
                probe = where / f".{MANIFEST_FILE}.probe{os.getpid()}.tmp"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise ConfigError(f"Cannot delete the run's files in '{where}' ({exc.strerror or exc}).",
                                  "Make the folder writable and delete the run again (nothing was deleted).",
                                  file=where) from None
    failed: list[OSError] = []
    for rel in sorted(entries, key=lambda r: (r.count("/"), r), reverse=True):
        if rel == MANIFEST_FILE or not _no_link_above(folder, rel):
            continue  # the manifest last (an interrupted delete can be run again); never through a link
        freed += _remove_ours(folder / rel, failed)
    _rmdir_if_empty(root)
    if failed:  # keep the manifest (and the record): the delete can be run again
        raise ConfigError(f"Could not delete {len(failed)} file(s) of the run in '{folder}' "
                          f"(first: {failed[0].filename}: {failed[0].strerror or failed[0]}).",
                          "Make the folder writable and delete the run again (nothing of yours was touched).",
                          file=failed[0].filename or folder)
    freed += _remove_ours(folder / MANIFEST_FILE, failed)
    _rmdir_if_empty(folder)
    return freed


def _no_link_above(folder: Path, rel: str) -> bool:
    """No folder between `folder` and the entry is a symbolic link (which could lead anywhere)."""
    p = folder
    for part in rel.split("/")[:-1]:
        p = p / part
        if p.is_symlink():
            return False
    return True


def _remove_ours(path: Path, failed: list) -> int:
    """A file of ours, or a checkpoint folder: only the files a checkpoint holds, then the folder if
    empty. What cannot be removed goes into `failed`."""
    try:
        if path.is_symlink() or path.is_file():
            size = path.lstat().st_size
            path.unlink()
            return size
        if not path.is_dir():
            return 0
    except FileNotFoundError:
        return 0
    except OSError as exc:
        failed.append(exc)
        return 0
    freed = 0
    if path.name.startswith("."):  # a staging folder of ours: everything in it is ours
        from finetune_app.core.runs import disk_usage

        freed = disk_usage(path)
        shutil.rmtree(path, ignore_errors=True)
        return freed
    for name in CHECKPOINT_FILES:
        freed += _remove_ours(path / name, failed) if (path / name).is_file() else 0
    try:
        inside = list(path.iterdir())
    except OSError as exc:
        failed.append(exc)
        inside = []
    for p in inside:
        if _TEMP.match(p.name):
            freed += _remove_ours(p, failed) if p.is_file() else 0
    _rmdir_if_empty(path)
    return freed


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# ---- one writer per run folder -------------------------------------------------------------------

class RunFolderBusy(ConfigError):
    """Another process trains the run in this folder now."""


class RunLock:
    """An exclusive OS lock on `<run>/.run.lock` for as long as this process trains the run.

    flock is released by the kernel when the process exits or is killed, so a crash never leaves
    a stale lock. The file holds who took it (pid, host, since) for the refusal message."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise unwritable(self.folder, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.holder_text(fd)
            os.close(fd)
            raise RunFolderBusy(f"The run folder '{self.folder}' is in use by another training process ({holder}).",
                              "Wait for that run to end (or stop it), or choose another output folder.",
                              file=self.folder) from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError:
            pass  # the lock holds without the note
        self._fd = fd
        return self

    @staticmethod
    def holder_text(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
            return f"pid {int(info['pid'])} on {info['host']}, since {since}"
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return "a process that has not said who it is yet"

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_not_locked(folder: str | Path) -> None:
    """Refuse (ConfigError with who holds it) when a process trains the run in `folder` now."""
    if (Path(folder) / LOCK_FILE).is_file():
        try:
            RunLock(folder).acquire().release()
        except RunFolderBusy:
            raise
        except FinetuneError:
            pass  # the lock file cannot be opened for writing: nobody can be training there either


# ---- what a resume may change --------------------------------------------------------------------

# Safe to change when continuing a run: how long, how often it reports/evaluates/saves, the
# learning rate of an extension, and settings that only trade memory for time.
RESUME_MAY_CHANGE = frozenset({
    "output", "iters", "epochs", "steps_per_eval", "steps_per_report", "save_every", "keep_checkpoints",
    "learning_rate", "sample_count", "sample_max_tokens", "val_batches", "grad_checkpoint", "compile", "cache_vision",
    "eval_metrics", "eval_samples", "best_by",  # what is scored, and how the best checkpoint is picked
})


def check_resume_changes(saved, new, *, folder: str | Path) -> None:
    """Refuse a resume whose settings differ from the run's own in anything but RESUME_MAY_CHANGE
    (the model, the data, the adapter's shape, the optimizer...): saying which, old and new."""
    old_d, new_d = saved.to_dict(), new.to_dict()
    changed = [k for k in new_d if k not in RESUME_MAY_CHANGE and new_d.get(k) != old_d.get(k)
               and not (k in ("model", "data") and _same_path(old_d.get(k), new_d.get(k)))]
    if not changed:
        return
    what = "; ".join(f"{k}: {old_d.get(k)!r} -> {new_d.get(k)!r}" for k in changed)
    raise ConfigError(f"Resuming the run in '{folder}' cannot change {', '.join(changed)} ({what}).",
                      "Resume with the run's own settings (drop those flags); only the steps/epochs, the "
                      "eval/save/report intervals, keep_checkpoints and the learning rate may change. "
                      "For other settings start a new run in a new folder.",
                      file=Path(folder) / CONFIG_FILE, field=changed[0])


def _same_path(a, b) -> bool:
    """Two spellings of one local file or folder (relative and absolute)."""
    try:
        pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
        return bool(a) and bool(b) and pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except OSError:
        return False

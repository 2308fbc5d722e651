"""The hostile-input corpus: faults a new (or unfriendly) user meets, each run through the real CLI.

Each case is a function registered with ``@case(area, name)``. It builds its fault under
``env.tmp`` and drives the CLI in-process with ``env.expect(argv, exit=..., says=[...])``. The
harness (tests/test_hostile_corpus.py) then checks, for every case:

* no command ended in a Python traceback (an exception escaping ``finetune_app.cli.main`` or the
  word "Traceback" in anything printed);
* the exit code is the one the case expects;
* the message names what it must (the file, the row or field, and a word of the fix);
* no marker file was written by code shipped in a model folder or a pickle, and nothing landed in
  the Hugging Face modules cache;
* every file registered with ``env.keep(path)`` (the user's own, foreign to us) still exists with
  the same bytes.

Areas: dataset, model, adapter, checkpoint, runs-db, run-folder, export.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

AREAS = ("dataset", "model", "adapter", "checkpoint", "runs-db", "run-folder", "export")
CASES: dict[str, "Case"] = {}


@dataclass(frozen=True)
class Case:
    area: str
    name: str
    fn: Callable[["Env"], None]

    @property
    def id(self) -> str:
        return f"{self.area}:{self.name}"


def case(area: str, name: str):
    """Register a hostile case: ``@case("dataset", "nul-in-image-path")``."""
    assert area in AREAS, area

    def wrap(fn):
        c = Case(area, name, fn)
        assert c.id not in CASES, f"duplicate hostile case {c.id}"
        CASES[c.id] = c
        return fn

    return wrap


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


class Traceback_(AssertionError):
    """A command ended in a Python traceback."""


@dataclass
class Env:
    tmp: Path
    marker_dir: Path            # code from a model folder / pickle would write here (FINETUNE_TEST_MARKER_DIR)
    tiny_model: Callable        # tiny_model(family, **overrides) -> Path (shared: copy before changing it)
    shapes_data: Path           # shared demo captioning set (copy before changing it)
    instruction_data: Path      # shared text instruction set (copy before changing it)
    results: list[Result] = field(default_factory=list)
    kept: dict[Path, str] = field(default_factory=dict)

    # --- building faults ---
    def copy(self, src: Path, name: str | None = None) -> Path:
        """A private copy of a shared fixture folder (or file) to damage."""
        dest = self.tmp / (name or Path(src).name)
        if Path(src).is_dir():
            shutil.copytree(src, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        return dest

    def keep(self, *paths: Path) -> None:
        """Files (or every file under folders) that are the user's own and must survive unchanged."""
        for p in paths:
            p = Path(p)
            files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
            for f in files:
                self.kept[f] = _digest(f)

    def marker_code(self, name: str = "pwned") -> str:
        """Python source that, if ever executed, writes a marker file (the harness fails on it)."""
        return (f"import pathlib, os\n"
                f"pathlib.Path(os.environ.get('FINETUNE_TEST_MARKER_DIR', {str(self.marker_dir)!r}))"
                f".joinpath({name!r}).write_text('executed')\n")

    # --- running the CLI ---
    def run(self, *argv) -> Result:
        """Run `finetune-app ARGV` in this process; a traceback fails the case."""
        from finetune_app.cli import main

        argv = [str(a) for a in argv]
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            raise Traceback_(f"`finetune-app {' '.join(argv)}` raised:\n{traceback.format_exc()}\n"
                             f"stdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}") from None
        res = Result(argv, int(code or 0), out.getvalue(), err.getvalue())
        self.results.append(res)
        if "Traceback (most recent call last)" in res.text:
            raise Traceback_(f"`finetune-app {' '.join(argv)}` printed a traceback:\n{res.text}")
        if res.code == 1:  # the CLI's last resort: an exception nobody mapped to a located error
            raise Traceback_(f"`finetune-app {' '.join(argv)}` failed unexpectedly (exit 1):\n{res.text}")
        return res

    def expect(self, *argv, exit: int | Iterable[int], says: Iterable[str] = ()) -> Result:
        """Run, then check the exit code and that the output names each of `says` (case-insensitive)."""
        res = self.run(*argv)
        codes = {exit} if isinstance(exit, int) else set(exit)
        assert res.code in codes, (f"`finetune-app {' '.join(res.argv)}` exited {res.code}, expected {sorted(codes)}\n"
                                   f"{res.text}")
        low = res.text.lower()
        missing = [s for s in says if str(s).lower() not in low]
        assert not missing, f"`finetune-app {' '.join(res.argv)}` did not say {missing}:\n{res.text}"
        return res

    # --- checks the harness runs after each case ---
    def check_after(self) -> None:
        markers = sorted(p.name for p in self.marker_dir.rglob("*") if p.is_file())
        assert not markers, f"code from a model folder or pickle ran: marker files {markers}"
        modules = Path(os.environ["HF_MODULES_CACHE"])
        landed = sorted(str(p.relative_to(modules)) for p in modules.rglob("*.py")) if modules.exists() else []
        assert not landed, f"Python landed in the HF modules cache: {landed}"
        lost = [str(f) for f, d in self.kept.items() if not f.is_file() or _digest(f) != d]
        assert not lost, f"the user's own files were deleted or changed: {lost}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_all() -> dict[str, Case]:
    """Import every cases_*.py module in this package (each registers its cases)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("cases_"):
            importlib.import_module(f"hostile.{info.name}")
    return CASES

"""Finetune.app's main script (py2app runs it as ``__main__``): open the app.

* Double-clicked: ``finetune_app.cli.main(["gui"])``.
* Given files or folders (``open -a Finetune data.jsonl``, or from a terminal
  ``Finetune.app/Contents/MacOS/Finetune ~/my-dataset``): ``["gui", *paths]`` when the ``gui``
  command takes paths. Documents dropped on the Dock icon or opened from Finder while the app
  runs arrive in Qt as ``QFileOpenEvent`` (the app's QApplication handles those).
* ``--selftest``: check the bundle from the inside (MLX and its Metal kernels, Qt and its
  plugins, the app's resources), print a JSON report, exit 0 only if all is well. The build
  script runs it; so can you: ``dist/Finetune.app/Contents/MacOS/Finetune --selftest``.

Also usable from a checkout: ``python packaging/Finetune.py [--selftest]``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def is_frozen() -> bool:
    return getattr(sys, "frozen", None) == "macosx_app"


def _qt_plugins_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("PySide6")
    for location in (spec.submodule_search_locations or []) if spec else []:
        plugins = Path(location) / "Qt" / "plugins"
        if plugins.is_dir():
            return plugins
    return None


def configure_environment() -> None:
    """Inside the bundle: point Qt at the plugins shipped with PySide6 (belt and braces: Qt
    finds them from QtCore's own location too, unless a stray qt.conf says otherwise)."""
    if not is_frozen():
        return
    plugins = _qt_plugins_dir()
    if plugins is not None:
        os.environ.setdefault("QT_PLUGIN_PATH", str(plugins))
    # Finder starts apps with a bare environment and cwd Contents/Resources; keep Hugging Face's
    # tokenizers from warning about forks it cannot see.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def document_paths(args: list[str]) -> list[str]:
    """The file and folder arguments, minus the ``-psn_0_12345`` process serial numbers that old
    macOS versions pass to apps started from Finder."""
    return [a for a in args if not a.startswith("-psn_") and not a.startswith("-")]


def gui_argv(paths: list[str]) -> list[str]:
    """``["gui", *paths]`` if the gui command accepts paths, else ``["gui"]``."""
    if not paths:
        return ["gui"]
    from finetune_app.cli import build_parser

    try:
        _, extra = build_parser().parse_known_args(["gui", *paths])
    except SystemExit:
        extra = paths
    return ["gui"] if extra else ["gui", *paths]


# --- self-test ---------------------------------------------------------------------------------


def _check(report: dict, name: str, func) -> None:
    try:
        report[name] = {"ok": True, **(func() or {})}
    except Exception as err:  # report, never crash
        report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}


def _check_app() -> dict:
    import finetune_app
    from finetune_app.resources import app_icon_path, resources_dir, tray_icon_path

    for state in ("idle", "training", "paused", "finished", "failed"):
        tray_icon_path(state, scale=2)
    return {
        "version": finetune_app.__version__,
        "resources": str(resources_dir()),
        "icon": str(app_icon_path()),
    }


def _check_mlx() -> dict:
    import mlx.core as mx

    info = {"version": mx.__version__, "device": str(mx.default_device())}
    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    info["metal"] = metal
    if is_frozen() and not metal:  # the Mac app must compute on the GPU
        raise RuntimeError("Metal is not available to MLX")
    a = mx.arange(16, dtype=mx.float32).reshape(4, 4)
    value = float((a @ a).sum().item())  # runs a kernel: loads mlx.metallib on a Mac
    rows = [[4.0 * r + c for c in range(4)] for r in range(4)]
    expected = sum(rows[i][k] * rows[k][j] for i in range(4) for j in range(4) for k in range(4))
    if value != expected:
        raise RuntimeError(f"4x4 matmul gave {value}, expected {expected}")
    return info


def _check_qt() -> dict:
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QLibraryInfo
    from PySide6.QtGui import QIcon, QImageReader
    from PySide6.QtWidgets import QApplication, QStyleFactory

    app = QApplication.instance() or QApplication([sys.argv[0]])
    formats = sorted(bytes(f).decode() for f in QImageReader.supportedImageFormats())
    styles = QStyleFactory.keys()
    info = {
        "pyside6": pyside_version,
        "platform": app.platformName(),
        "plugins": QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath),
        "image_formats": formats,
        "styles": styles,
    }
    if is_frozen() and app.platformName() != "cocoa":  # inside Finetune.app
        raise RuntimeError(f"Qt platform plugin is {app.platformName()!r}, expected 'cocoa'")
    if is_frozen() and "macOS" not in styles:
        raise RuntimeError(f"no macOS style plugin (styles: {styles})")
    for needed in ("png", "jpeg", "svg"):
        if needed not in formats:
            raise RuntimeError(f"Qt cannot read {needed} (imageformats plugins missing?)")
    from finetune_app.resources import tray_icon_path

    icon = QIcon(str(tray_icon_path("idle")))
    if icon.isNull():
        raise RuntimeError("QIcon could not load the menu-bar icon")
    return info


def selftest() -> int:
    report: dict = {"frozen": is_frozen(), "python": sys.version.split()[0], "executable": sys.executable}
    _check(report, "app", _check_app)
    _check(report, "mlx", _check_mlx)
    _check(report, "qt", _check_qt)
    ok = all(v.get("ok") for v in report.values() if isinstance(v, dict))
    report["ok"] = ok
    print(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


# --- main --------------------------------------------------------------------------------------


def _log_crash() -> None:
    """A crash at start-up inside the bundle leaves a trace in ~/Library/Logs/Finetune."""
    try:
        log_dir = Path.home() / "Library" / "Logs" / "Finetune"
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "launch-error.log").open("a", encoding="utf-8") as fp:
            fp.write(traceback.format_exc() + "\n")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not is_frozen() and str(Path(__file__).resolve().parent.parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
    configure_environment()
    if "--selftest" in args:
        return selftest()
    from finetune_app.cli import main as cli_main

    try:
        return int(cli_main(gui_argv(document_paths(args))) or 0)
    except Exception:
        if is_frozen():
            _log_crash()
        raise


if __name__ == "__main__":
    raise SystemExit(main())

"""Before Qt starts on Linux: can its X11 (xcb) platform plugin load?

Qt 6.5+ needs libxcb-cursor0 (and a few other xcb libraries most desktops have, but minimal
installs and containers lack); without them QApplication aborts the process with a raw plugin
message. This check runs first, without importing Qt's GUI, names the Debian/Ubuntu packages to
install and lets `finetune-app` fall back to the headless demo instead.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# library name for ctypes.util.find_library -> the Debian/Ubuntu package that ships it
XCB_LIBRARIES = {
    "xcb-cursor": "libxcb-cursor0",
    "xcb-icccm": "libxcb-icccm4",
    "xcb-keysyms": "libxcb-keysyms1",
    "xcb-image": "libxcb-image0",
    "xcb-render-util": "libxcb-render-util0",
    "xcb-randr": "libxcb-randr0",
    "xcb-shape": "libxcb-shape0",
    "xcb-xkb": "libxcb-xkb1",
    "xkbcommon-x11": "libxkbcommon-x11-0",
}


def uses_xcb(env=None, platform: str | None = None) -> bool:
    """True when Qt would start on X11: Linux, a DISPLAY, and no other platform chosen."""
    env = os.environ if env is None else env
    if (platform or sys.platform) != "linux":
        return False
    chosen = env.get("QT_QPA_PLATFORM", "").strip().split(":")[0]
    if chosen:
        return chosen == "xcb"
    return bool(env.get("DISPLAY")) and not env.get("WAYLAND_DISPLAY")


def xcb_plugin() -> Path | None:
    """PySide6's libqxcb.so, found without importing QtGui (None when it is not installed)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("PySide6")
    except Exception:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for candidate in (Path(root) / "Qt" / "plugins" / "platforms" / "libqxcb.so",
                          Path(root) / "plugins" / "platforms" / "libqxcb.so"):
            if candidate.is_file():
                return candidate
    return None


def unresolved_by_ldd(plugin: Path) -> list[str] | None:
    """Library sonames the dynamic loader cannot find for `plugin` (None when ldd is unavailable)."""
    try:
        out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return re.findall(r"^\s*(\S+)\s+=>\s+not found", out, flags=re.M)


def missing_packages(find: Callable[[str], str | None] = ctypes.util.find_library,
                     unresolved: list[str] | None = None) -> list[str]:
    """The packages to install: from the loader's "not found" sonames when known (libxcb-cursor.so.0
    -> libxcb-cursor0), else every xcb library `find` cannot locate."""
    if unresolved is not None:
        wanted = []
        for soname in unresolved:
            base = re.sub(r"^lib|\.so.*$", "", soname)
            package = XCB_LIBRARIES.get(base)
            if package is None:  # not one we know: the Debian name is usually lib<name><major>
                major = re.search(r"\.so\.(\d+)", soname)
                package = f"lib{base}{major.group(1) if major else ''}"
            if package not in wanted:
                wanted.append(package)
        return wanted
    return [package for lib, package in XCB_LIBRARIES.items() if not find(lib)]


def xcb_problem(env=None, platform: str | None = None,
                find: Callable[[str], str | None] = ctypes.util.find_library,
                unresolved: list[str] | None | str = "ask") -> str | None:
    """A message naming what to install when Qt's X11 plugin cannot load here, else None.
    `unresolved`: "ask" runs ldd on the plugin (falling back to `find`), None uses only `find`."""
    if not uses_xcb(env, platform):
        return None
    if unresolved == "ask":
        plugin = xcb_plugin()
        unresolved = unresolved_by_ldd(plugin) if plugin is not None else None
    packages = missing_packages(find, unresolved)
    if not packages:
        return None
    return ("the desktop app cannot start: Qt's X11 (xcb) platform plugin needs "
            + ", ".join(packages) + " (not installed).\n"
            "Install them with:\n    sudo apt-get install -y " + " ".join(packages) + "\n"
            "(Fedora: sudo dnf install xcb-util-cursor xcb-util-wm xcb-util-keysyms). "
            "Running the headless demo instead; `finetune-app train` and the other commands need no display.")

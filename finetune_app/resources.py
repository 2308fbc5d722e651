"""Where the app's bundled files (icons, menu-bar images, demo notes) are, however it was installed.

The files live in the repository's top-level ``resources/`` folder. ``resource_path("icon",
"finetune-icon.svg")`` finds that folder in the first of these places that has it:

1. ``$FINETUNE_RESOURCES``, when set (a person or a test pointing somewhere else on purpose);
2. inside a py2app bundle (``sys.frozen == "macosx_app"``): ``$RESOURCEPATH/resources``, i.e.
   ``Finetune.app/Contents/Resources/resources`` (packaging/setup_py2app.py copies it there);
3. a source checkout or an editable install (``pip install -e .``): ``<repo>/resources``, next to
   the ``finetune_app`` package;
4. a wheel install: ``<prefix>/share/finetune-app/resources``, where the wheel's ``data-files``
   put it (``<prefix>`` being the environment's, the user base's, or ``sys.prefix``).

A folder only counts when it holds ``icon/finetune-icon.svg``, so an unrelated ``resources``
folder next to site-packages is never taken for ours. A missing file raises
``ResourceNotFoundError`` naming the file and every place looked in.

No Qt here: the engine and the CLI can ask for paths too.
"""

from __future__ import annotations

import math
import os
import site
import sys
import sysconfig
from pathlib import Path

__all__ = [
    "ResourceNotFoundError",
    "TRAY_PROGRESS_STEP",
    "TRAY_STATES",
    "app_icon_path",
    "app_icns_path",
    "app_icon_svg_path",
    "help_path",
    "candidate_dirs",
    "resource_path",
    "resources_dir",
    "tray_icon_name",
    "tray_icon_path",
]

ENV_VAR = "FINETUNE_RESOURCES"
DIR_NAME = "resources"
DATA_SUBDIR = Path("share") / "finetune-app" / DIR_NAME  # where a wheel's data-files put it
MARKER = Path("icon") / "finetune-icon.svg"  # a folder counts as ours only if this is in it

TRAY_STATES = ("idle", "training", "paused", "finished", "failed")
TRAY_PROGRESS_STEP = 10  # the training icons come in 10 % steps (resources/make_icons.py draws them)
APP_ICON_SIZES = (16, 32, 64, 128, 256, 512, 1024)


class ResourceNotFoundError(FileNotFoundError):
    """A bundled file is missing; the message says which and where the app looked."""

    def __init__(self, resource: str, searched: list[Path], detail: str = "") -> None:
        self.resource = resource
        self.searched = list(searched)
        where = "\n".join(f"  - {p}" for p in self.searched) or "  (nowhere: no candidate folder)"
        hint = (
            "Reinstall the app, or run from a source checkout, or set "
            f"{ENV_VAR} to the folder that holds the app's resources."
        )
        message = f"Finetune resource {resource!r} not found{detail}. Looked in:\n{where}\n{hint}"
        super().__init__(message)


def _is_frozen_app() -> bool:
    return getattr(sys, "frozen", None) == "macosx_app" or bool(getattr(sys, "frozen", False))


def _frozen_dirs() -> list[Path]:
    dirs = []
    base = os.environ.get("RESOURCEPATH")
    if base:
        dirs += [Path(base) / DIR_NAME, Path(base)]
    # RESOURCEPATH unset (should not happen under py2app): work it out from the executable,
    # Finetune.app/Contents/MacOS/<exe> -> Finetune.app/Contents/Resources.
    contents_resources = Path(sys.executable).resolve().parent.parent / "Resources"
    dirs += [contents_resources / DIR_NAME, contents_resources]
    return dirs


def _installed_dirs() -> list[Path]:
    prefixes = []
    try:
        prefixes.append(sysconfig.get_path("data"))
    except KeyError:  # pragma: no cover - exotic schemes
        pass
    prefixes += [sys.prefix, getattr(site, "USER_BASE", None) or "", sys.base_prefix]
    dirs, seen = [], set()
    for prefix in prefixes:
        if not prefix:
            continue
        path = Path(prefix) / DATA_SUBDIR
        if path not in seen:
            seen.add(path)
            dirs.append(path)
    return dirs


def candidate_dirs() -> list[Path]:
    """Every folder that may hold the resources, most specific first (see the module docstring)."""
    dirs: list[Path] = []
    override = os.environ.get(ENV_VAR)
    if override:
        dirs.append(Path(override).expanduser())
    if _is_frozen_app():
        dirs += _frozen_dirs()
    dirs.append(Path(__file__).resolve().parent.parent / DIR_NAME)
    dirs += _installed_dirs()
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def resources_dir() -> Path:
    """The folder the app's resources are read from (the first candidate that has the marker)."""
    dirs = candidate_dirs()
    for d in dirs:
        if (d / MARKER).is_file():
            return d
    raise ResourceNotFoundError(DIR_NAME + "/", dirs, detail=f" (no folder with {MARKER.as_posix()})")


def resource_path(*parts: str | os.PathLike[str], must_exist: bool = True) -> Path:
    """The path of a bundled file, e.g. ``resource_path("tray", "trayIdleTemplate.png")``.

    Raises ResourceNotFoundError when the file is missing (unless ``must_exist=False``).
    """
    if not parts:
        raise ValueError("resource_path() needs at least one path part")
    rel = Path(*parts)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"resource paths are relative to the resources folder: {rel}")
    dirs = candidate_dirs()
    for d in dirs:
        if (d / MARKER).is_file():
            path = d / rel
            if path.exists() or not must_exist:
                return path
            raise ResourceNotFoundError(rel.as_posix(), [d], detail=f" in {d}")
    raise ResourceNotFoundError(rel.as_posix(), dirs, detail=f" (no folder with {MARKER.as_posix()})")


def help_path() -> Path:
    """The bundled user documentation Help opens: the README (quick start, what it does, links to
    docs/), else docs/ui.md, beside the resources folder (a checkout, an editable install, the app
    bundle, which copies both)."""
    base = resources_dir().parent
    for candidate in (base / "README.md", base / "docs" / "ui.md", resources_dir() / "README.md"):
        if candidate.is_file():
            return candidate
    raise ResourceNotFoundError("README.md", [base, base / "docs", resources_dir()])


def app_icon_path(size: int = 512) -> Path:
    """A PNG of the app icon at least ``size`` pixels wide (the largest, 1024, past that).

    For window icons on Linux and Windows, and for the welcome dialog; the bundle itself uses
    the .icns (app_icns_path()).
    """
    if size <= 0:
        raise ValueError(f"icon size must be positive, not {size}")
    px = next((s for s in APP_ICON_SIZES if s >= size), APP_ICON_SIZES[-1])
    names = {
        16: "icon_16x16.png",
        32: "icon_32x32.png",
        64: "icon_32x32@2x.png",
        128: "icon_128x128.png",
        256: "icon_256x256.png",
        512: "icon_512x512.png",
        1024: "icon_512x512@2x.png",
    }
    return resource_path("icon", "Finetune.iconset", names[px])


def app_icns_path() -> Path:
    """The macOS icon container (what Finder and the Dock show for the bundle)."""
    return resource_path("icon", "Finetune.icns")


def app_icon_svg_path() -> Path:
    """The vector master of the app icon."""
    return resource_path(MARKER)


def tray_icon_name(state: str, progress: float | None = None) -> str:
    """File name (1x) of the menu-bar icon for a training state.

    ``progress`` (a fraction, 0.0 to 1.0) only matters while training: it picks the ring filled
    to the 10 % step at or below it, so the full ring shows only at 1.0. Training with no
    progress (unknown length) gets a dashed ring.
    """
    if state not in TRAY_STATES:
        raise ValueError(f"unknown tray state {state!r}; expected one of {', '.join(TRAY_STATES)}")
    base = "tray" + state.capitalize()
    if state == "training" and progress is not None:
        value = float(progress)
        if math.isnan(value) or value < -1e-6 or value > 1 + 1e-6:
            raise ValueError(f"progress is a fraction from 0.0 to 1.0, not {progress!r}")
        value = min(max(value, 0.0), 1.0)
        step = int(math.floor(value * 100 / TRAY_PROGRESS_STEP + 1e-9)) * TRAY_PROGRESS_STEP
        base += str(step)
    return base + "Template.png"


def tray_icon_path(state: str, progress: float | None = None, *, scale: int = 1) -> Path:
    """Path of the menu-bar (system tray) icon for a training state.

    ``scale=1`` gives the 18 x 18 px image, ``scale=2`` its ``@2x`` (36 x 36) twin. Qt's
    ``QIcon(str(tray_icon_path(...)))`` picks up the ``@2x`` file on its own. The images are
    black templates: on macOS call ``icon.setIsMask(True)`` so the menu bar recolours them for
    light and dark mode; elsewhere tint them to the panel's text colour.
    """
    name = tray_icon_name(state, progress)
    if scale == 2:
        name = name.replace("Template.png", "Template@2x.png")
    elif scale != 1:
        raise ValueError(f"tray icons come at scale 1 or 2, not {scale}")
    return resource_path("tray", name)

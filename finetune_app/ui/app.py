"""QApplication setup: names (for QSettings and the app-data folder), style, dark mode, plot colours.

One place decides how the app looks so every window agrees: the native style on macOS (it already
follows the system's appearance and uses the system font), Fusion elsewhere with a dark palette
when the system asks for dark (`QStyleHints.colorScheme`), and pyqtgraph's default colours taken
from the palette so plots never show a white box in a dark window.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

ORG = "Finetune"
APP = "Finetune"
SETTINGS_DIR_ENV = "FINETUNE_SETTINGS_DIR"  # keep settings in this folder (tests, screenshots)
DATA_DIR_ENV = "FINETUNE_DATA_DIR"  # app data (demo files, runs) in this folder instead
COLOR_SCHEME_ENV = "FINETUNE_COLOR_SCHEME"  # "dark" / "light": override the system's choice


# ---- settings and folders -----------------------------------------------------------------------

def configure_settings_location() -> None:
    """Point QSettings at $FINETUNE_SETTINGS_DIR when set, so a test never touches real settings."""
    folder = os.environ.get(SETTINGS_DIR_ENV)
    if folder:
        QSettings.setDefaultFormat(QSettings.Format.IniFormat)
        for fmt in (QSettings.Format.IniFormat, QSettings.Format.NativeFormat):
            QSettings.setPath(fmt, QSettings.Scope.UserScope, folder)


def settings() -> QSettings:
    """The app's settings store: organisation "Finetune", application "Finetune"."""
    return QSettings(ORG, APP)


def app_data_dir() -> Path:
    """Where the app keeps its own files (demo model and data, training runs)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        path = Path(override).expanduser()
    else:
        loc = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
        path = Path(loc) if loc else Path.home() / ".local" / "share" / ORG
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    path = app_data_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- look ---------------------------------------------------------------------------------------

def wants_dark(app: QGuiApplication | None = None) -> bool:
    forced = os.environ.get(COLOR_SCHEME_ENV, "").strip().lower()
    if forced in ("dark", "light"):
        return forced == "dark"
    app = app or QGuiApplication.instance()
    return app is not None and app.styleHints().colorScheme() == Qt.ColorScheme.Dark


def is_dark(palette: QPalette | None = None) -> bool:
    """True when the palette in use is dark (whoever chose it: the system, us, or a test)."""
    palette = palette or QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def dark_palette() -> QPalette:
    """A calm dark palette for Fusion, close to macOS's dark appearance."""
    p = QPalette()
    window, base, text = QColor("#202124"), QColor("#17181a"), QColor("#e8e8ea")
    disabled = QColor("#7d7f84")
    accent = QColor("#3d8bfd")
    roles = {
        QPalette.ColorRole.Window: window, QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base, QPalette.ColorRole.AlternateBase: QColor("#25272a"),
        QPalette.ColorRole.ToolTipBase: QColor("#2b2d31"), QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.PlaceholderText: disabled, QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: QColor("#2d2f33"), QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: QColor("#ff6b6b"), QPalette.ColorRole.Highlight: accent,
        QPalette.ColorRole.HighlightedText: QColor("#ffffff"), QPalette.ColorRole.Link: QColor("#6ea8fe"),
        QPalette.ColorRole.Light: QColor("#3a3c41"), QPalette.ColorRole.Midlight: QColor("#313337"),
        QPalette.ColorRole.Mid: QColor("#26282b"), QPalette.ColorRole.Dark: QColor("#111214"),
        QPalette.ColorRole.Shadow: QColor("#000000"),
    }
    for role, colour in roles.items():
        p.setColor(role, colour)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return p


def apply_theme(app: QApplication) -> None:
    """Follow the system's light/dark choice (Fusion needs the dark palette set by hand)."""
    if sys.platform != "darwin":
        app.setPalette(dark_palette() if wants_dark(app) else app.style().standardPalette())
    configure_plots()


def configure_plots() -> None:
    """pyqtgraph's defaults from the palette: new plots match the window."""
    import pyqtgraph as pg

    pal = QGuiApplication.palette()
    pg.setConfigOptions(antialias=True, background=pal.color(QPalette.ColorRole.Base),
                        foreground=pal.color(QPalette.ColorRole.Text))


GIL_SWITCH_INTERVAL = 0.001  # seconds; Python's default is 0.005


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication, set up once: names, style, icon, theme (reuses a running one).

    It also shortens Python's thread switch interval: painting a plot calls back into Python
    dozens of times, and while the training thread runs Python (loading, tokenising) each call
    waits up to one interval for the GIL. 1 ms instead of 5 keeps the window smooth then."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    app = QApplication.instance()
    if app is None:
        QApplication.setOrganizationName(ORG)
        QApplication.setApplicationName(APP)
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    else:
        app.setOrganizationName(ORG)
        app.setApplicationName(APP)
    app.setApplicationDisplayName("Finetune")
    app.setDesktopFileName("finetune-app")
    configure_settings_location()
    if sys.platform != "darwin":
        app.setStyle("Fusion")  # the native style on macOS; a consistent one elsewhere
    try:
        from finetune_app.resources import app_icon_path

        app.setWindowIcon(QIcon(str(app_icon_path(256))))
    except Exception:  # a missing icon must never stop the app
        pass
    apply_theme(app)
    if not getattr(app, "_finetune_theme_hooked", False):
        app.styleHints().colorSchemeChanged.connect(lambda *_: apply_theme(app))
        app._finetune_theme_hooked = True
    return app


def run_app(paths: list[str] | None = None, *, show_welcome: bool = True) -> int:
    """Start the app: the main window, files from the command line, the welcome on first launch."""
    app = create_app()
    from finetune_app.ui.main_window import MainWindow

    window = MainWindow()
    window.show()
    if paths:
        window.open_paths(paths)
    elif show_welcome:
        window.maybe_show_welcome()
    code = app.exec()
    window.shutdown()
    return code

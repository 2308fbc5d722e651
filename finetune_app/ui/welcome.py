"""The first-launch welcome: offer the demo, or a small real model, or neither.

The dialog only asks; it starts nothing. Its answer is one of three strings:

* ``"demo"``: train the offline demo (bundled shapes data + a tiny model the app builds,
  ``finetune_app.testing.tiny_models.build_tiny_model``);
* ``"download"``: open the model picker on FastVLM-0.5B (the picker downloads, with progress);
* ``"skip"``: neither (also what Esc, the close box and "Skip" mean).

Wiring, for the main window::

    from finetune_app.ui.welcome import run_welcome
    choice = run_welcome(parent=window)   # None when the person asked not to see it again

The download choice is offered on Apple-silicon Macs (where MLX runs on the GPU) unless the
Hugging Face hub is switched offline (``HF_HUB_OFFLINE=1``); a background check of the network
greys it out, with a note, when huggingface.co cannot be reached. "Don't show this again" is kept
in QSettings (organisation "Finetune", application "Finetune"), key ``welcome/dontShowAgain``.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QSettings, Qt, Signal, Slot
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QCommandLinkButton,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

SETTINGS_ORG = "Finetune"
SETTINGS_APP = "Finetune"
DONT_SHOW_KEY = "welcome/dontShowAgain"
NO_WELCOME_ENV = "FINETUNE_NO_WELCOME"  # set to 1 to never show it (screenshots, kiosks, CI)

CHOICE_DEMO = "demo"
CHOICE_DOWNLOAD = "download"
CHOICE_SKIP = "skip"
CHOICES = (CHOICE_DEMO, CHOICE_DOWNLOAD, CHOICE_SKIP)


@dataclass(frozen=True)
class DownloadOffer:
    """The real model the dialog offers. The size is shown before anything is fetched."""

    name: str = "FastVLM-0.5B"
    size_bytes: int = 1_200_000_000
    host: str = "huggingface.co"


DEFAULT_OFFER = DownloadOffer()


def app_settings() -> QSettings:
    """The app's settings store (organisation "Finetune", application "Finetune")."""
    return QSettings(SETTINGS_ORG, SETTINGS_APP)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def should_show_welcome(settings: QSettings | None = None) -> bool:
    """True unless the person ticked "Don't show this again" (or FINETUNE_NO_WELCOME is set)."""
    if _truthy(os.environ.get(NO_WELCOME_ENV)):
        return False
    settings = settings if settings is not None else app_settings()
    return not settings.value(DONT_SHOW_KEY, False, type=bool)


def set_show_welcome(settings: QSettings | None, show: bool) -> None:
    """Store whether the welcome appears at the next launch (the preferences can offer this)."""
    settings = settings if settings is not None else app_settings()
    settings.setValue(DONT_SHOW_KEY, not show)
    settings.sync()


def format_size(num_bytes: int) -> str:
    """Decimal units, as Finder shows them: 1_200_000_000 -> "1.2 GB"."""
    value = float(num_bytes)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    if unit == "bytes":
        return f"{int(value)} bytes"
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def is_apple_silicon_mac() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def download_offered() -> bool:
    """Whether to offer the real model: on Apple-silicon Macs, unless the hub is set offline."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return False
    return is_apple_silicon_mac()


def network_reachable(host: str = DEFAULT_OFFER.host, port: int = 443, timeout: float = 2.0) -> bool:
    """A quick TCP connect to the model host (run off the GUI thread)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class WelcomeDialog(QDialog):
    """Welcome on first launch. ``choice`` holds the answer after ``exec()``; ``choiceMade``
    carries it too. ``exec()`` returns Accepted for "demo"/"download", Rejected for "skip"."""

    choiceMade = Signal(str)
    _networkChecked = Signal(bool)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        settings: QSettings | None = None,
        offer_download: bool | None = None,
        offer: DownloadOffer = DEFAULT_OFFER,
        network_check: Callable[[], bool] | None = network_reachable,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("welcomeDialog")
        self.setWindowTitle("Welcome to Finetune")
        self.setModal(True)
        self._settings = settings if settings is not None else app_settings()
        self._offer = offer
        self._reported = False
        self.choice = CHOICE_SKIP
        offer_download = download_offered() if offer_download is None else offer_download

        header = QHBoxLayout()
        icon = QLabel()
        icon.setObjectName("welcomeIcon")
        pixmap = self._app_icon(64)
        if pixmap is not None:
            icon.setPixmap(pixmap)
        header.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        title = QLabel(
            "<h2 style='margin:0'>Welcome to Finetune</h2>"
            "<p>Teach a vision-language model about your own pictures, on this computer. "
            "How would you like to start?</p>"
        )
        title.setObjectName("welcomeTitle")
        title.setWordWrap(True)
        title.setTextFormat(Qt.TextFormat.RichText)
        header.addWidget(title, 1)

        self.demo_button = QCommandLinkButton(
            "Try the demo",
            "A tiny model, made right here, learns to describe pictures of shapes. "
            "Takes a minute or two, works offline, downloads nothing.",
        )
        self.demo_button.setObjectName("welcomeDemoButton")
        self.demo_button.clicked.connect(lambda: self._choose(CHOICE_DEMO))

        size = format_size(offer.size_bytes)
        self.download_button = QCommandLinkButton(
            f"Download a small real model ({offer.name}, about {size})",
            f"About {size} from {offer.host}. You see the download's progress and can cancel "
            "it; then fine-tune the model on your own pictures.",
        )
        self.download_button.setObjectName("welcomeDownloadButton")
        self.download_button.clicked.connect(lambda: self._choose(CHOICE_DOWNLOAD))
        self.download_button.setVisible(offer_download)

        self.network_note = QLabel(
            f"No connection to {offer.host} right now. You can download models later from the model picker."
        )
        self.network_note.setObjectName("welcomeNetworkNote")
        self.network_note.setWordWrap(True)
        self.network_note.setVisible(False)

        self.dont_show_checkbox = QCheckBox("Don't show this again")
        self.dont_show_checkbox.setObjectName("welcomeDontShow")
        self.dont_show_checkbox.setChecked(self._settings.value(DONT_SHOW_KEY, False, type=bool))

        buttons = QDialogButtonBox()
        self.skip_button = buttons.addButton("Skip", QDialogButtonBox.ButtonRole.RejectRole)
        self.skip_button.setObjectName("welcomeSkipButton")
        buttons.rejected.connect(self.reject)
        footer = QHBoxLayout()
        footer.addWidget(self.dont_show_checkbox)
        footer.addStretch(1)
        footer.addWidget(buttons)

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addSpacing(8)
        layout.addWidget(self.demo_button)
        layout.addWidget(self.download_button)
        layout.addWidget(self.network_note)
        layout.addSpacing(8)
        layout.addLayout(footer)
        self.setMinimumWidth(520)
        self.demo_button.setFocus()
        self.demo_button.setDefault(True)

        self._networkChecked.connect(self._on_network_checked)
        if offer_download and network_check is not None:
            threading.Thread(
                target=self._check_network, args=(network_check,), name="welcome-network", daemon=True
            ).start()

    # -- behaviour ------------------------------------------------------------------------------

    @staticmethod
    def _app_icon(points: int) -> QPixmap | None:
        try:
            from finetune_app.resources import ResourceNotFoundError, app_icon_path

            path = app_icon_path(points * 2)
        except (ImportError, ResourceNotFoundError):
            return None
        pixmap = QPixmap(str(path))
        if pixmap.isNull():
            return None
        pixmap.setDevicePixelRatio(pixmap.width() / points)
        return pixmap

    def _check_network(self, check: Callable[[], bool]) -> None:
        try:
            ok = bool(check())
        except Exception:  # a failing check means "no network", never a crash
            ok = False
        try:
            self._networkChecked.emit(ok)
        except RuntimeError:  # the dialog was closed and deleted meanwhile
            pass

    @Slot(bool)
    def _on_network_checked(self, reachable: bool) -> None:
        self.download_button.setEnabled(reachable)
        self.network_note.setVisible(not reachable and self.download_button.isVisibleTo(self))
        self.adjustSize()  # room for the note (word-wrapped labels don't grow the window alone)

    def _choose(self, choice: str) -> None:
        self.choice = choice
        self.accept()

    def reject(self) -> None:  # Esc, the close box, "Skip"
        self.choice = CHOICE_SKIP
        super().reject()

    def done(self, result: int) -> None:
        if not self._reported:
            self._reported = True
            set_show_welcome(self._settings, not self.dont_show_checkbox.isChecked())
            self.choiceMade.emit(self.choice)
        super().done(result)


def run_welcome(parent: QWidget | None = None, settings: QSettings | None = None, **kwargs) -> str | None:
    """Show the welcome (modal) if it should be shown; returns the choice, or None if not shown."""
    if not should_show_welcome(settings):
        return None
    dialog = WelcomeDialog(parent, settings=settings, **kwargs)
    dialog.exec()
    choice = dialog.choice
    dialog.deleteLater()
    return choice

"""Small pieces shared by the screens: the readable error panel, a notice banner, formatting.

Errors are shown in a panel inside the window, in the engine's own words (problem + fix), never
as a traceback dialog: the person can read it, copy it, and keep working.
"""

from __future__ import annotations

import re

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


def message_of(exc: BaseException) -> str:
    """The text a person should read for an exception: the engine's message, or a plain line."""
    from finetune_app.core.errors import FinetuneError

    if isinstance(exc, FinetuneError):
        return exc.message
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"Unexpected error ({type(exc).__name__}){': ' + text if text else ''}."


class Banner(QFrame):
    """A tinted panel with a title, a message and optional buttons; kinds: error, warning, info."""

    closed = Signal()
    COLOURS = {"error": "#d93025", "warning": "#e8a000", "info": "#3d8bfd", "success": "#2ea043"}

    def __init__(self, kind: str = "error", parent: QWidget | None = None, *, closable: bool = True):
        super().__init__(parent)
        self.setObjectName(f"{kind}Banner")
        self._kind = kind
        self.title = QLabel()
        self.title.setObjectName("bannerTitle")
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.text = QLabel()
        self.text.setObjectName("bannerText")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.buttons = QHBoxLayout()
        self.buttons.addStretch(1)
        self.close_button = QPushButton("Dismiss")
        self.close_button.setObjectName("bannerDismiss")
        self.close_button.clicked.connect(self.dismiss)
        self.close_button.setVisible(closable)
        self.buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.addWidget(self.title)
        layout.addWidget(self.text)
        layout.addLayout(self.buttons)
        self._restyle()
        self.hide()

    def set_kind(self, kind: str) -> None:
        self._kind = kind
        self._restyle()

    def _restyle(self) -> None:
        # Selected by a property, not the object name: screens rename their banners.
        c = QColor(self.COLOURS.get(self._kind, "#888888"))
        self.setProperty("banner", True)
        self.setStyleSheet(
            f"QFrame[banner=\"true\"] {{ border: 1px solid rgba({c.red()},{c.green()},{c.blue()},170);"
            f" border-left: 4px solid {c.name()}; border-radius: 6px;"
            f" background: rgba({c.red()},{c.green()},{c.blue()},28); }}")

    def show_message(self, title: str, text: str, kind: str | None = None) -> None:
        if kind:
            self.set_kind(kind)
        self.title.setText(title)
        self.text.setText(text)
        self.show()

    def add_button(self, text: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.clicked.connect(slot)
        self.buttons.insertWidget(self.buttons.count() - 1, button)
        return button

    def dismiss(self) -> None:
        self.hide()
        self.closed.emit()


def secondary(label: QLabel) -> QLabel:
    """Dim a label's text (captions, hints) with the palette's placeholder colour, so it follows
    light and dark mode when the palette changes."""
    label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
    return label


def heading(text: str, size_delta: float = 2.0) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() + size_delta)
    font.setBold(True)
    label.setFont(font)
    return label


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: float) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def format_count(n: int) -> str:
    """1_234_567 -> "1.23M" (parameters, tokens)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


# Chat-template and tokenizer control tokens a model may print: <|im_end|>, <|endoftext|>,
# <|eot_id|>, </s>, <end_of_turn>, <pad>… They are not words; the person never sees them.
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>|</?s>|<(?:pad|eos|bos|unk|end_of_turn|start_of_turn|image)>")
_LONG_RUN = re.compile(r"\S{24,}")
ZWSP = "\u200b"


def clean_output(text: str) -> str:
    """A model's output as a person should read it: control tokens removed."""
    return _SPECIAL_TOKEN.sub("", text or "").strip()


def breakable(text: str, every: int = 20) -> str:
    """Zero-width break opportunities inside long unbroken runs (a URL, "aaaa…"), so a word-wrapped
    label wraps them instead of growing wider than its column."""
    return _LONG_RUN.sub(lambda m: ZWSP.join(m.group(0)[i:i + every] for i in range(0, len(m.group(0)), every)),
                         text)

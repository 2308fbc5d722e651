"""One preference row side by side: the prompt (with its picture for VLM rows), the chosen answer
and the rejected one, so a person sees at a glance what the pair teaches. A row that cannot be
used (chosen == rejected, answers that do not share the prompt) shows its raw fields and the
problem, located and with how to fix it, from the same check `data check` and training run."""

from __future__ import annotations

import html
import json

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QGridLayout, QLabel, QTextBrowser, QWidget

from finetune_app.ui.widgets import heading

IMAGE_EDGE = 160
COLOURS = {"chosen": "#2ea043", "rejected": "#d93025"}
NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def raw_fields(dataset, row: int) -> dict:
    """The row's own values as read from its file (no parsing), {} when unreadable."""
    try:
        ref = dataset.rows[row]
        values, _ = dataset.sources[ref.source].read(ref.key, ref.size)
        return dict(values) if isinstance(values, dict) else {}
    except Exception:
        return {}


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)


class PairView(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("pairView")
        self.image = QLabel()
        self.image.setObjectName("pairImage")
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.hide()
        self.columns: dict[str, QTextBrowser] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        for col, (key, title) in enumerate((("prompt", "Prompt"), ("chosen", "Chosen ✓"), ("rejected", "Rejected ✗"))):
            label = heading(title, 1)
            if key in COLOURS:
                label.setStyleSheet(f"color: {COLOURS[key]}")
            grid.addWidget(label, 0, col)
            view = QTextBrowser()
            view.setObjectName(f"pair{key.capitalize()}")
            view.setOpenLinks(False)
            self.columns[key] = view
            grid.addWidget(view, 2, col)
            grid.setColumnStretch(col, 1)
        grid.addWidget(self.image, 1, 0)
        self.problem = QLabel()
        self.problem.setObjectName("pairProblem")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #d93025")
        self.problem.hide()
        grid.addWidget(self.problem, 3, 0, 1, 3)

    def texts(self) -> dict[str, str]:
        """The plain text each column shows (tests, accessibility)."""
        return {k: v.toPlainText() for k, v in self.columns.items()}

    def show_row(self, sample, problem: str | None, raw: dict | None = None, pixmap: QPixmap | None = None) -> None:
        """A parsed preference `sample` (its last turn the chosen answer, `rejected` the other); for a
        row that did not parse, its `raw` fields."""
        if sample is not None and sample.rejected is not None:
            prompt = "".join(
                f"<p><b>{NAMES.get(t.role, t.role)}</b>"
                + (f" <i>[{t.n_images} image{'s' if t.n_images > 1 else ''}]</i>" if t.n_images else "")
                + f"<br>{html.escape(t.text).replace(chr(10), '<br>')}</p>" for t in sample.turns[:-1])
            self.columns["prompt"].setHtml(prompt)
            self.columns["chosen"].setPlainText(sample.answer)
            self.columns["rejected"].setPlainText(sample.rejected.text)
        else:
            raw = raw or {}
            prompt = next((raw[k] for k in ("prompt", "conversations", "conversation", "messages") if k in raw), "")
            for key, value in (("prompt", prompt), ("chosen", raw.get("chosen", "")), ("rejected", raw.get("rejected", ""))):
                self.columns[key].setPlainText(_text(value))
        if pixmap is not None and not pixmap.isNull():
            self.image.setPixmap(pixmap)
            self.image.show()
        else:
            self.image.clear()
            self.image.hide()
        self.problem.setText(f"⚠ {problem}" if problem else "")
        self.problem.setVisible(bool(problem))

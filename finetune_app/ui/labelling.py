"""The labelling loop: a folder of pictures without captions -> the base model captions them all
(progress, cancellable, in batches) -> the person corrects them (undo, keyboard) -> captions.csv
is saved atomically beside them -> the folder opens as the dataset to train on.

Captioning runs on a background Task (workers.Task, MLX on its own thread); the table only shows
what comes back. Editing is a QUndoStack of caption changes, so Undo/Redo cover typed edits and
the model's captions alike.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from finetune_app.ui.widgets import Banner, clean_output, heading, message_of, secondary
from finetune_app.ui.workers import Task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BATCH = 4  # captions per progress report (and per cancellation check)
CAPTIONS_FILE = "captions.csv"


def image_files(folder: Path) -> list[Path]:
    """The pictures of a folder (its images/ subfolder when it has one), sorted by name."""
    root = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def one_line(text: str) -> str:
    """A caption is one line: runs of whitespace (newlines, a stray carriage return) become a space."""
    return " ".join(text.split())


def captions_csv(folder: Path, rows: list[tuple[Path, str]]) -> str:
    """captions.csv text: filename (relative to the csv's folder), caption."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["filename", "caption"])
    for path, caption in rows:
        w.writerow([path.relative_to(folder).as_posix() if path.parent != folder / "images" else path.name,
                    caption])
    return buf.getvalue()


def caption_batches(model: str, paths: list[Path], task: Task) -> list[str]:
    """On the task's thread: load the base model once and caption every picture, reporting
    (done, total, {row: caption}) after each batch; stops between batches when cancelled."""
    from finetune_app.core.generate import caption_files
    from finetune_app.core.models import load_base

    base = load_base(model)
    out: list[str] = []
    for start in range(0, len(paths), BATCH):
        task.check()
        batch = paths[start:start + BATCH]
        texts = [one_line(clean_output(t)) for t in caption_files(base, batch)]
        out += texts
        task.report((len(out), len(paths), {start + i: t for i, t in enumerate(texts)}))
    return out


class SetCaption(QUndoCommand):
    def __init__(self, panel: "LabelPanel", row: int, old: str, new: str):
        super().__init__(f"caption of row {row + 1}")
        self.panel, self.row, self.old, self.new = panel, row, old, new

    def redo(self) -> None:
        self.panel._show_caption(self.row, self.new)

    def undo(self) -> None:
        self.panel._show_caption(self.row, self.old)


class LabelPanel(QWidget):
    """Signals: `saved(folder)` once captions.csv is written (the window opens it as the dataset)."""

    saved = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("labelPanel")
        self.folder: Path | None = None
        self.paths: list[Path] = []
        self.model: str = ""
        self._task: Task | None = None
        self._texts: list[str] = []  # the captions as committed (the undo stack's view)
        self._showing = False
        self.undo_stack = QUndoStack(self)

        self.title = heading("Label pictures", 3)
        self.hint = secondary(QLabel("Open a folder of pictures without captions (File ▸ Label Pictures…). The "
                                     "base model captions them; correct what it got wrong, save, and train."))
        self.hint.setWordWrap(True)
        self.caption_button = QPushButton("Caption All with the Base Model")
        self.caption_button.setObjectName("captionAllButton")
        self.caption_button.clicked.connect(lambda: self.caption_all())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo_stack.undo)
        self.undo_stack.canUndoChanged.connect(self.undo_button.setEnabled)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.undo_stack.redo)
        self.undo_stack.canRedoChanged.connect(self.redo_button.setEnabled)
        self.save_button = QPushButton("Save captions.csv")
        self.save_button.setObjectName("saveCaptionsButton")
        self.save_button.clicked.connect(self.save)
        self.progress = QProgressBar()
        self.progress.setObjectName("labelProgress")
        self.progress.hide()
        self.banner = Banner("info")
        self.table = QTableWidget(0, 2)
        self.table.setObjectName("labelTable")
        self.table.setHorizontalHeaderLabels(["Picture", "Caption"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed
                                   | QAbstractItemView.EditTrigger.AnyKeyPressed)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.itemDelegate().closeEditor.connect(self._next_row_after_edit)
        for key, slot in ((QKeySequence.StandardKey.Undo, self.undo_stack.undo),
                          (QKeySequence.StandardKey.Redo, self.undo_stack.redo)):
            action = self.undo_stack.createUndoAction(self) if slot == self.undo_stack.undo else \
                self.undo_stack.createRedoAction(self)
            action.setShortcut(key)
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(action)

        buttons = QHBoxLayout()
        for b in (self.caption_button, self.cancel_button, self.undo_button, self.redo_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.hint)
        layout.addWidget(self.banner)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.table, 1)
        self._update_buttons()

    # -- folder --------------------------------------------------------------------------------
    def open_folder(self, folder: str | Path) -> int:
        """Show the folder's pictures (with the captions of its captions.csv, if any)."""
        self.cancel()
        self.folder = Path(folder).expanduser().resolve()
        self.paths = image_files(self.folder)
        known: dict[str, str] = {}
        existing = self.folder / CAPTIONS_FILE
        if existing.is_file():
            with open(existing, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    known[Path(row.get("filename") or "").name] = row.get("caption") or ""
        self._showing = True
        self._texts = [known.get(p.name, "") for p in self.paths]
        self.table.setRowCount(len(self.paths))
        for i, p in enumerate(self.paths):
            name = QTableWidgetItem(p.name)
            name.setFlags(name.flags() & ~Qt.ItemFlag.ItemIsEditable)
            name.setToolTip(str(p))
            self.table.setItem(i, 0, name)
            self.table.setItem(i, 1, QTableWidgetItem(known.get(p.name, "")))
        self._showing = False
        self.undo_stack.clear()
        self.title.setText(f"Label pictures: {self.folder.name} ({len(self.paths)})")
        self.banner.hide()
        if not self.paths:
            self.banner.show_message("No pictures here", f"{self.folder} has no PNG, JPEG or WebP files.", "warning")
        self._update_buttons()
        return len(self.paths)

    def set_model(self, model: str) -> None:
        self.model = model
        self._update_buttons()

    def captions(self) -> list[str]:
        return list(self._texts)

    # -- captioning ----------------------------------------------------------------------------
    def caption_all(self, model: str | None = None) -> None:
        """Caption every picture with the base model, in the background (Cancel stops it)."""
        model = model or self.model
        if not model or not self.paths or self._task is not None:
            return
        self.progress.setRange(0, len(self.paths))
        self.progress.setValue(0)
        self.progress.setFormat("Loading the base model…")
        self.progress.show()
        self.undo_stack.beginMacro("base model captions")
        task = Task(lambda t: caption_batches(model, list(self.paths), t), name="label", uses_mlx=True, parent=self)
        task.progressed.connect(self._on_captions)
        task.succeeded.connect(lambda _r: self._captioning_ended("The base model captioned every picture. "
                                                               "Correct them, then save."))
        task.failed.connect(lambda exc: self._captioning_ended(message_of(exc), kind="error"))
        self._task = task
        task.start()
        self._update_buttons()

    def _on_captions(self, value) -> None:
        if self.sender() is not self._task:
            return
        done, total, texts = value
        for row, text in texts.items():
            self.set_caption(row, text)
        self.progress.setValue(done)
        self.progress.setFormat(f"Captioning… %v of %m")

    def _captioning_ended(self, message: str, *, kind: str = "success") -> None:
        if self._task is None:
            return
        self._task = None
        self.undo_stack.endMacro()
        self.progress.hide()
        title = {"success": "Captions ready", "error": "Captioning failed", "warning": "Captioning cancelled"}[kind]
        self.banner.show_message(title, message, kind)
        self._update_buttons()

    def cancel(self) -> None:
        """Stop after the current batch; the captions so far stay (one Undo removes them)."""
        if self._task is not None:
            self._task.cancel()
            self._captioning_ended("The captions written so far are kept; Undo removes them.", kind="warning")

    def is_busy(self) -> bool:
        return self._task is not None

    # -- editing -------------------------------------------------------------------------------
    def set_caption(self, row: int, text: str) -> None:
        """Change one caption (undoable): what typing in the table does."""
        if text != self._texts[row]:
            self.undo_stack.push(SetCaption(self, row, self._texts[row], text))

    def _show_caption(self, row: int, text: str) -> None:
        self._texts[row] = text
        self._showing = True
        self.table.item(row, 1).setText(text)
        self._showing = False

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        """A typed edit (the cell holds the new text already): recorded on the undo stack."""
        if self._showing or item.column() != 1:
            return
        if item.text() != self._texts[item.row()]:
            self.undo_stack.push(SetCaption(self, item.row(), self._texts[item.row()], item.text()))

    def _next_row_after_edit(self, *_a) -> None:
        """Enter commits the caption and moves to the next picture (keyboard labelling)."""
        row = self.table.currentRow()
        if 0 <= row < self.table.rowCount() - 1:
            QTimer.singleShot(0, lambda: self.table.setCurrentCell(row + 1, 1))

    # -- saving --------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write captions.csv beside the pictures (atomically); empty captions are refused."""
        from finetune_app.core import atomic

        if self.folder is None:
            return None
        empty = [self.paths[i].name for i, c in enumerate(self.captions()) if not c.strip()]
        if empty:
            self.banner.show_message("Some pictures have no caption",
                                     f"{len(empty)} without a caption (first: {empty[0]}). Caption them or "
                                     "remove the pictures from the folder, then save.", "warning")
            row = [p.name for p in self.paths].index(empty[0])
            self.table.setCurrentCell(row, 1)
            return None
        rows = list(zip(self.paths, [one_line(c) for c in self.captions()]))
        path = atomic.write_text(self.folder / CAPTIONS_FILE, captions_csv(self.folder, rows))
        self.banner.show_message("Saved", f"{path} ({len(rows)} captions). It opens as the dataset.", "success")
        self.saved.emit(str(self.folder))
        return path

    def _update_buttons(self) -> None:
        busy = self._task is not None
        self.caption_button.setEnabled(bool(self.paths) and bool(self.model) and not busy)
        self.caption_button.setToolTip("" if self.model else "Choose a base model first (Model & Settings).")
        self.cancel_button.setEnabled(busy)
        self.save_button.setEnabled(bool(self.paths) and not busy)
        self.undo_button.setEnabled(self.undo_stack.canUndo())
        self.redo_button.setEnabled(self.undo_stack.canRedo())

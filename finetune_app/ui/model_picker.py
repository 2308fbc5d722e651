"""The model picker: a Hugging Face id (downloaded with progress, cancellable) or a local folder.

Resolving and describing run on a background task (`workers.load_model_choice`): a download
reports bytes through the engine's progress callback; Cancel abandons the task at once (the
thread stops at its next progress report); an offline machine gets the engine's own message in
a panel. The picker keeps the recent models (QSettings) and says what the model is.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from finetune_app.ui.app import settings
from finetune_app.ui.widgets import (
    Banner,
    format_bytes,
    format_count,
    heading,
    message_of,
    secondary,
)
from finetune_app.ui.workers import ModelChoice, Task, load_model_choice

RECENT_KEY = "models/recent"
MAX_RECENT = 10
SUGGESTED = ("mlx-community/FastVLM-0.5B-bf16", "mlx-community/Qwen2-VL-2B-Instruct-4bit",
             "mlx-community/Qwen2.5-VL-3B-Instruct-4bit")


def recent_models() -> list[str]:
    value = settings().value(RECENT_KEY, [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or []) if str(v).strip()]


def remember_model(source: str) -> None:
    items = [source] + [m for m in recent_models() if m != source]
    s = settings()
    s.setValue(RECENT_KEY, items[:MAX_RECENT])
    s.sync()


class ModelPicker(QWidget):
    """Signals: `modelChosen(ModelChoice)`, `modelCleared()` (a new pick started), `failed(str)`."""

    modelChosen = Signal(object)
    modelCleared = Signal()
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("modelPicker")
        self.choice: ModelChoice | None = None
        self._task: Task | None = None

        self.source = QComboBox()
        self.source.setObjectName("modelSource")
        self.source.setEditable(True)
        self.source.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.source.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.source.lineEdit().setPlaceholderText("Hugging Face id (owner/name) or a local model folder")
        self.source.setToolTip("A Hugging Face id such as mlx-community/FastVLM-0.5B-bf16 (downloaded "
                               "once into the Hugging Face cache), or a folder with config.json and "
                               ".safetensors weights.")
        self.source.lineEdit().returnPressed.connect(self.load)
        self.browse_button = QPushButton("Folder…")
        self.browse_button.setObjectName("modelBrowse")
        self.browse_button.clicked.connect(self.choose_folder)
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("modelLoad")
        self.load_button.setDefault(True)
        self.load_button.clicked.connect(self.load)
        row = QHBoxLayout()
        row.addWidget(self.source, 1)
        row.addWidget(self.browse_button)
        row.addWidget(self.load_button)

        self.progress = QProgressBar()
        self.progress.setObjectName("modelProgress")
        self.progress_label = secondary(QLabel(""))
        self.progress_label.setObjectName("modelProgressLabel")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("modelCancel")
        self.cancel_button.clicked.connect(self.cancel)
        prow = QHBoxLayout()
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        self.progress_box = QWidget()
        pl = QVBoxLayout(self.progress_box)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addLayout(prow)
        pl.addWidget(self.progress_label)
        self.progress_box.hide()

        self.summary = QLabel("No model chosen yet.")
        self.summary.setObjectName("modelSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details = QGridLayout()
        self.details.setHorizontalSpacing(16)
        self._detail_labels: dict[str, QLabel] = {}
        for i, (key, title) in enumerate((("family", "Family"), ("kind", "Reads"), ("size", "Size"),
                                          ("dtype", "Weights"), ("quant", "Quantization"), ("path", "Folder"))):
            name = secondary(QLabel(title))
            value = QLabel("–")
            value.setObjectName(f"model_{key}")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(key == "path")
            self._detail_labels[key] = value
            self.details.addWidget(name, i // 2, (i % 2) * 2)
            self.details.addWidget(value, i // 2, (i % 2) * 2 + 1)
        self.details.setColumnStretch(1, 1)
        self.details.setColumnStretch(3, 1)

        self.error = Banner("error")
        self.error.setObjectName("modelError")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(heading("Base model", 1))
        layout.addLayout(row)
        layout.addWidget(self.progress_box)
        layout.addWidget(self.error)
        layout.addWidget(self.summary)
        layout.addLayout(self.details)
        self.refresh_recent()

    # -- recent ------------------------------------------------------------------------------
    def refresh_recent(self) -> None:
        text = self.source.currentText()
        self.source.blockSignals(True)
        self.source.clear()
        recent = recent_models()
        for item in recent:
            self.source.addItem(item)
        for item in SUGGESTED:
            if item not in recent:
                self.source.addItem(item)
        self.source.setEditText(text)
        self.source.blockSignals(False)

    # -- actions -----------------------------------------------------------------------------
    def choose_folder(self) -> None:
        start = self.source.currentText() if Path(self.source.currentText()).expanduser().is_dir() else str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Choose a Model Folder", start)
        if path:
            self.load(path)

    def load(self, source: str | None = None) -> None:
        """Resolve and describe `source` (or the text in the box) in the background."""
        if source is None or not isinstance(source, str):
            source = self.source.currentText()
        source = source.strip()
        self.source.setEditText(source)
        if self._task is not None:
            self._task.cancel()
        self.error.hide()
        if not source:
            self._show_error("No model chosen", "Enter a Hugging Face id such as "
                             "mlx-community/FastVLM-0.5B-bf16, or choose a local model folder.")
            return
        self.choice = None
        self.modelCleared.emit()
        self.clear_details()
        self.summary.setText(f"Looking at {source}…")
        self.progress.setRange(0, 0)
        self.progress_label.setText("Checking the model…")
        self.progress_box.show()
        self.load_button.setEnabled(False)
        task = Task(lambda t: load_model_choice(source, t), name="model", uses_mlx=True, parent=self)
        task.progressed.connect(self._on_progress)
        task.succeeded.connect(self._on_loaded)
        task.failed.connect(self._on_failed)
        self._task = task
        task.start()

    def is_busy(self) -> bool:
        return self._task is not None

    def cancel(self) -> None:
        """Abandon the download or check; the person is told at once."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        self.progress_box.hide()
        self.load_button.setEnabled(True)
        self.summary.setText("No model chosen yet.")
        self.cancelled.emit()
        self._show_error("Download cancelled", "Nothing was loaded. Files already downloaded stay in "
                         "the Hugging Face cache, so loading this model again continues where it stopped.",
                         kind="info")

    def _on_progress(self, value) -> None:
        if self.sender() is not self._task:
            return
        kind, done, total, what = value
        if kind == "download":
            if total > 0:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(1000 * min(done, total) / total))
                self.progress_label.setText(f"Downloading {what}: {format_bytes(done)} of {format_bytes(total)}")
            else:
                self.progress.setRange(0, 0)
                self.progress_label.setText(f"Downloading {what}: {format_bytes(done)}")
        else:
            self.progress.setRange(0, 0)
            self.progress_label.setText("Reading the model's configuration…")

    def _on_loaded(self, choice: ModelChoice) -> None:
        if self.sender() is not self._task:
            return
        self._task = None
        self.progress_box.hide()
        self.load_button.setEnabled(True)
        self.choice = choice
        self.show_choice(choice)
        remember_model(choice.source)
        self.refresh_recent()
        self.modelChosen.emit(choice)

    def show_choice(self, choice: ModelChoice) -> None:
        info = choice.info
        self.summary.setText(f"<b>{info.summary()}</b>")
        labels = self._detail_labels
        labels["family"].setText(f"{info.family} ({info.model_type})")
        labels["kind"].setText("images and text (vision-language)" if info.kind == "vlm" else "text only")
        labels["size"].setText(f"{format_count(info.parameters)} parameters")
        labels["dtype"].setText(info.dtype)
        labels["quant"].setText(info.quantization)
        labels["path"].setText(str(choice.path))

    def clear_details(self) -> None:
        for label in self._detail_labels.values():
            label.setText("–")

    def _on_failed(self, exc) -> None:
        if self.sender() is not self._task:
            return
        self._task = None
        self.progress_box.hide()
        self.load_button.setEnabled(True)
        self.summary.setText("No model chosen yet.")
        text = message_of(exc)
        self._show_error("This model cannot be used", text)
        self.failed.emit(text)

    def _show_error(self, title: str, text: str, kind: str = "error") -> None:
        self.error.show_message(title, text, kind)

"""Fix a row of an image + caption dataset in its own file: the caption text and the picture's path.

The dataset browser opens this on a row (most often one the validation flagged: a missing picture,
an empty caption). Saving rewrites only that row's lines of the CSV or JSONL file, atomically (the
other rows stay byte for byte), and the browser validates again, so the flag goes once the row is
sound. Rows of other containers (JSON arrays, Parquet, HF datasets) are fixed in their own tools:
the editor says so instead of rewriting a file it cannot rewrite faithfully.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core.errors import DataError
from finetune_app.ui.widgets import Banner, message_of, secondary

PREVIEW = 160


@dataclass
class RowFields:
    """One caption row as written in its file, and which columns hold the picture and caption."""

    file: Path
    kind: str  # "csv" or "jsonl"
    line: int
    image_key: str
    text_key: str
    image: str  # as written (a path relative to the dataset file, usually)
    caption: str
    base: str  # folder a relative picture path is read against
    root: str  # pictures must stay inside this folder


def row_fields(dataset, row: int) -> RowFields:
    """What the editor shows for a row; DataError saying why when this row cannot be edited here."""
    from finetune_app.core.data.formats.caption import IMAGE_KEYS, OTHER_KEYS, TEXT_KEYS
    from finetune_app.core.data.formats.common import RowError, first_key

    ref = dataset.rows[row]
    src = dataset.sources[ref.source]
    if dataset.format != "caption" or src.kind not in ("csv", "jsonl") or getattr(src, "_mem", None) is not None:
        raise DataError(f"Rows of {Path(src.name).name} cannot be edited here.",
                        "The editor rewrites image + caption rows of UTF-8 CSV and JSONL files; fix this one in "
                        "the file itself and open the dataset again.", file=src.name, line=ref.line)
    try:
        values, _ = src.read(ref.key, ref.size)
    except RowError as err:
        raise DataError(f"This row cannot be read ({err.message})", "Fix it in a text editor.",
                        file=src.name, line=ref.line) from None
    keys = set(src.columns()) if src.kind == "csv" else set(values)
    image_key = first_key(keys, IMAGE_KEYS) or "image"
    text_key = first_key(keys, TEXT_KEYS)
    if text_key is None:
        rest = sorted(k for k in keys if k != image_key and k not in OTHER_KEYS)
        text_key = rest[0] if len(rest) == 1 else "caption"
    image, caption = values.get(image_key), values.get(text_key)
    return RowFields(Path(src.path), src.kind, ref.line, image_key, text_key,
                     image if isinstance(image, str) else "" if image is None else json.dumps(image),
                     caption if isinstance(caption, str) else "" if caption is None else str(caption),
                     src.ctx.base, src.ctx.root)


def written_path(fields: RowFields, picture: str | Path) -> str:
    """How the file should name a picture: relative to the dataset file's folder, with '/'."""
    p = os.path.normpath(os.path.abspath(os.fspath(picture)))
    root = fields.root.rstrip(os.sep)
    if p != root and not p.startswith(root + os.sep):
        raise DataError(f"{picture} is outside the dataset folder ({fields.root}).",
                        "Copy the picture into the dataset folder (its images/ folder), then choose it there.",
                        file=str(fields.file), line=fields.line, field=fields.image_key)
    return Path(os.path.relpath(p, fields.base)).as_posix()


def save_row(fields: RowFields, *, image: str, caption: str) -> Path:
    """Rewrite this row's lines with the new picture path and caption (atomic; other rows untouched)."""
    from finetune_app.core import atomic

    caption = " ".join(caption.split()) if fields.kind == "csv" else caption.strip()
    raw = fields.file.read_bytes()
    if fields.kind == "jsonl":
        return atomic.write_bytes(fields.file, _jsonl_with(raw, fields, image, caption))
    return atomic.write_bytes(fields.file, _csv_with(raw, fields, image, caption))


def _jsonl_with(raw: bytes, fields: RowFields, image: str, caption: str) -> bytes:
    lines = raw.splitlines(keepends=True)
    old = lines[fields.line - 1]
    body = old.rstrip(b"\r\n")
    obj = json.loads(body.decode("utf-8-sig" if fields.line == 1 else "utf-8"))
    obj[fields.image_key], obj[fields.text_key] = image, caption
    bom = b"\xef\xbb\xbf" if fields.line == 1 and body.startswith(b"\xef\xbb\xbf") else b""
    lines[fields.line - 1] = bom + json.dumps(obj, ensure_ascii=False).encode("utf-8") + old[len(body):]
    return b"".join(lines)


def _csv_with(raw: bytes, fields: RowFields, image: str, caption: str) -> bytes:
    bom = raw.startswith(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{fields.file.name} is not UTF-8, so the editor will not rewrite it.",
                        "Save it as UTF-8 (most spreadsheet apps offer 'CSV UTF-8') and open it again.",
                        file=str(fields.file)) from None
    lines = io.StringIO(text, newline="").readlines()
    first = lines[0] if lines else ""
    delimiter = "\t" if fields.file.suffix.lower() == ".tsv" or ("\t" in first and "," not in first) else (
        ";" if ";" in first and "," not in first else ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, start, end, record = None, None, None, None
    prev = 0
    for rec in reader:
        begin, prev = prev + 1, reader.line_num
        if header is None and rec and any(f.strip() for f in rec):
            header = [h.strip() for h in rec]
        elif begin == fields.line:
            start, end, record = begin, reader.line_num, rec
            break
    if record is None or header is None:
        raise DataError(f"Line {fields.line} of {fields.file.name} changed since the dataset was opened.",
                        "Open the dataset again, then edit the row.", file=str(fields.file), line=fields.line)
    record = record + [""] * (len(header) - len(record))
    for key, value in ((fields.image_key, image), (fields.text_key, caption)):
        if key in header:
            record[header.index(key)] = value
    ending = "\r\n" if lines[end - 1].endswith("\r\n") else "\n"
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator=ending).writerow(record)
    if not lines[end - 1].endswith(("\n", "\r")):  # the last line had no newline: keep it so
        buf = io.StringIO(buf.getvalue().rstrip("\r\n"))
    lines[start - 1:end] = [buf.getvalue()]
    return (b"\xef\xbb\xbf" if bom else b"") + "".join(lines).encode("utf-8")


class RowEditor(QDialog):
    """Edit one row's picture and caption; `save()` writes it (the dialog's Save button does)."""

    def __init__(self, fields: RowFields, row: int, problem: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("rowEditor")
        self.setWindowTitle(f"Row {row + 1}: {fields.file.name} line {fields.line}")
        self.fields = fields
        self.row = row
        self.saved_path: Path | None = None

        self.problem = QLabel(f"⚠ {problem}" if problem else "")
        self.problem.setObjectName("rowEditorProblem")
        self.problem.setStyleSheet("color:#d93025")
        self.problem.setWordWrap(True)
        self.problem.setVisible(bool(problem))
        self.preview = QLabel()
        self.preview.setObjectName("rowEditorPreview")
        self.preview.setFixedSize(PREVIEW, PREVIEW)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setFrameShape(QFrame.Shape.StyledPanel)
        self.image = QLineEdit(fields.image)
        self.image.setObjectName("rowEditorImage")
        self.image.textChanged.connect(self._show_picture)
        choose = QPushButton("Choose…")
        choose.setObjectName("rowEditorChoose")
        choose.clicked.connect(self.choose_picture)
        self.caption = QPlainTextEdit(fields.caption)
        self.caption.setObjectName("rowEditorCaption")
        self.caption.setTabChangesFocus(True)
        self.banner = Banner("error")
        self.banner.setObjectName("rowEditorError")

        pick = QHBoxLayout()
        pick.addWidget(self.image, 1)
        pick.addWidget(choose)
        form = QFormLayout()
        form.addRow(f"Picture ({fields.image_key}):", pick)
        form.addRow(f"Caption ({fields.text_key}):", self.caption)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        note = secondary(QLabel(f"Saving rewrites this row in {fields.file.name}; the dataset is checked again."))
        note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.problem)
        layout.addWidget(self.banner)
        top = QHBoxLayout()
        top.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignTop)
        top.addLayout(form, 1)
        layout.addLayout(top)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.resize(640, 300)
        self._show_picture()
        self.caption.setFocus()

    def picture_path(self) -> Path:
        value = self.image.text().strip()
        return Path(value if os.path.isabs(value) else os.path.join(self.fields.base, value))

    def _show_picture(self) -> None:
        from PySide6.QtGui import QImageReader, QPixmap

        path = self.picture_path()
        reader = QImageReader(str(path))
        reader.setAutoTransform(True)
        size = reader.size()
        if size.isValid():
            reader.setScaledSize(size.scaled(PREVIEW, PREVIEW, Qt.AspectRatioMode.KeepAspectRatio))
        image = reader.read() if path.is_file() else None
        if image is None or image.isNull():
            self.preview.setPixmap(QPixmap())
            self.preview.setText("no picture" if not path.is_file() else "cannot be read")
        else:
            self.preview.setPixmap(QPixmap.fromImage(image))

    def choose_picture(self) -> None:
        start = str(self.picture_path().parent if self.picture_path().parent.is_dir() else self.fields.base)
        path, _ = QFileDialog.getOpenFileName(self, "Choose the picture", start,
                                              "Pictures (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)")
        if path:
            self.set_picture(path)

    def set_picture(self, path: str | Path) -> bool:
        """Point the row at this picture (written relative to the dataset file)."""
        try:
            self.image.setText(written_path(self.fields, path))
        except DataError as err:
            self.banner.show_message("That picture cannot be used", message_of(err))
            return False
        self.banner.hide()
        return True

    def save(self) -> Path | None:
        caption = self.caption.toPlainText()
        if not caption.strip():
            self.banner.show_message("The caption is empty", "Write what the picture shows; the model learns to say it.")
            self.caption.setFocus()
            return None
        if not self.picture_path().is_file():
            self.banner.show_message("The picture is not there", f"{self.picture_path()} does not exist. "
                                     "Choose the picture with Choose…")
            return None
        try:
            written_path(self.fields, self.picture_path())
            self.saved_path = save_row(self.fields, image=self.image.text().strip(), caption=caption)
        except (DataError, OSError, ValueError) as exc:
            self.banner.show_message("The row could not be saved", message_of(exc))
            return None
        self.accept()
        return self.saved_path

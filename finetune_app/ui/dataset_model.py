"""The dataset grid's model: rows parsed only when shown, thumbnails decoded off the GUI thread.

A 10,000-row dataset must scroll smoothly, so nothing here touches every row: `data()` parses a
row only when the view asks for it (the view asks only for visible rows, because the delegate has
a fixed size and the view uses uniform item sizes), keeps the last few hundred parsed rows, and
answers a thumbnail request with a placeholder while a `ThumbnailLoader` decodes the image on a
QThreadPool. Requests are served newest first, so after a fast scroll the rows on screen load
before the ones scrolled past.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QRect,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import (
    QColor,
    QImage,
    QImageReader,
    QPainter,
    QPalette,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import QStyle, QStyledItemDelegate

THUMB = 96  # thumbnail edge, logical pixels


def load_thumbnail(ref, edge: int) -> QImage:
    """Decode an ImageRef (file or embedded bytes) scaled to fit edge×edge; null QImage on failure."""
    image = QImage()
    if getattr(ref, "path", None) is not None:
        reader = QImageReader(str(ref.path))
        reader.setAutoTransform(True)  # EXIF orientation, as the trainer sees it
        size = reader.size()
        if size.isValid() and (size.width() > edge or size.height() > edge):
            reader.setScaledSize(size.scaled(edge, edge, Qt.AspectRatioMode.KeepAspectRatio))
        image = reader.read()
    elif getattr(ref, "data", None):
        image.loadFromData(ref.data)
    if not image.isNull() and (image.width() > edge or image.height() > edge):
        image = image.scaled(edge, edge, Qt.AspectRatioMode.KeepAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
    return image


class _ThumbJob(QRunnable):
    def __init__(self, loader: "ThumbnailLoader"):
        super().__init__()
        self.loader = loader

    def run(self) -> None:
        self.loader._work()


class ThumbnailLoader(QObject):
    """Decodes thumbnails on a thread pool; `loaded(key, image)` arrives on the GUI thread."""

    loaded = Signal(str, QImage)
    MAX_WAITING = 400  # older requests beyond this are dropped (they scrolled away)

    def __init__(self, edge: int = THUMB, threads: int | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.edge = edge
        self.pool = QThreadPool(self)
        # leave a core to the window (and the trainer): decoding competes with painting
        self.pool.setMaxThreadCount(threads or max(1, min(4, (os.cpu_count() or 2) - 1)))
        self._lock = threading.Lock()
        self._stack: list[tuple[str, object]] = []  # newest last
        self._waiting: set[str] = set()
        self._runners = 0  # jobs started and not yet finished; each drains the stack
        self._kick_pending = False
        self.decoded = 0  # images decoded so far (tests and diagnostics)
        self.decoded_keys: set[str] = set()  # which ones ("generation:row"; tests and diagnostics)

    def request(self, key: str, ref) -> None:
        with self._lock:
            if key in self._waiting:
                return
            self._waiting.add(key)
            self._stack.append((key, ref))
            if len(self._stack) > self.MAX_WAITING:
                old_key, _ = self._stack.pop(0)
                self._waiting.discard(old_key)
        if not self._kick_pending:  # one kick per pass of the event loop, not one per request
            self._kick_pending = True
            QTimer.singleShot(0, self._kick)

    def _kick(self) -> None:
        self._kick_pending = False
        with self._lock:
            n = min(self.pool.maxThreadCount() - self._runners, len(self._stack))
            self._runners += max(0, n)
        for _ in range(n):
            self.pool.start(_ThumbJob(self))

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting)

    def clear(self) -> None:
        with self._lock:
            self._stack.clear()
            self._waiting.clear()

    def _work(self) -> None:  # on a pool thread: newest request first, until none is left
        while True:
            with self._lock:
                if not self._stack:
                    self._runners -= 1
                    return
                key, ref = self._stack.pop()
            try:
                image = load_thumbnail(ref, self.edge)
            except Exception:
                image = QImage()
            with self._lock:
                self._waiting.discard(key)
                self.decoded += 1
                self.decoded_keys.add(key)
            try:
                self.loaded.emit(key, image)
            except RuntimeError:  # the loader was deleted while this image decoded
                with self._lock:
                    self._runners -= 1
                return


class DatasetListModel(QAbstractListModel):
    """One row per dataset row (usable or not, so every problem can be shown on its row)."""

    SampleRole = Qt.ItemDataRole.UserRole + 1  # the parsed Sample (or None)
    ProblemRole = Qt.ItemDataRole.UserRole + 2  # first problem message of the row, or None
    ImageRole = Qt.ItemDataRole.UserRole + 3  # ImageRef of the first image, or None
    CellRole = Qt.ItemDataRole.UserRole + 4  # (pixmap or None, caption, problem): one call per paint
    SAMPLE_CACHE = 600
    PIXMAP_CACHE = 1500

    def __init__(self, loader: ThumbnailLoader | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.loader = loader or ThumbnailLoader(parent=self)
        self.loader.loaded.connect(self._on_loaded)
        self.dataset = None
        self._problems: dict[int, str] = {}
        self._samples: OrderedDict[int, tuple] = OrderedDict()
        self._pixmaps: OrderedDict[str, QPixmap] = OrderedDict()
        self._generation = 0
        self.requested_rows: set[int] = set()  # rows data() was asked about (tests, diagnostics)

    # -- content ----------------------------------------------------------------------------
    def set_dataset(self, dataset, problems: dict[int, str] | None = None) -> None:
        self.beginResetModel()
        self.dataset = dataset
        self._problems = dict(problems or {})
        self._samples.clear()
        self._pixmaps.clear()
        self._generation += 1
        self.loader.clear()
        self.requested_rows.clear()
        self.endResetModel()

    def set_problems(self, problems: dict[int, str]) -> None:
        self._problems = dict(problems)
        if self.rowCount():
            self.dataChanged.emit(self.index(0), self.index(self.rowCount() - 1),
                                  [Qt.ItemDataRole.DisplayRole, self.ProblemRole])

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        if parent.isValid() or self.dataset is None:
            return 0
        return len(self.dataset)

    def sample(self, row: int):
        """(Sample or None, problems) for a row, parsed once and kept while recently used."""
        hit = self._samples.get(row)
        if hit is not None:
            self._samples.move_to_end(row)
            return hit
        try:
            hit = self.dataset.parse_row(row)
        except Exception as exc:  # a reader bug shows on its row, never crashes the view
            from finetune_app.core.errors import Problem

            hit = (None, [Problem("", None, None, f"this row could not be read ({exc}).")])
        self._samples[row] = hit
        if len(self._samples) > self.SAMPLE_CACHE:
            self._samples.popitem(last=False)
        return hit

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or self.dataset is None:
            return None
        row = index.row()
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.DecorationRole, self.CellRole,
                    Qt.ItemDataRole.ToolTipRole, self.SampleRole, self.ProblemRole, self.ImageRole):
            self.requested_rows.add(row)
        else:
            return None
        sample, problems = self.sample(row)
        problem = self._problems.get(row) or (problems[0].message if sample is None and problems else None)
        if role == self.CellRole:
            return self._decoration(row, sample), self._display(sample, problem), problem
        if role == self.ProblemRole:
            return problem
        if role == self.SampleRole:
            return sample
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(sample, problem)
        if role == self.ImageRole:
            return sample.images[0] if sample is not None and sample.images else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return _tooltip(sample, problem)
        return self._decoration(row, sample)  # DecorationRole

    @staticmethod
    def _display(sample, problem) -> str:
        if sample is None:
            return f"⚠ {problem or 'unreadable row'}"
        text = _preview(sample)
        return f"⚠ {text}" if problem else text

    def _decoration(self, row: int, sample):
        """The cached thumbnail, or None after asking the loader for it."""
        if sample is None or not sample.images:
            return None
        key = f"{self._generation}:{row}"
        pixmap = self._pixmaps.get(key)
        if pixmap is not None:
            self._pixmaps.move_to_end(key)
            return pixmap
        self.loader.request(key, sample.images[0])
        return None

    def thumbnail_cached(self, row: int) -> bool:
        return f"{self._generation}:{row}" in self._pixmaps

    @Slot(str, QImage)
    def _on_loaded(self, key: str, image: QImage) -> None:
        gen, _, row_text = key.partition(":")
        if int(gen) != self._generation:
            return  # a thumbnail of a dataset no longer shown
        pixmap = QPixmap.fromImage(image) if not image.isNull() else QPixmap()
        self._pixmaps[key] = pixmap
        if len(self._pixmaps) > self.PIXMAP_CACHE:
            self._pixmaps.popitem(last=False)
        row = int(row_text)
        if 0 <= row < self.rowCount():
            idx = self.index(row)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])


def _preview(sample) -> str:
    if sample.rejected is not None:  # a preference pair
        prompt = sample.prompt.replace("\n", " ").strip()
        chosen, rejected = (t.replace("\n", " ").strip() for t in (sample.answer, sample.rejected.text))
        return f"{prompt}  →  ✓ {chosen}   ✗ {rejected}"
    if sample.images:
        return sample.answer
    prompt = sample.prompt.replace("\n", " ").strip()
    answer = sample.answer.replace("\n", " ").strip()
    return f"{prompt}  →  {answer}" if prompt else answer


def _tooltip(sample, problem) -> str:
    import html

    parts = []
    if sample is not None:
        where = f"{sample.source} line {sample.line}" if sample.line is not None else sample.source
        parts.append(f"<b>{html.escape(where)}</b>")
        for t in sample.turns:
            parts.append(f"<i>{t.role}</i>: {html.escape(t.text[:300])}")
    if problem:
        parts.append(f"<span style='color:#d93025'>⚠ {html.escape(problem)}</span>")
    return "<br>".join(parts)


class ThumbnailDelegate(QStyledItemDelegate):
    """Fixed-size cells (so the view never measures every row): thumbnail over a two-line caption."""

    def __init__(self, edge: int = THUMB, parent: QObject | None = None):
        super().__init__(parent)
        self.edge = edge

    def sizeHint(self, option, index) -> QSize:
        lines = option.fontMetrics.lineSpacing() * 2
        return QSize(self.edge + 24, self.edge + lines + 18)

    def paint(self, painter: QPainter, option, index) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = option.palette
        rect = option.rect.adjusted(3, 3, -3, -3)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(pal.color(QPalette.ColorRole.Highlight))
            painter.drawRoundedRect(rect, 8, 8)
        thumb = QRect(rect.center().x() - self.edge // 2, rect.top() + 6, self.edge, self.edge)
        pixmap, text, problem = index.data(DatasetListModel.CellRole) or (None, "", None)
        if isinstance(pixmap, QPixmap) and not pixmap.isNull():
            size = pixmap.size().scaled(self.edge, self.edge, Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, size.width(), size.height())
            target.moveCenter(thumb.center())
            painter.drawPixmap(target, pixmap)
        else:  # placeholder while it loads, or for a picture that cannot be read
            mid = QColor(pal.color(QPalette.ColorRole.Mid))
            mid.setAlpha(90)
            painter.fillRect(thumb, mid)  # plain: cheap to paint while scrolling fast
            if isinstance(pixmap, QPixmap):  # decoded, but nothing came out: say so
                painter.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
                painter.drawText(thumb, Qt.AlignmentFlag.AlignCenter, "no picture")
        if problem:
            painter.setPen(QPen(QColor("#d93025"), 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRoundedRect(thumb.adjusted(1, 1, -1, -1), 6, 6)
        fm = option.fontMetrics
        text_rect = QRect(rect.left() + 4, thumb.bottom() + 6, rect.width() - 8, fm.lineSpacing() * 2)
        text = fm.elidedText(text, Qt.TextElideMode.ElideRight, text_rect.width() * 2 - fm.averageCharWidth() * 2)
        colour = (QColor("#d93025") if problem and not selected else
                  pal.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text))
        painter.setPen(colour)
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop
                         | Qt.TextFlag.TextWordWrap, text)
        painter.restore()

"""Caption test: drop pictures, read the base model's and the fine-tuned model's captions side by side.

Pictures come from files, http(s) links or raw image data dragged from another app. Each one is
a request to the `InferenceService`: one worker QThread that owns its own copy of the models
(MLX streams are thread-local, and the training model must never be used from another thread, so
the service loads the base model and the run's newest checkpoint itself; see core.compare). The
requests queue there; each card says what it waits for ("queued (2 ahead)", "loading base
model…", "loading checkpoint step 40…") and the captions stream in token by token. Training goes
on meanwhile. Results can be copied or saved as CSV or JSON.

Non-images, unreadable or huge pictures and drops of more than MAX_DROP_FILES files get a message
in the panel, never an exception.
"""

from __future__ import annotations

import csv
import html
import io
import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PySide6.QtCore import (
    QBuffer,
    QByteArray,
    QCoreApplication,
    QIODevice,
    QMimeData,
    QObject,
    QSize,
    Qt,
    QThread,
    QUrl,
    Signal,
)
from PySide6.QtGui import QGuiApplication, QImage, QImageReader, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core.compare import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    ImageInput,
    TunedSource,
    is_image_name,
    recorded_base,
)
from finetune_app.core.generate import DEFAULT_CAPTION_PROMPT, GenerationSettings
from finetune_app.ui.widgets import Banner, breakable, clean_output, heading, message_of, secondary

MAX_DROP_FILES = 50
THUMB = 96
CHOOSE = "__choose__"
CURRENT_RUN = "__run__"
SIDES = ("base", "tuned")
RESULT_FIELDS = ("image", "prompt", "max_tokens", "temperature", "base_model", "base", "base_error", "tuned_model",
                 "tuned", "tuned_error")


# ---- requests and the worker thread ---------------------------------------------------------------

@dataclass
class CaptionRequest:
    image: ImageInput
    prompt: str = DEFAULT_CAPTION_PROMPT
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    model: str | None = None  # base model source (hub id or folder)
    tuned: TunedSource | None = None
    no_tuned_reason: str = ""  # shown on the fine-tuned side when there is none


@dataclass
class CompareRequest:
    data: str
    tuned: TunedSource
    model: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    limit: int | None = 20
    valid_fraction: float = 0.1
    seed: int = 0
    prompt: str | None = None
    part: str = "valid"
    image_size: int | None = None


class _Worker(QThread):
    """Takes requests off the queue one at a time; models load and run on this thread only."""

    def __init__(self, service: "InferenceService"):
        super().__init__()
        self.setObjectName("finetune-captions")
        self.service = service

    def run(self) -> None:
        from finetune_app.core.compare import ModelCache
        from finetune_app.ui.workers import release_mlx_thread_state

        svc = self.service
        cache = ModelCache()
        try:
            while True:
                item = svc._queue.get()
                if item is None:
                    break
                jid, request = item
                if not svc._begin(jid):
                    continue
                try:
                    if isinstance(request, CaptionRequest):
                        self._caption(jid, request, cache)
                    else:
                        self._compare(jid, request, cache)
                except Exception as exc:  # never let one request end the worker
                    svc.failed.emit(jid, "", message_of(exc))
                finally:
                    cache.status = None
                    svc._end(jid)
        finally:
            cache = None
            release_mlx_thread_state()

    # -- caption: base, then fine-tuned ---------------------------------------------------------
    def _caption(self, jid: int, req: CaptionRequest, cache) -> None:
        from finetune_app.core.errors import FinetuneError, ModelError

        svc = self.service
        svc.status.emit(jid, "", "reading the picture…" if req.image.url is None else "downloading…")
        try:
            image = req.image.load()
        except FinetuneError as err:
            svc.failed.emit(jid, "", err.message)
            return
        svc.status.emit(jid, "", "")
        model = req.model or (recorded_base(req.tuned) if req.tuned is not None else None)
        cancelled = lambda: svc.is_cancelled(jid)  # noqa: E731
        try:
            if not model:
                raise ModelError("No base model chosen.", "Choose one on the Model & Settings screen, or a run folder as the fine-tuned model.")
            cache.status = lambda text: svc.status.emit(jid, "base", text)
            with cache.base(model) as base:
                _check_vlm(base)
                svc.status.emit(jid, "base", "generating…")
                text = _stream(svc, jid, "base", base, req, image, cancelled)
            svc.done.emit(jid, "base", text, f"{base.family} · {Path(str(base.path)).name}")
        except Exception as exc:
            svc.failed.emit(jid, "base", message_of(exc))
        if cancelled():
            return
        if req.tuned is None:
            svc.failed.emit(jid, "tuned", req.no_tuned_reason or "No fine-tuned model chosen.")
            return
        try:
            cache.status = lambda text: svc.status.emit(jid, "tuned", text)
            tuned, resolved = cache.tuned(model, req.tuned)
            _check_vlm(tuned)
            svc.status.emit(jid, "tuned", "generating…")
            text = _stream(svc, jid, "tuned", tuned, req, image, cancelled)
            svc.done.emit(jid, "tuned", text, resolved.label)
        except Exception as exc:
            svc.failed.emit(jid, "tuned", message_of(exc))

    # -- comparison over a set ----------------------------------------------------------------
    def _compare(self, jid: int, req: CompareRequest, cache) -> None:
        from finetune_app.core.compare import compare_items, items_from_data

        svc = self.service
        cache.status = lambda text: svc.status.emit(jid, "", text)
        svc.status.emit(jid, "", "reading the data…")
        items = items_from_data(req.data, valid_fraction=req.valid_fraction, seed=req.seed, limit=req.limit,
                                prompt=req.prompt, part=req.part)
        svc.compareItems.emit(jid, items)
        svc.status.emit(jid, "", f"comparing {len(items)} items…")
        result = compare_items(cache, req.model, req.tuned, items, settings=req.settings, image_size=req.image_size,
                               data=req.data, on_row=lambda i, row: svc.compareRow.emit(jid, i, row),
                               cancelled=lambda: svc.is_cancelled(jid))
        svc.compareDone.emit(jid, result)


def _check_vlm(base) -> None:
    if base.kind != "vlm":
        from finetune_app.core.errors import ModelError

        raise ModelError(f"{base.family} reads text only and cannot caption pictures.",
                         "Use Compare for text datasets, or choose a vision-language model.")


def _stream(svc, jid, side, base, req: CaptionRequest, image, cancelled) -> str:
    from finetune_app.core.generate import stream

    pieces = []
    for piece in stream(base, req.prompt, [image], settings=req.settings):
        pieces.append(piece)
        svc.piece.emit(jid, side, piece)
        if cancelled():
            break
    return "".join(pieces).strip()  # what core.generate.generate returns


class InferenceService(QObject):
    """The one place the GUI generates text (caption tests and comparisons), on its own thread.

    Signals (queued to the GUI thread): `started(id)`, `status(id, side, text)`,
    `piece(id, side, text)`, `done(id, side, text, label)`, `failed(id, side, message)` (side ""
    means the whole request), `compareItems(id, items)`, `compareRow(id, i, row)`,
    `compareDone(id, result)`, `ended(id)`, and `queueChanged()`."""

    started = Signal(int)
    status = Signal(int, str, str)
    piece = Signal(int, str, str)
    done = Signal(int, str, str, str)
    failed = Signal(int, str, str)
    compareItems = Signal(int, object)
    compareRow = Signal(int, int, object)
    compareDone = Signal(int, object)
    ended = Signal(int)
    queueChanged = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[int] = []  # queued, in order
        self._running: int | None = None
        self._cancelled: set[int] = set()
        self._next = 1
        self._worker: _Worker | None = None
        self._closed = False
        app = QCoreApplication.instance()
        if app is not None:  # the worker thread must end (and free its MLX state) before the app does
            app.aboutToQuit.connect(self.shutdown)

    # -- GUI side --------------------------------------------------------------------------------
    def submit(self, request) -> int:
        if self._closed:
            raise RuntimeError("the caption service has been shut down")
        with self._lock:
            jid = self._next
            self._next += 1
            self._waiting.append(jid)
        if self._worker is None:
            self._worker = _Worker(self)
            self._worker.start()
        self._queue.put((jid, request))
        self.queueChanged.emit()
        return jid

    def ahead(self, jid: int) -> int | None:
        """How many requests run before this one (None: it is running or gone)."""
        with self._lock:
            if jid not in self._waiting:
                return None
            return self._waiting.index(jid) + (1 if self._running is not None else 0)

    def running(self) -> int | None:
        return self._running

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting) + (1 if self._running is not None else 0)

    def is_busy(self) -> bool:
        return self.pending() > 0

    def cancel(self, jid: int) -> None:
        with self._lock:
            self._cancelled.add(jid)
            if jid in self._waiting:
                self._waiting.remove(jid)
        self.queueChanged.emit()

    def cancel_all(self) -> None:
        with self._lock:
            ids = list(self._waiting) + ([self._running] if self._running is not None else [])
            self._cancelled.update(ids)
            self._waiting.clear()
        self.queueChanged.emit()

    def is_cancelled(self, jid: int) -> bool:
        return jid in self._cancelled or self._closed

    def shutdown(self, timeout_ms: int = 60000) -> bool:
        """Cancel everything and end the worker thread (it releases its MLX state)."""
        if self._closed:
            return True
        self.cancel_all()
        self._closed = True
        if self._worker is None:
            return True
        self._queue.put(None)
        ok = self._worker.wait(timeout_ms)
        return ok

    # -- worker side ---------------------------------------------------------------------------
    def _begin(self, jid: int) -> bool:
        with self._lock:
            if jid in self._cancelled or jid not in self._waiting:
                self._cancelled.discard(jid)
                return False
            self._waiting.remove(jid)
            self._running = jid
        self.started.emit(jid)
        self.queueChanged.emit()
        return True

    def _end(self, jid: int) -> None:
        with self._lock:
            self._running = None
            self._cancelled.discard(jid)
        self.ended.emit(jid)
        self.queueChanged.emit()


# ---- what was dropped ---------------------------------------------------------------------------

def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or bool(QImageReader.imageFormat(str(path)).data())


def qimage_png(image: QImage) -> bytes:
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buf, "PNG")
    return bytes(buf.data())


def wants_drop(mime: QMimeData) -> bool:
    """True when a drop holds pictures to caption (image files, http(s) links or image data)."""
    if mime.hasUrls():
        for url in mime.urls():
            if url.isLocalFile():
                p = Path(url.toLocalFile())
                if p.is_file() and _is_image_file(p):
                    return True
            elif url.scheme() in ("http", "https"):
                return True
    if mime.hasImage():
        return True
    return any(f.startswith("image/") for f in mime.formats())


def inputs_from_mime(mime: QMimeData, *, max_files: int = MAX_DROP_FILES,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[list[ImageInput], list[str]]:
    """(pictures to caption, problems to tell the person about)."""
    inputs: list[ImageInput] = []
    problems: list[str] = []
    urls = list(mime.urls()) if mime.hasUrls() else []
    if len(urls) > max_files:
        return [], [f"{len(urls)} files were dropped; a caption test takes up to {max_files} at a time. "
                    "Drop fewer, or use Compare to run over a whole folder."]
    for url in urls:
        if url.isLocalFile():
            p = Path(url.toLocalFile())
            if not p.exists():
                problems.append(f"{p.name}: the file does not exist.")
            elif p.is_dir():
                problems.append(f"{p.name} is a folder: drop image files, or use Compare to run over a folder.")
            elif not _is_image_file(p):
                problems.append(f"{p.name} is not an image (PNG, JPEG, WebP, GIF, BMP or TIFF).")
            else:
                size = QImageReader(str(p)).size()
                if size.isValid() and size.width() * size.height() > max_pixels:
                    problems.append(f"{p.name} is {size.width():,} × {size.height():,} pixels "
                                    f"({size.width() * size.height() / 1e6:.0f} megapixels), over the "
                                    f"{max_pixels / 1e6:.0f}-megapixel limit for caption tests. Downscale it first.")
                else:
                    inputs.append(ImageInput(path=p.resolve(), label=p.name))
        elif url.scheme() in ("http", "https"):
            name = Path(url.path()).name or url.host()
            inputs.append(ImageInput(url=url.toString(), label=name if is_image_name(name) else url.toString()))
        else:
            problems.append(f"{url.toString()}: only files and http(s) links can be captioned.")
    if not urls:
        if mime.hasImage():
            image = mime.imageData()
            if isinstance(image, QPixmap):
                image = image.toImage()
            if isinstance(image, QImage) and not image.isNull():
                if image.width() * image.height() > max_pixels:
                    problems.append(f"The dropped picture is {image.width():,} × {image.height():,} pixels, over the "
                                    f"{max_pixels / 1e6:.0f}-megapixel limit. Downscale it first.")
                else:
                    inputs.append(ImageInput(data=qimage_png(image), label="dropped picture"))
            else:
                problems.append("The dropped image data could not be read.")
        else:
            fmt = next((f for f in mime.formats() if f.startswith("image/")), None)
            if fmt:
                data = bytes(mime.data(fmt))
                if data:
                    inputs.append(ImageInput(data=data, label=f"dropped {fmt.split('/')[-1].upper()} picture"))
                else:
                    problems.append(f"The dropped {fmt} data is empty.")
            elif mime.hasText() and mime.text().strip():
                problems.append("Only pictures can be captioned here (text was dropped).")
    return inputs, problems


# ---- the fine-tuned side ------------------------------------------------------------------------

class TunedSourcePicker(QComboBox):
    """"Latest checkpoint of the current run", chosen folders, and "Choose a folder…"."""

    problem = Signal(str)
    sourceChanged = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("tunedSource")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.setMinimumContentsLength(26)
        self.addItem("Latest checkpoint of the current run", CURRENT_RUN)
        self.addItem("Choose an adapter or exported model folder…", CHOOSE)
        self.setToolTip("The fine-tuned model: the current run's newest checkpoint, an adapter folder, "
                        "a run folder (its newest checkpoint) or an exported model folder.")
        self._last = 0
        self.activated.connect(self._on_activated)

    def _on_activated(self, index: int) -> None:
        if self.itemData(index) == CHOOSE:
            folder = QFileDialog.getExistingDirectory(self, "Choose an adapter, run or exported model folder")
            if not folder or not self.add_folder(folder):
                self.setCurrentIndex(self._last)
            return
        self._last = index
        self.sourceChanged.emit()

    def add_folder(self, folder: str | Path) -> bool:
        """Add and select a folder; False (and a `problem`) when it is not a usable one."""
        try:
            src = TunedSource.detect(folder)
        except Exception as exc:
            self.problem.emit(message_of(exc))
            return False
        text = {"run": "Run", "adapter": "Adapter", "bundle": "Exported model"}[src.kind] + f": {src.path.name}"
        existing = self.findData(str(src.path))
        if existing < 0:
            self.insertItem(self.count() - 1, text, str(src.path))
            existing = self.findData(str(src.path))
            self.setItemData(existing, str(src.path), Qt.ItemDataRole.ToolTipRole)
        self.setCurrentIndex(existing)
        self._last = existing
        self.sourceChanged.emit()
        return True

    def uses_current_run(self) -> bool:
        return self.currentData() == CURRENT_RUN

    def source(self, run_dir: str | None) -> tuple[TunedSource | None, str]:
        """(the fine-tuned side, or None with the reason)."""
        data = self.currentData()
        if data == CURRENT_RUN:
            if not run_dir:
                return None, "No fine-tuned model yet: start a training run, or choose an adapter folder above."
            return TunedSource("run", Path(run_dir)), ""
        try:
            return TunedSource.detect(data), ""
        except Exception as exc:
            return None, message_of(exc)


# ---- one result ---------------------------------------------------------------------------------

class SideView(QFrame):
    """One model's caption: a header, what it waits for, and the text as it streams in."""

    def __init__(self, title: str, side: str):
        super().__init__()
        self.setObjectName(f"{side}Side")
        self.side = side
        self.title = title
        self.text = ""
        self.label = ""  # the model it came from ("checkpoint step 40")
        self.error = ""
        self.finished = False
        self.header = QLabel(f"<b>{html.escape(title)}</b>")
        self.header.setObjectName("sideHeader")
        self.state = secondary(QLabel("queued"))
        self.state.setObjectName("sideState")
        self.state.setWordWrap(True)
        self.body = QLabel("")
        self.body.setObjectName("sideText")
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.PlainText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        f = self.body.font()
        f.setPointSizeF(f.pointSizeF() + 1)
        self.body.setFont(f)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.setSpacing(2)
        layout.addWidget(self.header)
        layout.addWidget(self.state)
        layout.addWidget(self.body)
        layout.addStretch(1)

    def set_state(self, text: str) -> None:
        if not self.finished:
            self.state.setText(text)
            self.state.setVisible(bool(text))

    def append(self, piece: str) -> None:
        self.raw = getattr(self, "raw", "") + piece
        self.text = clean_output(self.raw)
        self.body.setText(breakable(self.text))
        self.set_state("generating…")

    def finish(self, text: str, label: str) -> None:
        self.text, self.label, self.finished = clean_output(text), label, True
        text = breakable(self.text)
        self.header.setText(f"<b>{html.escape(self.title)}</b> <span style='opacity:.65'>· {html.escape(label)}</span>"
                            if label else f"<b>{html.escape(self.title)}</b>")
        self.body.setText(text if text else "(no text)")
        self.state.hide()

    def fail(self, message: str) -> None:
        self.error, self.finished = message, True
        self.state.setText(message)
        self.state.setStyleSheet("color: #d93025;")
        self.state.show()


class ResultCard(QFrame):
    """A dropped picture with its two captions."""

    def __init__(self, image: ImageInput, request: CaptionRequest, thumb: QPixmap | None):
        super().__init__()
        self.setObjectName("captionCard")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.image = image
        self.request = request
        self.job_id: int | None = None
        self.pic = QLabel()
        self.pic.setObjectName("captionThumb")
        self.pic.setFixedSize(THUMB, THUMB)
        self.pic.setAlignment(Qt.AlignmentFlag.AlignCenter)
        if thumb is not None:
            self.pic.setPixmap(thumb)
        else:
            self.pic.setText("🖼")
        self.name = QLabel(f"<b>{html.escape(image.name)}</b>")
        self.name.setObjectName("captionName")
        self.name.setToolTip(str(image.path or image.url or image.name))
        self.prompt = secondary(QLabel(html.escape(request.prompt)))
        self.prompt.setObjectName("captionPrompt")
        self.prompt.setWordWrap(True)
        self.problem = QLabel("")
        self.problem.setObjectName("captionProblem")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #d93025;")
        self.problem.hide()
        self.sides = {"base": SideView("Base model", "base"), "tuned": SideView("Fine-tuned", "tuned")}
        left = QVBoxLayout()
        left.addWidget(self.pic)
        left.addStretch(1)
        right = QVBoxLayout()
        right.setSpacing(2)
        right.addWidget(self.name)
        right.addWidget(self.prompt)
        right.addWidget(self.problem)
        cols = QHBoxLayout()
        cols.addWidget(self.sides["base"], 1)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.VLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        cols.addWidget(line)
        cols.addWidget(self.sides["tuned"], 1)
        right.addLayout(cols)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(left)
        layout.addLayout(right, 1)

    @property
    def finished(self) -> bool:
        return bool(self.problem.text()) or all(s.finished for s in self.sides.values())

    def set_state(self, side: str, text: str) -> None:
        for name in (SIDES if not side else (side,)):
            self.sides[name].set_state(text)

    def fail(self, side: str, message: str) -> None:
        if side:
            self.sides[side].fail(message)
        else:
            self.problem.setText(message)
            self.problem.show()
            for s in self.sides.values():
                if not s.finished:
                    s.finished = True
                    s.state.hide()

    def to_dict(self) -> dict:
        b, t = self.sides["base"], self.sides["tuned"]
        return {"image": str(self.image.path or self.image.url or self.image.name), "prompt": self.request.prompt,
                "max_tokens": self.request.settings.max_tokens, "temperature": self.request.settings.temperature,
                "base_model": b.label, "base": b.text, "base_error": b.error or self.problem.text(),
                "tuned_model": t.label, "tuned": t.text, "tuned_error": t.error or self.problem.text()}


def thumbnail(image: ImageInput) -> QPixmap | None:
    qimg = QImage()
    if image.path is not None:
        reader = QImageReader(str(image.path))
        reader.setAutoTransform(True)
        size = reader.size()
        if size.isValid():
            reader.setScaledSize(size.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio))
        qimg = reader.read()
    elif image.data:
        qimg.loadFromData(QByteArray(image.data))
    if qimg.isNull():
        return None
    pix = QPixmap.fromImage(qimg)
    if pix.width() > THUMB or pix.height() > THUMB:
        pix = pix.scaled(QSize(THUMB, THUMB), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
    elif pix.width() < THUMB // 2:  # tiny pictures: show them larger, pixelated
        pix = pix.scaled(QSize(THUMB, THUMB), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation)
    return pix


# ---- the panel ----------------------------------------------------------------------------------

class CaptionPanel(QWidget):
    """Drop pictures here (or on the window); both models caption each one.

    `context_fn()` tells the panel about the window: a dict with "model" (the base model source)
    and "run_dir" (the current run's folder), either may be missing."""

    def __init__(self, service: InferenceService | None = None, parent: QWidget | None = None, *,
                 context_fn: Callable[[], dict] | None = None):
        super().__init__(parent)
        self.setObjectName("captionPanel")
        self.setAcceptDrops(True)
        self.service = service or InferenceService(self)
        self.context_fn = context_fn or (lambda: {})
        self.cards: list[ResultCard] = []
        self._by_job: dict[int, ResultCard] = {}

        title = heading("Test captions", 3)
        hint = secondary(QLabel("Drop pictures here or anywhere on the window: files, links from a browser, "
                                "or pictures from other apps. The base model and the fine-tuned one caption each "
                                "picture; training keeps going."))
        hint.setWordWrap(True)
        self.picker = TunedSourcePicker()
        self.picker.problem.connect(lambda text: self.show_message("That folder cannot be used", text, "warning"))
        self.picker.sourceChanged.connect(self.refresh_context)
        self.base_label = secondary(QLabel(""))
        self.base_label.setObjectName("captionBaseModel")
        self.prompt = QLineEdit(DEFAULT_CAPTION_PROMPT)
        self.prompt.setObjectName("captionPrompt")
        self.prompt.setPlaceholderText(DEFAULT_CAPTION_PROMPT)
        self.prompt.setAcceptDrops(False)
        self.max_tokens = QSpinBox()
        self.max_tokens.setObjectName("captionMaxTokens")
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(64)
        self.temperature = QDoubleSpinBox()
        self.temperature.setObjectName("captionTemperature")
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setDecimals(2)
        self.temperature.setToolTip("0 picks the most likely word each time (the same caption every time).")
        self.add_button = QPushButton("Add Pictures…")
        self.add_button.setObjectName("captionAdd")
        self.add_button.clicked.connect(self.choose_files)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("captionCopy")
        self.copy_button.clicked.connect(self.copy_results)
        self.save_button = QPushButton("Save…")
        self.save_button.setObjectName("captionSave")
        self.save_button.clicked.connect(self.choose_save)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setObjectName("captionClear")
        self.clear_button.clicked.connect(self.clear)

        row1 = QHBoxLayout()
        row1.addWidget(QLabel("Fine-tuned:"))
        row1.addWidget(self.picker)
        row1.addSpacing(12)
        row1.addWidget(self.base_label, 1)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("Prompt:"))
        row2.addWidget(self.prompt, 1)
        row2.addWidget(QLabel("Max tokens:"))
        row2.addWidget(self.max_tokens)
        row2.addWidget(QLabel("Temperature:"))
        row2.addWidget(self.temperature)
        buttons = QHBoxLayout()
        self.queue_label = secondary(QLabel(""))
        self.queue_label.setObjectName("captionQueue")
        buttons.addWidget(self.queue_label, 1)
        for b in (self.add_button, self.copy_button, self.save_button, self.clear_button):
            buttons.addWidget(b)

        self.message = Banner("warning")
        self.message.setObjectName("captionMessage")

        self.drop_hint = QLabel("Drop pictures here")
        self.drop_hint.setObjectName("captionDropHint")
        self.drop_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.drop_hint.setMinimumHeight(140)
        self.drop_hint.setStyleSheet("QLabel#captionDropHint { border: 2px dashed palette(mid); border-radius: 10px;"
                                     " font-size: 15pt; color: palette(mid); }")
        self.cards_box = QWidget()
        self.cards_layout = QVBoxLayout(self.cards_box)
        self.cards_layout.setContentsMargins(0, 0, 0, 0)
        self.cards_layout.addWidget(self.drop_hint)
        self.cards_layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setObjectName("captionScroll")
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.cards_box)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(hint)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addLayout(buttons)
        layout.addWidget(self.message)
        layout.addWidget(self.scroll, 1)

        s = self.service
        s.started.connect(self._on_started)
        s.status.connect(self._on_status)
        s.piece.connect(self._on_piece)
        s.done.connect(self._on_done)
        s.failed.connect(self._on_failed)
        s.ended.connect(self._on_ended)
        s.queueChanged.connect(self._update_queue)
        self.refresh_context()

    # -- context -----------------------------------------------------------------------------------
    def context(self) -> dict:
        try:
            return dict(self.context_fn() or {})
        except Exception:
            return {}

    def _base_model(self, ctx: dict, tuned: TunedSource | None) -> str | None:
        """The current run's base for its checkpoints; a chosen adapter's own recorded base;
        else the model chosen in the window."""
        if self.picker.uses_current_run():
            return ctx.get("run_model") or ctx.get("model")
        return (recorded_base(tuned) if tuned is not None else None) or ctx.get("model")

    def request_for(self, image: ImageInput) -> CaptionRequest:
        ctx = self.context()
        tuned, why = self.picker.source(ctx.get("run_dir"))
        model = self._base_model(ctx, tuned)
        settings = GenerationSettings(max_tokens=self.max_tokens.value(), temperature=float(self.temperature.value()))
        return CaptionRequest(image=image, prompt=self.prompt.text().strip() or DEFAULT_CAPTION_PROMPT,
                              settings=settings, model=model, tuned=tuned, no_tuned_reason=why)

    def refresh_context(self) -> None:
        ctx = self.context()
        tuned, _ = self.picker.source(ctx.get("run_dir"))
        model = self._base_model(ctx, tuned)
        self.base_label.setText(f"Base model: {Path(model).name if model and Path(model).exists() else model}"
                                if model else "Base model: none chosen yet")

    def showEvent(self, event) -> None:
        self.refresh_context()
        super().showEvent(event)

    # -- adding pictures ---------------------------------------------------------------------------
    def show_message(self, title: str, text: str, kind: str = "warning") -> None:
        self.message.show_message(title, text, kind)

    def add_inputs(self, inputs: list[ImageInput], problems: list[str] | None = None) -> list[ResultCard]:
        problems = list(problems or [])
        if problems:
            n = len(problems)
            self.show_message("Some of the drop was not captioned" if inputs else "Nothing to caption",
                              "\n".join(problems[:8]) + (f"\n… and {n - 8} more" if n > 8 else ""), "warning")
        elif inputs:
            self.message.hide()
        new = []
        self.refresh_context()
        for image in inputs:
            request = self.request_for(image)
            card = ResultCard(image, request, thumbnail(image))
            self.cards.append(card)
            self.cards_layout.insertWidget(self.cards_layout.count() - 1, card)
            jid = self.service.submit(request)
            card.job_id = jid
            self._by_job[jid] = card
            new.append(card)
        self.drop_hint.setVisible(not self.cards)
        self._update_queue()
        if new:
            self.scroll.ensureWidgetVisible(new[0])
        return new

    def add_paths(self, paths) -> list[ResultCard]:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(Path(p).absolute())) for p in paths])
        return self.handle_mime(mime)

    def handle_mime(self, mime: QMimeData) -> list[ResultCard]:
        inputs, problems = inputs_from_mime(mime)
        if not inputs and not problems:
            problems = ["Nothing in the drop could be read as a picture."]
        return self.add_inputs(inputs, problems)

    def choose_files(self) -> None:
        patterns = " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
        files, _ = QFileDialog.getOpenFileNames(self, "Choose pictures to caption", "", f"Pictures ({patterns});;All files (*)")
        if files:
            self.add_paths(files)

    # -- drag and drop onto the panel ---------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        mime = event.mimeData()
        if mime.hasUrls() or mime.hasImage() or mime.hasText() or any(f.startswith("image/") for f in mime.formats()):
            event.acceptProposedAction()  # anything else gets a message on drop, not a refusal

    def dragMoveEvent(self, event) -> None:
        event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        event.acceptProposedAction()
        self.handle_mime(event.mimeData())

    # -- service signals ---------------------------------------------------------------------------
    def _card(self, jid: int) -> ResultCard | None:
        return self._by_job.get(jid)

    def _on_started(self, jid: int) -> None:
        card = self._card(jid)
        if card is not None:
            card.set_state("base", "starting…")
            card.set_state("tuned", "waiting for the base model's caption…")

    def _on_status(self, jid: int, side: str, text: str) -> None:
        card = self._card(jid)
        if card is not None and text:
            card.set_state(side, text)

    def _on_piece(self, jid: int, side: str, piece: str) -> None:
        card = self._card(jid)
        if card is not None:
            card.sides[side].append(piece)

    def _on_done(self, jid: int, side: str, text: str, label: str) -> None:
        card = self._card(jid)
        if card is not None:
            card.sides[side].finish(text, label)

    def _on_failed(self, jid: int, side: str, message: str) -> None:
        card = self._card(jid)
        if card is not None:
            card.fail(side, message)

    def _on_ended(self, jid: int) -> None:
        card = self._card(jid)
        if card is not None:
            for s in card.sides.values():
                if not s.finished:
                    s.fail("cancelled")
        self._update_queue()

    def _update_queue(self) -> None:
        waiting = 0
        for card in self.cards:
            if card.job_id is None or card.finished:
                continue
            ahead = self.service.ahead(card.job_id)
            if ahead is not None:
                waiting += 1
                card.set_state("", f"queued ({ahead} ahead)" if ahead else "queued (next)")
        busy = self.service.pending()
        self.queue_label.setText(f"{busy} picture{'s' if busy != 1 else ''} in the queue" if busy else "")

    # -- results -----------------------------------------------------------------------------------
    def is_busy(self) -> bool:
        return any(not c.finished for c in self.cards)

    def results(self) -> list[dict]:
        return [c.to_dict() for c in self.cards]

    def results_text(self) -> str:
        blocks = []
        for r in self.results():
            base = r["base"] or f"({r['base_error'] or 'no caption'})"
            tuned = r["tuned"] or f"({r['tuned_error'] or 'no caption'})"
            blocks.append(f"{r['image']}\n  prompt: {r['prompt']}\n  base ({r['base_model'] or 'base model'}): {base}\n"
                          f"  fine-tuned ({r['tuned_model'] or 'fine-tuned'}): {tuned}")
        return "\n\n".join(blocks)

    def copy_results(self) -> str:
        text = self.results_text()
        QGuiApplication.clipboard().setText(text)
        return text

    def save(self, path: str | Path) -> Path:
        """CSV or JSON (by the suffix) of every result."""
        from finetune_app.core import atomic

        path = Path(path)
        rows = self.results()
        if path.suffix.lower() == ".csv":
            out = io.StringIO()
            w = csv.DictWriter(out, fieldnames=RESULT_FIELDS)
            w.writeheader()
            w.writerows(rows)
            atomic.write_text(path, out.getvalue())
        else:
            atomic.write_text(path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return path

    def choose_save(self) -> None:
        if not self.cards:
            self.show_message("Nothing to save", "Drop some pictures first.", "info")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save captions", "captions.csv", "CSV (*.csv);;JSON (*.json)")
        if path:
            try:
                self.save(path)
            except Exception as exc:
                self.show_message("The captions could not be saved", message_of(exc), "error")

    def clear(self) -> None:
        for card in self.cards:
            if card.job_id is not None and not card.finished:
                self.service.cancel(card.job_id)
            card.setParent(None)
            card.deleteLater()
        self.cards.clear()
        self._by_job.clear()
        self.message.hide()
        self.drop_hint.show()
        self._update_queue()

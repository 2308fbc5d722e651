"""The dataset screen: open a folder or file, browse its rows, see what is wrong with them.

Image datasets show a lazily loaded thumbnail grid (dataset_model.py); text datasets a list of
conversations with the selected one rendered in full. Beside it: the validation report (every
problem clickable to its row), the token-length histogram (counted with the chosen model's own
tokenizer and chat template, or a rough character estimate until a model is chosen, labelled as
such) and the train/validation split sizes. Opening and checking run on a background task.

A row (a flagged one most often: missing picture, empty caption) opens in the row editor
(row_editor.py: Edit Row…, double-click or Enter); saving rewrites that row in its file and the
dataset is checked again, the row staying selected, so a fixed row loses its flag.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QItemSelectionModel, QModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QStyle,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from finetune_app.ui.dataset_model import THUMB, DatasetListModel, ThumbnailDelegate
from finetune_app.ui.plots import BLUE, ORANGE, ThemedPlot
from finetune_app.ui.widgets import Banner, heading, message_of, secondary
from finetune_app.ui.workers import DatasetCheck, ModelChoice, Task, check_dataset

MAX_LISTED_PROBLEMS = 2000


class DatasetBrowser(QWidget):
    """Signals: `checked(DatasetCheck)` when a dataset is open and validated; `failed(str)`."""

    checked = Signal(object)
    failed = Signal(str)
    opening = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("datasetBrowser")
        self.check: DatasetCheck | None = None
        self.model_choice: ModelChoice | None = None
        self.valid_fraction, self.seed, self.max_length = 0.1, 0, None
        self.train_rows: list[int] = []
        self.valid_rows: list[int] = []
        self._task: Task | None = None
        self._path: str | None = None
        self._row_lookup: dict | None = None
        self._reselect: int | None = None  # the row to select again after a re-check (an edited row)
        self.editor = None  # the open RowEditor, if any

        # -- header --------------------------------------------------------------------------
        self.title = heading("No dataset", 3)
        self.title.setObjectName("datasetTitle")
        self.subtitle = secondary(QLabel("Open a folder or file, or drop one on the window."))
        self.subtitle.setObjectName("datasetSubtitle")
        self.subtitle.setWordWrap(True)
        self.open_button = QToolButton()
        self.open_button.setObjectName("openDatasetButton")
        self.open_button.setText("Open Dataset…")
        self.open_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.open_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)  # file or folder
        menu = QMenu(self.open_button)
        menu.addAction("Open File (JSONL, CSV, JSON…)…", self.choose_file)
        menu.addAction("Open Folder…", self.choose_folder)
        self.open_button.setMenu(menu)
        head = QHBoxLayout()
        titles = QVBoxLayout()
        titles.addWidget(self.title)
        titles.addWidget(self.subtitle)
        head.addLayout(titles, 1)
        head.addWidget(self.open_button, 0, Qt.AlignmentFlag.AlignTop)

        self.error = Banner("error")
        self.error.setObjectName("datasetError")

        # -- rows ----------------------------------------------------------------------------
        self.model = DatasetListModel(parent=self)
        self.grid = QListView()
        self.grid.setObjectName("datasetGrid")
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setUniformItemSizes(True)  # the view never measures every row
        self.grid.setLayoutMode(QListView.LayoutMode.Batched)
        self.grid.setBatchSize(2000)
        self.grid.setSpacing(4)
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.grid.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.grid.setItemDelegate(ThumbnailDelegate(THUMB, self.grid))
        self.grid.setModel(self.model)
        self.grid.setAcceptDrops(False)
        self.grid.selectionModel().currentChanged.connect(self._show_row)

        self.conversations = QListView()
        self.conversations.setObjectName("conversationList")
        self.conversations.setUniformItemSizes(True)
        self.conversations.setModel(self.model)
        self.conversations.setAlternatingRowColors(True)
        self.conversations.setAcceptDrops(False)
        self.conversations.selectionModel().currentChanged.connect(self._show_row)
        self.conversation = QTextBrowser()
        self.conversation.setObjectName("conversationView")
        self.conversation.setOpenLinks(False)
        text_split = QSplitter(Qt.Orientation.Vertical)
        text_split.addWidget(self.conversations)
        text_split.addWidget(self.conversation)
        text_split.setSizes([300, 260])

        self.empty = QLabel("Drop a dataset folder or file here\nor choose Open Dataset…\n\n"
                            "Image + caption folders (captions.csv, metadata.jsonl), JSONL chat / "
                            "Alpaca / ShareGPT rows, CSV, Hugging Face datasets")
        self.empty.setObjectName("datasetEmpty")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setFrameShape(QFrame.Shape.StyledPanel)
        secondary(self.empty)

        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.grid)
        self.stack.addWidget(text_split)
        # preference rows (DPO, IPO, ORPO): the list over prompt | chosen | rejected side by side
        from finetune_app.ui.pair_view import PairView

        self.pair_list = QListView()
        self.pair_list.setObjectName("pairList")
        self.pair_list.setUniformItemSizes(True)
        self.pair_list.setIconSize(QSize(40, 40))
        self.pair_list.setModel(self.model)
        self.pair_list.setAlternatingRowColors(True)
        self.pair_list.setAcceptDrops(False)
        self.pair_list.selectionModel().currentChanged.connect(self._show_row)
        self.pair_view = PairView()
        pair_split = QSplitter(Qt.Orientation.Vertical)
        pair_split.addWidget(self.pair_list)
        pair_split.addWidget(self.pair_view)
        pair_split.setSizes([260, 300])
        self.stack.addWidget(pair_split)

        # -- report panel --------------------------------------------------------------------
        self.counts = QLabel("–")
        self.counts.setObjectName("datasetCounts")
        self.counts.setWordWrap(True)
        self.check_progress = QProgressBar()
        self.check_progress.setObjectName("datasetCheckProgress")
        self.check_progress.setTextVisible(True)
        # its place kept while hidden: showing it for a recount must not resize (repaint) the histogram
        keep = self.check_progress.sizePolicy()
        keep.setRetainSizeWhenHidden(True)
        self.check_progress.setSizePolicy(keep)
        self.check_progress.hide()
        self.splits = QLabel("")
        self.splits.setObjectName("datasetSplits")
        self.splits.setWordWrap(True)
        self.histogram = ThemedPlot("Token lengths", left="rows", bottom="tokens per row")
        self.histogram.setObjectName("tokenHistogram")
        self.histogram.setMinimumHeight(170)
        self.histogram.hold_paint()  # nothing to draw until a dataset is checked (see _fill_histogram)
        self.histogram_note = secondary(QLabel(""))
        self.histogram_note.setObjectName("histogramNote")
        self.histogram_note.setWordWrap(True)
        self._bars: pg.BarGraphItem | None = None
        self._max_line: pg.InfiniteLine | None = None
        self.problems = QListWidget()
        self.problems.setObjectName("problemList")
        self.problems.setWordWrap(True)
        self.problems.itemActivated.connect(self._problem_clicked)
        self.problems.itemClicked.connect(self._problem_clicked)
        self.details = QLabel("")
        self.details.setObjectName("rowDetails")
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.edit_button = QPushButton("Edit Row…")
        self.edit_button.setObjectName("editRowButton")
        self.edit_button.setToolTip("Fix this row's caption or picture in its file (double-click or Enter on a row).")
        self.edit_button.setEnabled(False)
        self.edit_button.clicked.connect(lambda: self.edit_row())
        self.grid.activated.connect(lambda index: self.edit_row(index.row()))

        side = QWidget()
        side.setObjectName("datasetReportPanel")
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(heading("Check", 1))
        side_layout.addWidget(self.counts)
        side_layout.addWidget(self.check_progress)
        side_layout.addWidget(self.splits)
        side_layout.addWidget(self.histogram, 2)
        side_layout.addWidget(self.histogram_note)
        side_layout.addWidget(heading("Problems", 1))
        side_layout.addWidget(self.problems, 2)
        side_layout.addWidget(self.details)
        side_layout.addWidget(self.edit_button, 0, Qt.AlignmentFlag.AlignLeft)
        side.setMinimumWidth(320)
        side.setMaximumWidth(460)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.stack)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(self.error)
        layout.addWidget(split, 1)

    # -- opening -------------------------------------------------------------------------------
    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open Dataset Folder", self._start_dir())
        if path:
            self.open_path(path)

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open Dataset File", self._start_dir(),
            "Datasets (*.jsonl *.json *.csv *.tsv *.parquet *.arrow);;All files (*)")
        if path:
            self.open_path(path)

    def _start_dir(self) -> str:
        return str(Path(self._path).parent) if self._path else str(Path.home())

    def open_path(self, path: str | Path) -> None:
        """Open and check a dataset in the background (`checked` or `failed` follows)."""
        self._path = str(path)
        self.error.hide()
        self.clear_dataset()  # nothing of the previous dataset stays under the new name
        self.title.setText(Path(path).name or str(path))
        self.subtitle.setText(f"Opening {path}…")
        self.opening.emit(str(path))
        self._start_check(str(path))

    def clear_dataset(self) -> None:
        """Forget the open dataset: rows, check, problems, row detail, histogram, split."""
        self.check = None
        self._row_lookup = None
        self.train_rows, self.valid_rows = [], []
        self.model.set_dataset(None, {})
        self.stack.setCurrentIndex(0)
        self.conversation.clear()
        self.problems.clear()
        self.details.setText("")
        self.edit_button.setEnabled(False)
        self.counts.setText("–")
        self.splits.setText("")
        self.histogram_note.setText("")
        self._fill_histogram()  # with no check: removes the bars

    def set_model(self, choice: ModelChoice | None) -> None:
        """Token lengths are the model's: recount with its tokenizer when one is chosen."""
        self.model_choice = choice
        if self.check is not None:
            self._start_check(self.check.dataset)
        elif self._task is not None and self._path:  # still opening without the model: count with it
            self._start_check(self._path)

    def _start_check(self, target) -> None:
        if self._task is not None:
            self._task.cancel()
        model = self.model_choice
        self.check_progress.setRange(0, 0)
        self.check_progress.setFormat("Opening…" if isinstance(target, str) else "Counting tokens…")
        self.check_progress.show()
        task = Task(lambda t: check_dataset(target, model, t), name="dataset-check", uses_mlx=True, parent=self)
        task.progressed.connect(self._on_progress)
        task.succeeded.connect(self._on_checked)
        task.failed.connect(self._on_failed)
        self._task = task
        task.start()

    def is_busy(self) -> bool:
        return self._task is not None

    def _on_progress(self, value) -> None:
        if self.sender() is not self._task:
            return
        kind, done, total = value
        if kind == "checking" and total:
            self.check_progress.setRange(0, total)
            self.check_progress.setValue(done)
            what = "Counting tokens and checking rows" if self.model_choice else "Checking rows"
            self.check_progress.setFormat(f"{what}… %v of %m")

    def _on_failed(self, exc) -> None:
        if self.sender() is not self._task:
            return
        self._task = None
        self._reselect = None
        self.check_progress.hide()
        text = message_of(exc)
        self.error.show_message("This dataset cannot be opened", text)
        self.subtitle.setText(f"Could not open {self._path or ''}")
        self.failed.emit(text)

    def _on_checked(self, check: DatasetCheck) -> None:
        if self.sender() is not self._task:
            return
        self._task = None
        self.check_progress.hide()
        first = self.check is None or self.check.dataset is not check.dataset
        self.check = check
        self._row_lookup = None
        ds, report = check.dataset, check.report
        self.title.setText(Path(str(ds.path)).name or str(ds.path))
        self.subtitle.setText(ds.describe())
        row_problems: dict[int, str] = {}
        self._problem_at = {}  # row -> its first located error (the pair view names file, line and field)
        usable = set(report.usable_indices)
        for p in report.errors:
            row = self.row_of(p)
            if row is not None and row not in usable:
                row_problems.setdefault(row, p.message)
                self._problem_at.setdefault(row, p)
        if first:
            self.model.set_dataset(ds, row_problems)
            self.stack.setCurrentIndex(3 if ds.format == "preference" else 1 if ds.has_images else 2)
        else:
            self.model.set_problems(row_problems)
        self._fill_problems()
        self.update_split()
        self._fill_histogram()
        if self._reselect is not None and 0 <= self._reselect < len(ds):
            self.select_row(self._reselect)
        self._reselect = None
        self.checked.emit(check)

    # -- report --------------------------------------------------------------------------------
    def set_split_params(self, valid_fraction: float, seed: int) -> None:
        if (valid_fraction, seed) != (self.valid_fraction, self.seed):
            self.valid_fraction, self.seed = valid_fraction, seed
            self.update_split()

    def set_max_length(self, max_length: int | None) -> None:
        if max_length != self.max_length:
            self.max_length = max_length
            self._fill_histogram()

    def update_split(self) -> None:
        from finetune_app.core.data import split

        if self.check is None:
            return
        report = self.check.report
        try:
            vf = self.valid_fraction if isinstance(self.valid_fraction, float) and 0 <= self.valid_fraction < 1 else 0.1
            self.train_rows, self.valid_rows = split(report, valid_fraction=vf, seed=int(self.seed or 0))
            self._valid_set = set(self.valid_rows)
            self._train_set = set(self.train_rows)
        except Exception as exc:
            self.splits.setText(f"Split: {message_of(exc)}")
            return
        how = ("the dataset's own split" if report.dataset is not None and report.dataset.splits
               else f"{vf:.0%} held out, seed {self.seed}")
        self.splits.setText(f"<b>Training</b> {len(self.train_rows):,} rows · <b>Validation</b> "
                            f"{len(self.valid_rows):,} rows <span style='opacity:.7'>({how})</span>")
        r = report
        dropped = r.rows_found - r.rows_usable
        self.counts.setText(
            f"<b>{r.rows_found:,}</b> rows found · <b>{r.rows_usable:,}</b> usable"
            + (f" · <span style='color:#d93025'><b>{dropped:,}</b> will be skipped</span>" if dropped else "")
            + f"<br>{len(r.errors):,} error(s), {len(r.warnings):,} warning(s)"
            + (f" · {len(r.duplicates):,} duplicate(s)" if r.duplicates else ""))

    def _fill_problems(self) -> None:
        self.problems.clear()
        report = self.check.report
        style = self.style()
        icons = {"error": style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical),
                 "warning": style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)}
        if not report.problems:
            item = QListWidgetItem(style.standardIcon(QStyle.StandardPixmap.SP_DialogApplyButton),
                                   "No problems: every row can be used.")
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.problems.addItem(item)
            return
        for p in report.problems[:MAX_LISTED_PROBLEMS]:
            where = Path(p.file).name + (f" line {p.line}" if p.line is not None else "")
            field = f" [{p.field}]" if p.field else ""
            item = QListWidgetItem(icons.get(p.severity, icons["warning"]), f"{where}{field}: {p.message}")
            item.setData(Qt.ItemDataRole.UserRole, self.row_of(p))
            item.setToolTip(p.message)
            self.problems.addItem(item)
        if len(report.problems) > MAX_LISTED_PROBLEMS:
            more = QListWidgetItem(f"… and {len(report.problems) - MAX_LISTED_PROBLEMS:,} more "
                                   "(run `finetune-app data check --json` for all)")
            more.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.problems.addItem(more)

    def _fill_histogram(self) -> None:
        """The bars, the max-length line, the ranges and the note, painted once: the plot is held
        while they change and released in the next turn, after the note's new height has relaid
        the panel (before, the empty axes painted when a dataset opened, the bars at one size, then
        again at the next: 25-90 ms each on this box; issue 18)."""
        plot = self.histogram
        plot.hold_paint()
        if self._bars is not None:
            plot.removeItem(self._bars)
            self._bars = None
        if self._max_line is not None:
            plot.removeItem(self._max_line)
            self._max_line = None
        if self.check is None:
            return
        bins = self.check.report.histogram(bins=20)
        if not bins:
            self.histogram_note.setText("No usable rows to count.")
            return
        x0 = [b["from"] for b in bins]
        x1 = [b["to"] + 1 for b in bins]
        heights = [b["count"] for b in bins]
        gap = [0.06 * (b - a) for a, b in zip(x0, x1)]  # a little air between bars, in any theme
        self._bars = pg.BarGraphItem(x0=[a + g for a, g in zip(x0, gap)], x1=[b - g for b, g in zip(x1, gap)],
                                     height=heights, brush=pg.mkBrush(BLUE), pen=pg.mkPen(None))
        plot.addItem(self._bars)
        lo, hi = min(x0), max(x1)
        if hi - lo < 10:  # one length (or nearly): show it as a bar among its neighbours
            pad = max(5, (10 - (hi - lo)) // 2 + 1)
            lo, hi = max(0, lo - pad), hi + pad
        if self.max_length:
            self._max_line = pg.InfiniteLine(pos=self.max_length, angle=90,
                                             pen=pg.mkPen(ORANGE, width=2, style=Qt.PenStyle.DashLine))
            plot.addItem(self._max_line)
        span = max(1, hi - lo)
        right = max(hi, self.max_length) if self.max_length and self.max_length <= hi + 3 * span else hi
        plot.setXRange(lo - span * 0.05, right + span * 0.05, padding=0)
        plot.setYRange(0, max(heights) * 1.1, padding=0)
        lengths = list(self.check.report.token_lengths.values())
        summary = (f"min {min(lengths):,}, median {sorted(lengths)[len(lengths) // 2]:,}, "
                   f"max {max(lengths):,} tokens")
        if self.check.exact_tokens:
            plot.set_title(f"Token lengths ({self.check.counted_with} tokenizer)")
            note = f"{summary}, counted with the model's chat template and image tokens."
        else:
            plot.set_title("Token lengths (rough estimate)")
            note = (f"{summary}. Rough estimate: characters ÷ 4, images not counted. "
                    "Choose a model to count exactly.")
        if self.max_length:
            over = sum(1 for n in lengths if n > self.max_length)
            note += (f" {over:,} row(s) longer than the max length {self.max_length:,}." if over
                     else f" All rows fit the max length {self.max_length:,}.")
        self.histogram_note.setText(note)
        QTimer.singleShot(0, plot, plot.release_paint)

    # -- rows ------------------------------------------------------------------------------------
    def row_of(self, problem) -> int | None:
        """The dataset row a problem is about (by file and line), or None (a file-level problem)."""
        if self.check is None:
            return None
        ds = self.check.dataset
        if self._row_lookup is None:
            lookup = {}
            for i, ref in enumerate(ds.rows):
                name = ds.sources[ref.source].name
                lookup[(name, ref.line) if ref.line is not None else (name, "item", ref.key)] = i
            self._row_lookup = lookup
        if problem.line is not None:
            return self._row_lookup.get((problem.file, problem.line))
        m = re.match(r"item (\d+):", problem.message)
        return self._row_lookup.get((problem.file, "item", int(m.group(1)) - 1)) if m else None

    def current_view(self) -> QListView:
        return {1: self.grid, 3: self.pair_list}.get(self.stack.currentIndex(), self.conversations)

    def select_row(self, row: int) -> None:
        view = self.current_view()
        index = self.model.index(row)
        view.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        view.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    def _problem_clicked(self, item: QListWidgetItem) -> None:
        row = item.data(Qt.ItemDataRole.UserRole)
        if row is not None:
            self.select_row(int(row))

    def _show_row(self, current: QModelIndex, _previous=None) -> None:
        if not current.isValid():
            return
        sample = current.data(DatasetListModel.SampleRole)
        problem = current.data(DatasetListModel.ProblemRole)
        row = current.row()
        part = ("validation" if row in getattr(self, "_valid_set", ()) else
                "training" if row in getattr(self, "_train_set", ()) else "skipped")
        ref = self.check.dataset.rows[row] if self.check else None
        where = ""
        if ref is not None:
            name = Path(self.check.dataset.sources[ref.source].name).name
            where = f"{name} line {ref.line}" if ref.line is not None else f"{name} item {ref.key + 1}"
        lines = [f"<b>Row {row + 1:,}</b> · {html.escape(where)} · {part}"]
        if sample is not None and sample.images:
            lines.append(f"Image: {html.escape(sample.images[0].describe())}")
            lines.append(f"Caption: <i>{html.escape(sample.answer)}</i>")
        tokens = self.check.report.token_lengths.get(row) if self.check else None
        if tokens:
            lines.append(f"Tokens: {tokens:,}{'' if self.check.exact_tokens else ' (estimate)'}")
        if problem:
            lines.append(f"<span style='color:#d93025'>⚠ {html.escape(problem)}</span>")
        self.details.setText("<br>".join(lines))
        self.edit_button.setEnabled(self.editable(row))
        if self.stack.currentIndex() == 2:
            self.conversation.setHtml(_conversation_html(sample, problem))
        elif self.stack.currentIndex() == 3:
            self._show_pair(row, sample, problem)

    def _show_pair(self, row: int, sample, problem: str | None) -> None:
        from PySide6.QtGui import QPixmap

        from finetune_app.ui.dataset_model import load_thumbnail
        from finetune_app.ui.pair_view import IMAGE_EDGE, raw_fields

        located = getattr(self, "_problem_at", {}).get(row)
        if located is not None:
            where = Path(located.file).name + (f" line {located.line}" if located.line is not None else "")
            problem = f"{where}" + (f" [{located.field}]" if located.field else "") + f": {located.message}"
        pixmap = None
        if sample is not None and sample.images:
            image = load_thumbnail(sample.images[0], IMAGE_EDGE)
            pixmap = QPixmap.fromImage(image) if not image.isNull() else None
        raw = raw_fields(self.check.dataset, row) if sample is None and self.check else None
        self.pair_view.show_row(sample, problem, raw, pixmap)


    # -- fixing a row ----------------------------------------------------------------------------
    def editable(self, row: int) -> bool:
        from finetune_app.ui.row_editor import row_fields

        if self.check is None or self._task is not None:
            return False
        try:
            row_fields(self.check.dataset, row)
        except Exception:
            return False
        return True

    def current_row(self) -> int | None:
        index = self.current_view().currentIndex()
        return index.row() if index.isValid() else None

    def edit_row(self, row: int | None = None, *, modal: bool = True):
        """Open the row editor on a row (default: the selected one). Saving re-checks the dataset.
        Returns the editor (not yet closed when modal=False: tests, and a window that stays usable)."""
        from finetune_app.ui.row_editor import RowEditor, row_fields

        row = self.current_row() if row is None else row
        if row is None or self.check is None or self._task is not None:
            return None
        try:
            fields = row_fields(self.check.dataset, row)
        except Exception as exc:
            self.error.show_message("This row cannot be edited here", message_of(exc), "warning")
            return None
        problem = self.model.index(row).data(DatasetListModel.ProblemRole)
        editor = RowEditor(fields, row, problem, self)
        editor.accepted.connect(lambda: self._row_saved(row))
        self.editor = editor
        if modal:
            editor.exec()
        else:
            editor.show()
        return editor

    def _row_saved(self, row: int) -> None:
        """The file changed: open it again (its rows may have moved) and select the row again."""
        self.editor = None
        if self._path:
            self._reselect = row
            self.subtitle.setText("Checking again after the edit…")
            self._start_check(self._path)


def _conversation_html(sample, problem) -> str:
    if sample is None:
        return f"<p style='color:#d93025'>⚠ {html.escape(problem or 'This row cannot be read.')}</p>"
    out = []
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    for t in sample.turns:
        colour = {"assistant": "#2ea043", "system": "#8b949e"}.get(t.role, "#3d8bfd")
        text = html.escape(t.text).replace("\n", "<br>")
        img = f" <i>[{t.n_images} image{'s' if t.n_images > 1 else ''}]</i>" if t.n_images else ""
        out.append(f"<p><b style='color:{colour}'>{names.get(t.role, t.role)}</b>{img}<br>{text}</p>")
    if problem:
        out.append(f"<p style='color:#d93025'>⚠ {html.escape(problem)}</p>")
    return "".join(out)

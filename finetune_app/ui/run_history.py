"""The run history: every recorded run, filtered and sorted; one run's settings, curves and
samples; the loss curves of several runs overlaid; resume, duplicate, reveal and delete.

Standalone widget over `finetune_app.core.runs` (the same records `finetune-app runs` shows).
Integration in the main window:

    history = RunHistoryView()                 # reads $FINETUNE_DATA_DIR / the app-data database
    tabs.addTab(history, "History")
    history.duplicate_config.connect(form.set_config)          # a TrainConfig, output left empty
    history.resume_requested.connect(start_resume)             # run id; see resume_training_config()
    history.refresh()                                          # at start-up: marks dead runs interrupted

`start_resume(run_id)` would do `cfg = resume_training_config(run_id)` and start
`TrainingRun(cfg, resume=True)`; the training worker records runs by adding
`RunRecorder(config, resume=resume)` to the Trainer's listeners.
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    QUrl,
    Signal,
)
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core import runs as core_runs
from finetune_app.core.config import TrainConfig
from finetune_app.ui.plots import BLUE, GREEN, GREY, ORANGE, PURPLE, ThemedPlot
from finetune_app.ui.widgets import Banner, format_bytes, format_duration, message_of

RUN_COLOURS = [BLUE, ORANGE, GREEN, PURPLE, "#e5534b", "#39c5cf", "#d4a72c", GREY]
STATUS_COLOURS = {"running": "#3d8bfd", "finished": "#2ea043", "stopped": "#d4a72c", "failed": "#e5534b",
                  "interrupted": "#f28e2b"}
AUTO_REFRESH_MS = 3000  # while a run is training


def _num(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "–"


def _short(path: str) -> str:
    if not path:
        return "–"
    p = Path(path)
    return p.name if (p.is_absolute() or path.startswith((".", "~"))) else path


def config_of(record) -> TrainConfig:
    """The run's settings as a TrainConfig (settings this version does not know are dropped)."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in (record.config or {}).items() if k in known})


def resume_training_config(run_id: int, *, store=None) -> TrainConfig:
    """For the main window: check that the run can continue and return the config to resume with
    (`TrainingRun(cfg, resume=True)`). Raises FinetuneError with the reason when it cannot."""
    own = store is None
    store = store or core_runs.open_store()
    try:
        rec = core_runs.resolve_run(store, run_id)
        core_runs.check_can_resume(store, rec)
        return core_runs.resume_config(rec)
    finally:
        if own:
            store.close()


# ---- the table ----------------------------------------------------------------------------------

class RunTableModel(QAbstractTableModel):
    COLUMNS = ("ID", "Run", "Status", "Step", "Loss", "Val loss", "Best val", "Model", "Dataset", "Started",
               "Time", "Disk", "Folder")
    SortRole = Qt.ItemDataRole.UserRole + 1
    RunIdRole = Qt.ItemDataRole.UserRole + 2

    def __init__(self, parent=None):
        super().__init__(parent)
        self.summaries: list = []

    def set_summaries(self, summaries) -> None:
        self.beginResetModel()
        self.summaries = list(summaries)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.summaries)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def record(self, row: int):
        return self.summaries[row].record

    def _cell(self, s, col: int):
        r = s.record
        return [
            (str(r.id), r.id),
            (r.name, r.name.lower()),
            (r.status + (" ↻" if s.resumable else ""), r.status),
            (f"{r.step}/{r.total_steps}", r.step),
            (_num(r.last_loss), r.last_loss if r.last_loss is not None else float("inf")),
            (_num(r.last_val_loss), r.last_val_loss if r.last_val_loss is not None else float("inf")),
            (_num(r.best_val_loss), r.best_val_loss if r.best_val_loss is not None else float("inf")),
            (_short(r.model), r.model.lower()),
            (_short(r.data), r.data.lower()),
            (_when(r.started_at), r.started_at or 0.0),
            (format_duration(r.duration), r.duration or 0.0),
            (format_bytes(s.disk_bytes), s.disk_bytes),
            (r.run_dir, r.run_dir),
        ][col]

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        s = self.summaries[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._cell(s, col)[0]
        if role == self.SortRole:
            return self._cell(s, col)[1]
        if role == self.RunIdRole:
            return s.record.id
        if role == Qt.ItemDataRole.ForegroundRole and self.COLUMNS[col] == "Status":
            return QColor(STATUS_COLOURS.get(s.record.status, GREY))
        if role == Qt.ItemDataRole.ToolTipRole:
            r = s.record
            tip = f"{r.run_dir}\nmodel: {r.model}\ndataset: {r.data}"
            return tip + (f"\n\n{r.message}" if r.message else "")
        if role == Qt.ItemDataRole.TextAlignmentRole and self.COLUMNS[col] in ("ID", "Step", "Loss", "Val loss",
                                                                                "Best val", "Time", "Disk"):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class RunFilterProxy(QSortFilterProxyModel):
    """Text filter (name, model, dataset, folder, id) and a status filter; sorts on raw values."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""
        self.status = ""
        self.setSortRole(RunTableModel.SortRole)

    def _change(self, **values) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt 6.10+ (invalidateFilter is deprecated there)
            self.beginFilterChange()
            self.__dict__.update(values)
            self.endFilterChange()
        else:
            self.__dict__.update(values)
            self.invalidateFilter()

    def set_text(self, text: str) -> None:
        self._change(text=text.strip().lower())

    def set_status(self, status: str) -> None:
        self._change(status=status or "")

    def filterAcceptsRow(self, row: int, parent) -> bool:
        model = self.sourceModel()
        r = model.record(row)
        if self.status and r.status != self.status:
            return False
        if not self.text:
            return True
        hay = " ".join([str(r.id), r.name, r.model, r.data, r.run_dir, r.status]).lower()
        return all(word in hay for word in self.text.split())

    def lessThan(self, left, right) -> bool:
        a, b = left.data(self.sortRole()), right.data(self.sortRole())
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)


# ---- the view -----------------------------------------------------------------------------------

class RunHistoryView(QWidget):
    duplicate_config = Signal(object)  # TrainConfig with output cleared: fill the form with it
    resume_requested = Signal(int)  # run id
    runs_deleted = Signal(list)  # run ids
    history_repaired = Signal(str)  # what open_store did to a damaged or read-only run database

    def __init__(self, db_path: str | Path | None = None, parent: QWidget | None = None, *,
                 confirm_delete: bool = True):
        super().__init__(parent)
        self.setObjectName("runHistory")
        self.db_path = Path(db_path) if db_path else None
        self.confirm_delete = confirm_delete
        self.model = RunTableModel(self)
        self.proxy = RunFilterProxy(self)
        self.proxy.setSourceModel(self.model)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter runs (name, model, dataset, folder)…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.proxy.set_text)
        self.status_box = QComboBox()
        self.status_box.addItem("All statuses", "")
        for s in core_runs.STATUSES:
            self.status_box.addItem(s.capitalize(), s)
        self.status_box.currentIndexChanged.connect(lambda: self.proxy.set_status(self.status_box.currentData()))
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        top = QHBoxLayout()
        top.addWidget(self.filter_edit, 1)
        top.addWidget(self.status_box)
        top.addWidget(self.refresh_button)

        self.db_banner = Banner("warning")  # the run database was repaired (or is read-only)
        self.db_banner.hide()
        self.banner = Banner("warning")
        self.banner_resume = self.banner.add_button("Resume", self._resume_interrupted)
        self._interrupted: list[int] = []

        self.table = QTableView()
        self.table.setObjectName("runTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self.table.doubleClicked.connect(lambda _: self.tabs.setCurrentWidget(self.curves))

        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the run from its newest good checkpoint")
        self.resume_button.clicked.connect(self._resume_selected)
        self.duplicate_button = QPushButton("Duplicate settings")
        self.duplicate_button.setToolTip("Put this run's settings into the training form for a new run")
        self.duplicate_button.clicked.connect(self.duplicate_selected)
        self.reveal_button = QPushButton("Show folder")
        self.reveal_button.setToolTip("Open the run folder in the file manager")
        self.reveal_button.clicked.connect(self.reveal_selected)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setToolTip("Delete the selected runs and their folders")
        self.delete_button.clicked.connect(self.delete_selected)
        self.summary_label = QLabel()
        buttons = QHBoxLayout()
        for b in (self.resume_button, self.duplicate_button, self.reveal_button, self.delete_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.summary_label)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.table, 1)
        lv.addLayout(buttons)

        # details of the selection
        self.plot = ThemedPlot("Loss", left="loss", bottom="step")
        self.plot.addLegend(offset=(-10, 10))
        self.curves = QWidget()
        cv = QVBoxLayout(self.curves)
        cv.setContentsMargins(0, 0, 0, 0)
        self.curves_hint = QLabel("Select runs to see their loss curves; select several to compare them.")
        cv.addWidget(self.plot, 1)
        from finetune_app.ui.objective_plot import ObjectivePlot

        self.objective_panel = ObjectivePlot("Preference / reward")  # DPO, IPO, ORPO, GRPO runs
        self.objective_panel.hide()
        cv.addWidget(self.objective_panel, 1)
        cv.addWidget(self.curves_hint)
        self.config_text = QPlainTextEdit(readOnly=True)
        self.config_text.setObjectName("runConfig")
        self.details_text = QPlainTextEdit(readOnly=True)
        self.samples_table = QTableWidget(0, 4)
        self.samples_table.setHorizontalHeaderLabels(["Step", "Prompt", "Reference", "Output"])
        self.samples_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.samples_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.samples_table.verticalHeader().hide()
        self.samples_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.curves, "Curves")
        self.tabs.addTab(self.config_text, "Settings")
        self.tabs.addTab(self.samples_table, "Samples")
        self.tabs.addTab(self.details_text, "Details")

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.db_banner)
        layout.addWidget(self.banner)
        layout.addWidget(self.splitter, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(AUTO_REFRESH_MS)
        self.timer.timeout.connect(self._auto_refresh)
        self._update_buttons()

    # ---- data --------------------------------------------------------------------------------
    def show_repairs(self) -> bool:
        """Show what opening the run database had to do (moved aside and rebuilt, read-only)."""
        notices = core_runs.take_notices()
        if notices:
            self.db_banner.show_message("The run history needed repair", "\n".join(notices), "warning")
            self.history_repaired.emit("\n".join(notices))
        return bool(notices)

    def store(self):
        return core_runs.open_store(self.db_path)

    def refresh(self) -> None:
        """Re-read the records (marking dead runs interrupted) and keep the selection."""
        keep = self.selected_ids()
        try:
            with self.store() as store:
                summaries = core_runs.summaries(store)
        except Exception as exc:  # an unreadable database must not take the window down
            self.banner.show_message("The run history cannot be read", message_of(exc), "error")
            return
        self.show_repairs()
        self.model.set_summaries(summaries)
        self._interrupted = [s.record.id for s in summaries if s.record.status == "interrupted" and s.resumable]
        if self._interrupted:
            n = len(self._interrupted)
            newest = max(self._interrupted)
            rec = next(s.record for s in summaries if s.record.id == newest)
            self.banner.show_message(
                f"{n} run{'s were' if n > 1 else ' was'} interrupted",
                f"Run {rec.id} ({rec.name}) stopped at step {rec.step} of {rec.total_steps} when its process ended. "
                "Resume continues it from its newest checkpoint.", "warning")
        elif self.banner.isVisible() and self.banner.title.text().endswith("interrupted"):
            self.banner.hide()
        total = sum(s.disk_bytes for s in summaries)
        self.summary_label.setText(f"{len(summaries)} runs, {format_bytes(total)} on disk")
        if keep:
            self.select_runs(keep)
        else:
            self._on_selection()
        running = any(s.record.status == "running" for s in summaries)
        if running and not self.timer.isActive():
            self.timer.start()
        elif not running:
            self.timer.stop()

    def _auto_refresh(self) -> None:
        if self.isVisible():
            self.refresh()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self.model.summaries:
            QTimer.singleShot(0, self.refresh)

    # ---- selection ---------------------------------------------------------------------------
    def selected_rows(self) -> list[int]:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()}
        return sorted(rows)

    def selected_records(self) -> list:
        return [self.model.record(r) for r in self.selected_rows()]

    def selected_ids(self) -> list[int]:
        return [r.id for r in self.selected_records()]

    def select_runs(self, ids) -> None:
        from PySide6.QtCore import QItemSelection, QItemSelectionModel

        wanted = set(int(i) for i in ids)
        selection = QItemSelection()
        for row in range(self.proxy.rowCount()):
            index = self.proxy.index(row, 0)
            if index.data(RunTableModel.RunIdRole) in wanted:
                selection.select(index, self.proxy.index(row, self.proxy.columnCount() - 1))
        self.table.selectionModel().select(selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self._on_selection()

    def _on_selection(self, *_) -> None:
        records = self.selected_records()
        self._update_buttons()
        self._show_curves(records)
        self._show_one(records[0] if len(records) == 1 else (records[0] if records else None))

    def _update_buttons(self) -> None:
        recs = self.selected_records() if self.model.summaries else []
        one = len(recs) == 1
        resumable = one and self.model.summaries[self.selected_rows()[0]].resumable
        self.resume_button.setEnabled(bool(resumable))
        self.duplicate_button.setEnabled(one)
        self.reveal_button.setEnabled(one and Path(recs[0].run_dir).exists())
        self.delete_button.setEnabled(bool(recs) and all(r.status != "running" for r in recs))

    # ---- details -----------------------------------------------------------------------------
    def _show_curves(self, records) -> None:
        self.plot.clear()
        legend = self.plot.plotItem.legend
        if legend is not None:
            legend.clear()
        if not records:
            self.curves_hint.show()
            self.objective_panel.setVisible(self.objective_panel.show_runs([]))
            return
        self.curves_hint.setVisible(len(records) == 1)
        xs: list = []
        ys: list = []
        objective = []  # (label, colour, series) of runs whose objective reports more than a loss
        with self.store() as store:
            for k, rec in enumerate(records):
                colour = RUN_COLOURS[k % len(RUN_COLOURS)]
                train = store.metrics(rec.id, "train")
                val = store.metrics(rec.id, "val")
                label = f"{rec.id} {rec.name}"
                series = store.objective_series(rec.id)
                if series:
                    objective.append((label if len(records) > 1 else "", colour, series))
                for m in train + val:
                    xs.append(m["step"])
                    ys.append(m["loss"])
                if train:
                    self.plot.plot([m["step"] for m in train], [m["loss"] for m in train],
                                   pen=pg.mkPen(colour, width=2), name=f"{label} (training)")
                if val:
                    self.plot.plot([m["step"] for m in val], [m["loss"] for m in val],
                                   pen=pg.mkPen(colour, width=1.5, style=Qt.PenStyle.DashLine), symbol="o",
                                   symbolSize=6, symbolBrush=colour, symbolPen=None,
                                   name=f"{label} (validation)")
        # ThemedPlot never auto-ranges (cheap live redraws): the data is known here, so fit it.
        self.plot.fit_view(xs, ys, x_min=0)
        self.plot.set_title("Loss" if len(records) == 1 else f"Loss: {len(records)} runs compared")
        self.objective_panel.setVisible(self.objective_panel.show_runs(objective, x_max=max(xs, default=0)))

    def _show_one(self, rec) -> None:
        self.samples_table.setRowCount(0)
        if rec is None:
            self.config_text.setPlainText("")
            self.details_text.setPlainText("")
            return
        try:
            self.config_text.setPlainText(config_of(rec).to_toml())
        except Exception:
            import json

            self.config_text.setPlainText(json.dumps(rec.config, indent=2))
        with self.store() as store:
            samples = store.samples(rec.id)
            ckpts = store.checkpoints(rec.id)
            exports = store.exports(rec.id)
            log = store.run_log(rec.id)
        for s in reversed(samples[-200:]):
            row = self.samples_table.rowCount()
            self.samples_table.insertRow(row)
            for c, v in enumerate((str(s["step"]), s["prompt"], s["reference"], s["output"])):
                item = QTableWidgetItem(v)
                item.setToolTip(v)
                self.samples_table.setItem(row, c, item)
        lines = [f"Run {rec.id}: {rec.name}", f"Status: {rec.status}" + (f" — {rec.message}" if rec.message else ""),
                 f"Folder: {rec.run_dir} ({format_bytes(core_runs.disk_usage(rec.run_dir))})",
                 f"Model: {rec.model}", f"  fingerprint {rec.model_fingerprint}",
                 f"Dataset: {rec.data}", f"  fingerprint {rec.data_fingerprint}",
                 f"Started {_when(rec.started_at)}, ended {_when(rec.ended_at)}, {format_duration(rec.duration)};"
                 f" {rec.sessions} session(s)",
                 f"Step {rec.step} of {rec.total_steps}; loss {_num(rec.last_loss)}; validation {_num(rec.last_val_loss)};"
                 f" best {_num(rec.best_val_loss)}" + (f" at step {rec.best_step}" if rec.best_step is not None else ""),
                 "", "Checkpoints:"]
        lines += [f"  step {c.step}" + (f"  val {_num(c.val_loss)}" if c.val_loss is not None else "")
                  + ("" if c.exists else "  [missing]") + f"  {c.path}" for c in ckpts] or ["  none"]
        if exports:
            lines += ["", "Exports:"] + [f"  {e['target']}: {e['path']}" + ("" if e["exists"] else "  [missing]")
                                         for e in exports]
        lines += ["", "History:"] + [f"  {_when(e['t'])}  {e['message']}" for e in log]
        self.details_text.setPlainText("\n".join(lines))

    # ---- actions -----------------------------------------------------------------------------
    def _resume_selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 1:
            self.resume_requested.emit(ids[0])

    def _resume_interrupted(self) -> None:
        if self._interrupted:
            self.resume_requested.emit(max(self._interrupted))

    def duplicate_selected(self) -> TrainConfig | None:
        recs = self.selected_records()
        if len(recs) != 1:
            return None
        cfg = config_of(recs[0]).replace(output="")
        self.duplicate_config.emit(cfg)
        return cfg

    def reveal_selected(self) -> None:
        recs = self.selected_records()
        if len(recs) == 1:
            QDesktopServices.openUrl(QUrl.fromLocalFile(recs[0].run_dir))

    def delete_selected(self) -> list[int]:
        recs = self.selected_records()
        if not recs:
            return []
        sizes = sum(core_runs.disk_usage(r.run_dir) for r in recs)
        names = ", ".join(f"{r.id} ({r.name})" for r in recs[:5]) + ("…" if len(recs) > 5 else "")
        if self.confirm_delete:
            answer = QMessageBox.question(
                self, "Delete runs",
                f"Delete run{'s' if len(recs) > 1 else ''} {names} and the files {'they' if len(recs) > 1 else 'it'} wrote"
                f" (up to {format_bytes(sizes)})? Other files in {'their folders' if len(recs) > 1 else 'its folder'} "
                "are kept. This cannot be undone.",
                QMessageBox.StandardButton.Cancel | QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Cancel)
            if answer != QMessageBox.StandardButton.Yes:
                return []
        deleted = []
        try:
            with self.store() as store:
                for r in recs:
                    core_runs.delete_run(store, r.id, files=True)
                    deleted.append(r.id)
        except Exception as exc:
            self.banner.show_message("A run could not be deleted", message_of(exc), "error")
        self.table.clearSelection()
        self.refresh()
        if deleted:
            self.runs_deleted.emit(deleted)
        return deleted

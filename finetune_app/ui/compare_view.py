"""Base model vs fine-tuned over a set: the validation split (or a chosen dataset or folder of
pictures), as a table of prompts, references and both outputs with agreement scores.

The work runs on the shared InferenceService thread (core.compare does it: the same code as
`finetune-app compare`); rows fill in as they finish, and training goes on meanwhile. The
summary says in one sentence whether the fine-tune agrees more with the references.

"Full Evaluation" runs `finetune-app eval`'s engine (core.evaluation: perplexity, bootstrap
intervals, the per-side cache) on the same base, fine-tuned model, data and generation settings,
on its own thread (eval_worker.py), with progress, ETA and Cancel; the metrics table with deltas
and intervals shows here, and report.html opens in the browser.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QCoreApplication, QSize, Qt, QUrl
from PySide6.QtGui import QBrush, QColor, QDesktopServices, QIcon, QImageReader, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core.compare import CompareResult, TunedSource, recorded_base
from finetune_app.core.generate import GenerationSettings
from finetune_app.ui.caption_panel import (
    CompareRequest,
    InferenceService,
    TunedSourcePicker,
)
from finetune_app.ui.eval_worker import Eta, EvalWorker
from finetune_app.ui.widgets import Banner, breakable, clean_output, heading, message_of, secondary

COLUMNS = ("#", "Picture", "Prompt", "Reference", "Base model", "Fine-tuned", "Exact match", "BLEU", "ROUGE-L")
COL_INDEX, COL_PICTURE, COL_PROMPT, COL_REF, COL_BASE, COL_TUNED, COL_EM, COL_BLEU, COL_ROUGE = range(len(COLUMNS))
CURRENT_DATA = "__current__"
CHOOSE_DATA = "__choose__"
BETTER, WORSE = QColor(46, 160, 67, 60), QColor(217, 48, 37, 50)
ICON = 40
EVAL_COLUMNS = ("Metric", "Base model", "Fine-tuned", "Change", "95% interval of the change")


class CompareView(QWidget):
    """`context_fn()` gives the window's state: "data", "valid_fraction", "seed", "model",
    "run_dir", "run_model", "run_data" (any may be missing)."""

    def __init__(self, service: InferenceService | None = None, parent: QWidget | None = None, *,
                 context_fn: Callable[[], dict] | None = None):
        super().__init__(parent)
        self.setObjectName("compareView")
        self.service = service or InferenceService(self)
        self.context_fn = context_fn or (lambda: {})
        self.job: int | None = None
        self.rows: dict[int, object] = {}  # table row -> CompareRow
        self.result: CompareResult | None = None

        title = heading("Compare base and fine-tuned", 3)
        hint = secondary(QLabel("Both models answer every item of the validation split (or of a dataset or folder "
                                "you choose); the scores say how closely each output matches the reference."))
        hint.setWordWrap(True)
        self.picker = TunedSourcePicker()
        self.picker.problem.connect(lambda text: self.message.show_message("That folder cannot be used", text, "warning"))
        self.data = QComboBox()
        self.data.setObjectName("compareData")
        self.data.addItem("Validation split of the current dataset", CURRENT_DATA)
        self.data.addItem("Choose a dataset or a folder of pictures…", CHOOSE_DATA)
        self.data.activated.connect(self._on_data_activated)
        self._data_last = 0
        self.limit = QSpinBox()
        self.limit.setObjectName("compareLimit")
        self.limit.setRange(0, 100000)
        self.limit.setValue(20)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("At most this many items (0: all).")
        self.prompt = QLineEdit()
        self.prompt.setObjectName("comparePrompt")
        self.prompt.setPlaceholderText("each item's own prompt (for plain pictures: Describe this image.)")
        self.max_tokens = QSpinBox()
        self.max_tokens.setObjectName("compareMaxTokens")
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(64)
        self.temperature = QDoubleSpinBox()
        self.temperature.setObjectName("compareTemperature")
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.run_button = QPushButton("Compare")
        self.run_button.setObjectName("compareRun")
        self.run_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("compareStop")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        self.save_button = QPushButton("Save…")
        self.save_button.setObjectName("compareSave")
        self.save_button.clicked.connect(self.choose_save)
        self.save_button.setEnabled(False)

        row1 = QHBoxLayout()
        row1.addWidget(QLabel("Fine-tuned:"))
        row1.addWidget(self.picker)
        row1.addSpacing(12)
        row1.addWidget(QLabel("Data:"))
        row1.addWidget(self.data, 1)
        row1.addWidget(QLabel("Items:"))
        row1.addWidget(self.limit)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("Prompt:"))
        row2.addWidget(self.prompt, 1)
        row2.addWidget(QLabel("Max tokens:"))
        row2.addWidget(self.max_tokens)
        row2.addWidget(QLabel("Temperature:"))
        row2.addWidget(self.temperature)
        for b in (self.run_button, self.stop_button, self.save_button):
            row2.addWidget(b)

        self.message = Banner("warning")
        self.message.setObjectName("compareMessage")
        self.status = secondary(QLabel(""))
        self.status.setObjectName("compareStatus")
        self.summary = QLabel("")
        self.summary.setObjectName("compareSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("compareTable")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(True)
        self.table.setIconSize(QSize(ICON, ICON))
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        for col in (COL_INDEX, COL_PICTURE, COL_EM, COL_BLEU, COL_ROUGE):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        for col in (COL_PROMPT, COL_REF, COL_BASE, COL_TUNED):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(ICON + 8)

        # -- the full evaluation (core.evaluation on its own thread) --------------------------------
        self.eval_worker: EvalWorker | None = None
        self.eval_result: dict | None = None
        self.report_path: Path | None = None
        self.resamples = 1000  # bootstrap resamples for the intervals
        self._eta = Eta()
        self._eval_total = 0
        self.eval_button = QPushButton("Full Evaluation")
        self.eval_button.setObjectName("evalRun")
        self.eval_button.setToolTip("BLEU, chrF, ROUGE, label accuracy and perplexity with 95% intervals, on the same "
                                    "models, data and settings; writes eval.json and report.html (cached: a second "
                                    "run is instant).")
        self.eval_button.clicked.connect(self.start_eval)
        self.eval_cancel = QPushButton("Cancel")
        self.eval_cancel.setObjectName("evalCancel")
        self.eval_cancel.setEnabled(False)
        self.eval_cancel.clicked.connect(self.cancel_eval)
        self.eval_progress = QProgressBar()
        self.eval_progress.setObjectName("evalProgress")
        self.eval_progress.hide()
        self.eval_eta = secondary(QLabel(""))
        self.eval_eta.setObjectName("evalEta")
        self.open_report = QPushButton("Open Report")
        self.open_report.setObjectName("evalOpenReport")
        self.open_report.setEnabled(False)
        self.open_report.clicked.connect(self.open_report_file)
        row3 = QHBoxLayout()
        row3.addWidget(self.eval_button)
        row3.addWidget(self.eval_cancel)
        row3.addWidget(self.eval_progress, 1)
        row3.addWidget(self.eval_eta)
        row3.addStretch(0)
        row3.addWidget(self.open_report)
        self.eval_table = QTableWidget(0, len(EVAL_COLUMNS))
        self.eval_table.setObjectName("evalTable")
        self.eval_table.setHorizontalHeaderLabels(list(EVAL_COLUMNS))
        self.eval_table.verticalHeader().setVisible(False)
        self.eval_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.eval_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.eval_table.hide()
        self.split = split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.eval_table)
        split.addWidget(self.table)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(hint)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addLayout(row3)
        layout.addWidget(self.message)
        layout.addWidget(self.status)
        layout.addWidget(self.summary)
        layout.addWidget(split, 1)
        app = QCoreApplication.instance()
        if app is not None:  # the evaluation thread must end (and free its MLX state) before the app
            app.aboutToQuit.connect(self.shutdown_eval)

        s = self.service
        s.started.connect(self._on_started)
        s.status.connect(self._on_status)
        s.failed.connect(self._on_failed)
        s.compareItems.connect(self._on_items)
        s.compareRow.connect(self._on_row)
        s.compareDone.connect(self._on_done)
        s.ended.connect(self._on_ended)
        s.queueChanged.connect(self._on_queue)

    # -- choosing ---------------------------------------------------------------------------------
    def _on_data_activated(self, index: int) -> None:
        if self.data.itemData(index) == CHOOSE_DATA:
            folder = QFileDialog.getExistingDirectory(self, "Choose a dataset folder or a folder of pictures")
            if folder:
                self.set_data(folder)
            else:
                self.data.setCurrentIndex(self._data_last)
            return
        self._data_last = index

    def set_data(self, path: str | Path) -> None:
        """Compare over this dataset (its validation split) or folder of pictures."""
        path = str(Path(path).expanduser().resolve())
        i = self.data.findData(path)
        if i < 0:
            self.data.insertItem(self.data.count() - 1, Path(path).name, path)
            i = self.data.findData(path)
            self.data.setItemData(i, path, Qt.ItemDataRole.ToolTipRole)
        self.data.setCurrentIndex(i)
        self._data_last = i

    def context(self) -> dict:
        try:
            return dict(self.context_fn() or {})
        except Exception:
            return {}

    def request(self) -> CompareRequest:
        """What Compare would run now (raises ValueError with a readable reason when it cannot)."""
        ctx = self.context()
        tuned, why = self.picker.source(ctx.get("run_dir"))
        if tuned is None:
            raise ValueError(why)
        use_run = self.picker.uses_current_run()
        fraction, seed = ctx.get("valid_fraction", 0.1), ctx.get("seed", 0)
        if self.data.currentData() == CURRENT_DATA:
            data = (ctx.get("run_data") if use_run else None) or ctx.get("data")
            if use_run and ctx.get("run_data"):
                fraction, seed = ctx.get("run_valid_fraction", fraction), ctx.get("run_seed", seed)
            if not data:
                raise ValueError("No dataset is open: open one on the Dataset screen, or choose a dataset or folder here.")
        else:
            data = self.data.currentData()
        model = (ctx.get("run_model") or ctx.get("model")) if use_run else (recorded_base(tuned) or ctx.get("model"))
        settings = GenerationSettings(max_tokens=self.max_tokens.value(), temperature=float(self.temperature.value()))
        return CompareRequest(data=str(data), tuned=tuned, model=model, settings=settings,
                              limit=self.limit.value() or None, valid_fraction=float(fraction), seed=int(seed),
                              prompt=self.prompt.text().strip() or None,
                              image_size=ctx.get("run_image_size") if use_run else None)

    # -- running ----------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.job is not None

    def start(self) -> int | None:
        if self.job is not None or self.eval_worker is not None:
            return None
        try:
            request = self.request()
        except ValueError as exc:
            self.message.show_message("Cannot compare yet", str(exc), "warning")
            return None
        self.message.hide()
        self.table.setRowCount(0)
        self.rows.clear()
        self.result = None
        self.summary.setText("")
        self.save_button.setEnabled(False)
        self.job = self.service.submit(request)
        self.run_button.setEnabled(False)
        self.eval_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self._on_queue()
        return self.job

    def stop(self) -> None:
        if self.job is not None:
            self.service.cancel(self.job)
            self.status.setText("Stopping after this item…")

    # -- service signals --------------------------------------------------------------------------
    def _on_queue(self) -> None:
        if self.job is None:
            return
        ahead = self.service.ahead(self.job)
        if ahead is not None:
            self.status.setText(f"queued ({ahead} ahead)" if ahead else "queued (next)")

    def _on_started(self, jid: int) -> None:
        if jid == self.job:
            self.status.setText("starting…")

    def _on_status(self, jid: int, side: str, text: str) -> None:
        if jid == self.job and text:
            self.status.setText(text)

    def _on_failed(self, jid: int, side: str, message: str) -> None:
        if jid == self.job:
            self.message.show_message("The comparison stopped", message, "error")

    def _on_items(self, jid: int, items) -> None:
        if jid != self.job:
            return
        self.table.setRowCount(len(items))
        thumbs: dict[str, QIcon] = {}
        for r, item in enumerate(items):
            self._set(r, COL_INDEX, str(item.index if item.index is not None else r))
            self._set(r, COL_PROMPT, item.prompt)
            self._set(r, COL_REF, item.reference or "–")
            self._set(r, COL_BASE, "…")
            self._set(r, COL_TUNED, "…")
            if item.image:
                cell = QTableWidgetItem(Path(item.image).name if item.images[0].path is not None else "")
                icon = thumbs.get(item.image) or _icon(item.image)
                if icon is not None:
                    thumbs[item.image] = icon
                    cell.setIcon(icon)
                cell.setToolTip(item.image)
                self.table.setItem(r, COL_PICTURE, cell)
        self.status.setText(f"comparing {len(items)} items…")

    def _on_row(self, jid: int, i: int, row) -> None:
        if jid != self.job:
            return
        self.rows[i] = row
        self._set(i, COL_BASE, breakable(clean_output(row.base)) if not row.error else "")
        self._set(i, COL_TUNED, breakable(clean_output(row.tuned)) if not row.error else f"({row.error})")
        b, t = row.base_scores, row.tuned_scores
        for col, key, fmt in ((COL_EM, "exact_match", "{:.0f}"), (COL_BLEU, "bleu", "{:.1f}"), (COL_ROUGE, "rouge_l", "{:.2f}")):
            if key in b and key in t:
                self._set(i, col, f"{fmt.format(b[key])} → {fmt.format(t[key])}")
                cell = self.table.item(i, col)
                if t[key] > b[key] + 1e-9:
                    cell.setBackground(QBrush(BETTER))
                elif t[key] < b[key] - 1e-9:
                    cell.setBackground(QBrush(WORSE))
            else:
                self._set(i, col, "–")
        done = len(self.rows)
        self.status.setText(f"{done} of {self.table.rowCount()} done")

    def _on_done(self, jid: int, result) -> None:
        if jid != self.job:
            return
        self.result = result
        self.show_summary(result)

    def _on_ended(self, jid: int) -> None:
        if jid != self.job:
            return
        self.job = None
        self.run_button.setEnabled(True)
        self.eval_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.save_button.setEnabled(self.result is not None)
        if self.result is not None:
            n = len(self.result.rows)
            self.status.setText(f"Compared {n} item{'s' if n != 1 else ''} in {self.result.seconds:.1f} s · "
                                f"fine-tuned: {self.result.tuned}")
        elif not self.message.isVisible():
            self.status.setText("Stopped.")

    def show_summary(self, result: CompareResult) -> None:
        s = result.summary()
        parts = []
        if s.get("scored"):
            for side, name in (("base", "Base"), ("tuned", "Fine-tuned")):
                a = s[side]
                parts.append(f"<b>{name}</b>: exact match {a['exact_match']:.0%}, BLEU {a['bleu']:.1f}, chrF {a['chrf']:.1f}, "
                             f"ROUGE-L {a['rouge_l']:.2f}")
        text = " &nbsp;·&nbsp; ".join(parts)
        verdict = html.escape(result.verdict())
        self.summary.setText((text + "<br>" if text else "") + f"<span style='font-size:+1'>{verdict}</span>")

    def _set(self, row: int, col: int, text: str) -> None:
        item = self.table.item(row, col)
        if item is None:
            item = QTableWidgetItem(text)
            self.table.setItem(row, col, item)
        else:
            item.setText(text)
        if col in (COL_PROMPT, COL_REF, COL_BASE, COL_TUNED):
            item.setToolTip(text)

    # -- the full evaluation ----------------------------------------------------------------------
    def is_evaluating(self) -> bool:
        return self.eval_worker is not None

    def start_eval(self) -> EvalWorker | None:
        if self.eval_worker is not None or self.job is not None:
            return None
        try:
            request = self.request()
        except ValueError as exc:
            self.message.show_message("Cannot evaluate yet", str(exc), "warning")
            return None
        self.message.hide()
        self.eval_result, self.report_path = None, None
        self.eval_table.hide()
        self.open_report.setEnabled(False)
        self._eta = Eta()
        self._eval_total = 0
        self.eval_progress.setRange(0, 0)  # busy until the first row count arrives
        self.eval_progress.setFormat("starting…")
        self.eval_progress.show()
        self.eval_eta.setText("")
        worker = EvalWorker(request, report_dir(request.tuned), resamples=self.resamples, parent=self)
        worker.status.connect(self._on_eval_status)
        worker.progressed.connect(self._on_eval_progress)
        worker.finished_ok.connect(self._on_eval_done)
        worker.failed.connect(self._on_eval_failed)
        worker.cancelled.connect(self._on_eval_cancelled)
        worker.finished.connect(self._on_eval_ended)
        self.eval_worker = worker
        self.eval_button.setEnabled(False)
        self.run_button.setEnabled(False)
        self.eval_cancel.setEnabled(True)
        self.status.setText("Evaluating…")
        worker.start()
        return worker

    def cancel_eval(self) -> None:
        """Stop before the next row; the rows finished stay cached, so starting again resumes."""
        if self.eval_worker is not None:
            self.eval_worker.cancel()
            self.eval_cancel.setEnabled(False)
            self.status.setText("Stopping the evaluation after this row…")

    def shutdown_eval(self, timeout_ms: int = 60000) -> bool:
        if self.eval_worker is None:
            return True
        self.eval_worker.cancel()
        return self.eval_worker.wait(timeout_ms)

    def _on_eval_status(self, text: str) -> None:
        if self.sender() is self.eval_worker and text:
            self.status.setText(text)

    def _on_eval_progress(self, side: str, done: int, total: int) -> None:
        if self.sender() is not self.eval_worker:
            return
        overall, whole = done + (total if side == "after" else 0), 2 * total
        self.eval_progress.setRange(0, whole)
        self.eval_progress.setValue(overall)
        name = "base model" if side == "before" else "fine-tuned"
        self.eval_progress.setFormat(f"{name}: {done} of {total} rows (side {1 if side == 'before' else 2} of 2)")
        if 0 < done < total:
            self.status.setText(f"Generating and scoring with the {name}…")
        self.eval_eta.setText(self._eta.update(overall, whole))

    def _on_eval_done(self, result: dict, report: str) -> None:
        if self.sender() is not self.eval_worker:
            return
        self.eval_result, self.report_path = result, Path(report)
        self.show_eval(result)
        cached = [n for n in ("before", "after") if result["sides"][n]["cached"]]
        self.status.setText(f"Evaluated {result['scored']} of {result['rows']} rows in {result['seconds']:.1f} s"
                            + (" (from the cache)" if len(cached) == 2 else "") + f" · report: {report}")
        self.open_report.setEnabled(True)

    def _on_eval_failed(self, message: str) -> None:
        if self.sender() is self.eval_worker:
            self.message.show_message("The evaluation stopped", message, "error")
            self.status.setText("")

    def _on_eval_cancelled(self) -> None:
        if self.sender() is self.eval_worker:
            self.status.setText("Evaluation cancelled. The rows finished are kept: Full Evaluation resumes after them.")

    def _on_eval_ended(self) -> None:
        if self.sender() is not self.eval_worker:
            return
        self.eval_worker.deleteLater()
        self.eval_worker = None
        self.eval_progress.hide()
        self.eval_eta.setText("")
        self.eval_cancel.setEnabled(False)
        self.eval_button.setEnabled(self.job is None)
        self.run_button.setEnabled(self.job is None)

    def show_eval(self, result: dict) -> None:
        """The metrics table: both sides with their intervals, the change and its interval."""
        from finetune_app.core.evaluation.report import LABELS, _fmt, _fmt_delta, accuracy_label

        b, a = result["metrics"]["before"], result["metrics"]["after"]
        ci_b, ci_a = result["ci95"]["before"], result["ci95"]["after"]
        keys = [k for k in a if k.startswith("accuracy/")] + [k for k in LABELS if k in a]
        self.eval_table.setRowCount(len(keys))
        for r, k in enumerate(keys):
            d = result["deltas"].get(k)
            name = (LABELS.get(k) or accuracy_label(k)) + (" (lower is better)" if d and d["lower_is_better"] else "")

            def side(value, ci):
                return _fmt(k, value) + (f"  [{_fmt(k, ci[0])}, {_fmt(k, ci[1])}]" if ci else "")

            ci = d.get("ci95") if d else None
            cells = (name, side(b.get(k), ci_b.get(k)), side(a.get(k), ci_a.get(k)),
                     _fmt_delta(k, d["delta"]) if d else "",
                     f"[{_fmt_delta(k, ci[0])}, {_fmt_delta(k, ci[1])}]" if ci else "–")
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.eval_table.setItem(r, c, item)
            verdict = _verdict(ci, d["lower_is_better"] if d else False)
            if verdict:
                for c in (3, 4):
                    self.eval_table.item(r, c).setBackground(QBrush(BETTER if verdict > 0 else WORSE))
        self.eval_table.resizeRowsToContents()
        self.eval_table.show()
        t = self.eval_table  # every metric on screen; the rows of the comparison get the rest
        want = t.horizontalHeader().height() + sum(t.rowHeight(r) for r in range(t.rowCount())) + 2 * t.frameWidth() + 2
        total = sum(self.split.sizes()) or self.split.height()
        self.split.setSizes([want, max(total - want, 120)])

    def open_report_file(self) -> bool:
        if self.report_path is None or not self.report_path.is_file():
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.report_path)))

    # -- saving -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from finetune_app.core.compare import save_result

        if self.result is None:
            raise ValueError("Nothing compared yet.")
        return save_result(self.result, path)

    def choose_save(self) -> None:
        if self.result is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save the comparison", "comparison.csv", "CSV (*.csv);;JSON (*.json);;HTML report (*.html)")
        if path:
            try:
                self.save(path)
            except Exception as exc:
                self.message.show_message("The comparison could not be saved", message_of(exc), "error")


def _icon(path: str) -> QIcon | None:
    if not Path(path).is_file():
        return None
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid():
        reader.setScaledSize(size.scaled(ICON, ICON, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    return None if image.isNull() else QIcon(QPixmap.fromImage(image))


def _verdict(ci, lower_is_better: bool) -> int:
    """+1 when the whole interval of the change says better, -1 worse, 0 when it spans zero."""
    if not ci:
        return 0
    sign = -1 if lower_is_better else 1
    lo, hi = ci[0] * sign, ci[1] * sign
    return 1 if lo > 0 and hi > 0 else -1 if lo < 0 and hi < 0 else 0


def report_dir(source: TunedSource) -> Path:
    """Where eval.json and report.html go: RUN/eval for a run or one of its checkpoints (as
    `finetune-app eval` does), else a folder of the app's own data named after the model."""
    from finetune_app.core.runs import data_dir

    p = source.path
    if source.kind == "run":
        return p / "eval"
    from finetune_app.core import run_folder

    if run_folder.run_of(p) != p and run_folder.config_path(run_folder.run_of(p)).is_file():
        return run_folder.run_of(p) / "eval"
    return data_dir() / "evaluations" / p.name

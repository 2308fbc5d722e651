"""The export wizard: target, quantization, destination, summary, progress, verification.

Pages: what to export (base model, adapter, target) -> quantization (and, for Apple's FastVLM app,
the CoreML vision encoder: built from the model's tower or an existing fastvithd.mlpackage, checked)
-> destination (refuses an existing folder unless "replace" is ticked) -> summary with the size
estimate and the free disk space -> progress (the export runs on a QThread; Cancel stops it
between steps and nothing is written) -> result: the verification (the destination's loader, its
output, the logit difference to base+adapter, structure checks), the bundle's files and sizes, and
"Show in Finder".

Usage::

    from finetune_app.ui.export_wizard import ExportWizard
    ExportWizard(model=base_dir, adapter=run_dir, parent=window).exec()

Everything the wizard does goes through finetune_app.core.export (the same code as
`finetune-app export`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from finetune_app.ui.widgets import secondary
from finetune_app.core.errors import ConfigError
from finetune_app.core.run_folder import ADAPTER_CONFIG_FILE
from finetune_app.core.export.export import (
    TARGET_HELP,
    TARGETS,
    ExportOptions,
    human_bytes,
)

PAGE_SOURCE, PAGE_QUANT, PAGE_DEST, PAGE_SUMMARY, PAGE_PROGRESS, PAGE_RESULT = range(6)
TARGET_TITLES = {
    "adapter": "Adapter only",
    "mlx-vlm": "Fused model for mlx-vlm (Python)",
    "mlx-lm": "Fused model for mlx-lm (Python)",
    "mlx-swift": "FastVLM app bundle (mlx-swift + CoreML encoder)",
    "mlx-swift-lm": "mlx-swift-lm bundle (MLXVLM / MLXLLM)",
}


def read_model_info(source: str) -> dict | None:
    """kind / model_type / FastVLM-ness of a local model folder (None for hub ids or unreadable)."""
    path = Path(source).expanduser()
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    from finetune_app.core.families import display_name, family_class
    from finetune_app.core.models import model_kind

    try:
        kind = model_kind(config)
    except Exception:  # noqa: BLE001 - shown as "unknown"
        return None
    mt = str(config.get("model_type", "")).lower()
    return {"kind": kind, "model_type": mt, "family": display_name(mt),
            "is_fastvlm": family_class(mt).apple_app, "config": config, "path": path}


def why_not(target: str, info: dict | None) -> str:
    """Why `target` is not offered for this model (empty when it is)."""
    if info is None or target in allowed_targets(info):
        return ""
    family = info.get("family") or info.get("model_type") or "this model"
    if target == "mlx-swift":
        return f"only for FastVLM models; this is {family}"
    if target == "mlx-lm":
        return f"for text models; {family} is a vision-language model (use mlx-vlm)"
    if target == "mlx-vlm":
        return f"for vision-language models; {family} is a text model (use mlx-lm)"
    return f"not available for {family}"


def default_target(info: dict | None, adapter: str) -> str:
    """The usual choice: a fused model for the model's own Python library; the adapter alone when
    the base model is unknown."""
    if info is None:
        return "adapter" if adapter else "mlx-vlm"
    return "mlx-lm" if info["kind"] == "text" else "mlx-vlm"


def default_folder(target: str, adapter: str, model: str) -> str:
    """A new folder beside the run folder (the export refuses one inside it) or beside the model;
    never an existing one."""
    if adapter:
        a = Path(adapter).expanduser()
        base = a.with_name(f"{a.name}-{target}")
    elif model and Path(model).expanduser().is_dir():
        m = Path(model).expanduser()
        base = m.with_name(f"{m.name}-{target}")
    else:
        base = Path.home() / f"finetune-export-{target}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return str(folder)


def allowed_targets(info: dict | None) -> set[str]:
    if info is None:
        return set(TARGETS)
    if info["kind"] == "text":
        return {"adapter", "mlx-lm", "mlx-swift-lm"}
    out = {"adapter", "mlx-vlm", "mlx-swift-lm"}
    if info["is_fastvlm"]:
        out.add("mlx-swift")
    return out


class ExportWorker(QObject):
    """Runs core.export.export on its thread (MLX arrays and streams stay on that thread)."""

    progressed = Signal(float, str)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, options: ExportOptions):
        super().__init__()
        self.options = options
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    @Slot()
    def run(self) -> None:
        from finetune_app.core.errors import FinetuneError
        from finetune_app.core.export.export import export

        try:
            result = export(self.options, progress=lambda f, m: self.progressed.emit(f, m),
                            should_stop=lambda: self._stop)
        except FinetuneError as exc:
            self.failed.emit(exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - shown in the wizard instead of a crash
            self.failed.emit(f"Unexpected error: {type(exc).__name__}: {exc}")
            return
        try:  # the run's Exports section (history); on this thread, not the window's
            if self.options.adapter:
                from finetune_app.core.runs import record_export

                v = getattr(result, "verification", None)
                from finetune_app.core.run_folder import run_of

                record_export(run_of(self.options.adapter), self.options.target, result.output,
                              {"quantize_bits": self.options.quantize_bits,
                               "verification": v.to_dict() if v is not None else None})
        except Exception as exc:  # noqa: BLE001 - the export itself succeeded
            result.warnings.append(f"The export could not be added to the run history: {exc}")
        self.finished.emit(result)


def _browse_row(edit: QLineEdit, button_text: str, pick) -> QWidget:
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    b = QPushButton(button_text)
    b.clicked.connect(pick)
    lay.addWidget(b)
    return row


class SourcePage(QWizardPage):
    def __init__(self, wizard: ExportWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("What to export")
        self.setSubTitle("The base model, the adapter (a training run folder) and where the result will run.")
        form = QFormLayout(self)
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model folder or Hugging Face id")
        self.adapter_edit = QLineEdit()
        self.adapter_edit.setPlaceholderText("run folder with adapters.safetensors")
        form.addRow("Adapter:", _browse_row(self.adapter_edit, "Choose…", self._pick_adapter))
        # a run folder: its final adapter, or one of its checkpoints (the best one by the run's best_by)
        self.checkpoint_box = QComboBox()
        self.checkpoint_box.setObjectName("checkpointChoice")
        self.checkpoint_box.setToolTip("Which weights of the run to export: the final adapter, the checkpoint the run "
                                       "marks as best (by its 'Best checkpoint by' setting), or the latest checkpoint.")
        form.addRow("Weights:", self.checkpoint_box)
        form.addRow("Base model:", _browse_row(self.model_edit, "Choose…", self._pick_model))
        self.info_label = QLabel()
        self.info_label.setWordWrap(True)
        form.addRow("", self.info_label)
        self.group = QButtonGroup(self)
        self.buttons: dict[str, QRadioButton] = {}
        self.notes: dict[str, QLabel] = {}
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        for t in TARGETS:
            rb = QRadioButton(TARGET_TITLES[t])
            rb.setObjectName(f"target_{t}")
            rb.setToolTip(TARGET_HELP[t])
            self.group.addButton(rb)
            self.buttons[t] = rb
            v.addWidget(rb)
            note = secondary(QLabel(TARGET_HELP[t]))  # palette-following: readable in dark mode
            note.setObjectName(f"note_{t}")
            note.setWordWrap(True)
            note.setContentsMargins(22, 0, 0, 0)
            v.addWidget(note)
            self.notes[t] = note
            rb.toggled.connect(self.completeChanged)
            rb.toggled.connect(self.update_layout_note)
        form.addRow("Target:", box)
        # trained for one runtime, exported for another: say so (a warning, not a refusal)
        self.layout_label = QLabel()
        self.layout_label.setObjectName("layout_warning")
        self.layout_label.setWordWrap(True)
        self.layout_label.setVisible(False)
        form.addRow("", self.layout_label)
        self.adapter_edit.editingFinished.connect(self.refresh)
        self.model_edit.editingFinished.connect(self.refresh)
        self.adapter_edit.textChanged.connect(self.completeChanged)
        self.model_edit.textChanged.connect(self.completeChanged)

    def _pick_adapter(self):
        d = QFileDialog.getExistingDirectory(self, "Choose the adapter's run folder", self.adapter_edit.text())
        if d:
            self.adapter_edit.setText(d)
            self.refresh()

    def _pick_model(self):
        d = QFileDialog.getExistingDirectory(self, "Choose the base model folder", self.model_edit.text())
        if d:
            self.model_edit.setText(d)
            self.refresh()

    def refresh_checkpoints(self) -> None:
        """The run's choices of weights (only the final adapter for a folder that is no run); each
        item's data is the folder to export ("" for the run's final adapter)."""
        from finetune_app.core import run_folder

        adapter = self.adapter_edit.text().strip()
        kind = (self.checkpoint_box.currentText() or "").split(":")[0]
        self.checkpoint_box.clear()
        self.checkpoint_box.addItem("The run's final adapter", "")
        folder = Path(adapter).expanduser() if adapter else None
        if folder is not None and run_folder.checkpoints_dir(folder).is_dir():
            best = run_folder.read_best(folder)
            if best and run_folder.best_checkpoint_dir(folder):
                value = best.get("value")
                shown = f" = {value:.4g}" if isinstance(value, (int, float)) else ""
                self.checkpoint_box.addItem(f"Best checkpoint: step {best['step']:,} (by {best.get('by', '?')}{shown})",
                                            str(run_folder.best_checkpoint_dir(folder)))
            try:
                latest = run_folder.pick_checkpoint(folder, "latest")
                self.checkpoint_box.addItem(f"Latest checkpoint: step {run_folder.checkpoint_step(latest):,}", str(latest))
            except ConfigError:
                pass
        again = next((i for i in range(self.checkpoint_box.count()) if self.checkpoint_box.itemText(i).split(":")[0] == kind), 0)
        self.checkpoint_box.setCurrentIndex(again)
        self.checkpoint_box.setEnabled(self.checkpoint_box.count() > 1)

    def chosen_adapter(self) -> str | None:
        """The adapter folder to export: the run (its final adapter) or the checkpoint chosen."""
        return self.checkpoint_box.currentData() or self.adapter_edit.text().strip() or None

    def refresh(self) -> None:
        self.refresh_checkpoints()
        adapter = self.adapter_edit.text().strip()
        if adapter and not self.model_edit.text().strip():
            try:
                cfg = json.loads((Path(adapter).expanduser() / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
                self.model_edit.setText(str((cfg.get("finetune_app") or {}).get("base_model") or ""))
            except (OSError, ValueError):
                pass
        info = read_model_info(self.model_edit.text().strip()) if self.model_edit.text().strip() else None
        self.w.model_info = info
        allowed = allowed_targets(info)
        for t, rb in self.buttons.items():
            rb.setEnabled(t in allowed)
            reason = why_not(t, info)
            rb.setToolTip(f"Not available: {reason}." if reason else TARGET_HELP[t])
            self.notes[t].setText(f"Not available: {reason}." if reason else TARGET_HELP[t])
            if rb.isChecked() and t not in allowed:
                self.group.setExclusive(False)
                rb.setChecked(False)
                self.group.setExclusive(True)
        if self.target() is None:
            self.buttons[default_target(info, self.adapter_edit.text().strip())].setChecked(True)
        if info is None:
            self.info_label.setText("Hub model or unknown folder: every target is offered; the export checks it." if self.model_edit.text().strip() else "")
        else:
            kind = "vision-language" if info["kind"] == "vlm" else "text"
            self.info_label.setText(f"{info['family']} ({kind} model).")
        self.update_layout_note()
        self.completeChanged.emit()

    def target(self) -> str | None:
        return next((t for t, rb in self.buttons.items() if rb.isChecked()), None)

    def layout_note(self) -> str | None:
        """The export's own warning when the target's prompt layout differs from the training one."""
        from finetune_app.core import run_folder
        from finetune_app.core.export.export import layout_warning

        adapter, target = self.adapter_edit.text().strip(), self.target()
        if not adapter or target is None:
            return None
        try:
            acfg = json.loads((Path(adapter).expanduser() / run_folder.ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        info = self.w.model_info
        return layout_warning(acfg if isinstance(acfg, dict) else None, target, info["kind"] if info else "vlm",
                              info["model_type"] if info else "")

    def update_layout_note(self) -> None:
        note = self.layout_note()
        self.layout_label.setText(f"<b>Prompt layout differs:</b> {note}" if note else "")
        self.layout_label.setVisible(bool(note))

    def isComplete(self) -> bool:
        t = self.target()
        if t is None or not self.model_edit.text().strip() and not self.adapter_edit.text().strip():
            return False
        return bool(self.adapter_edit.text().strip()) or t != "adapter"

    def nextId(self) -> int:
        return PAGE_DEST if self.target() == "adapter" else PAGE_QUANT


class QuantPage(QWizardPage):
    def __init__(self, wizard: ExportWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("Precision")
        self.setSubTitle("Full precision matches the fine-tuned model exactly; 4 or 8 bits make it smaller.")
        form = QFormLayout(self)
        self.bits = QComboBox()
        self.bits.setObjectName("bits")
        self.bits.addItem("Full precision", None)
        self.bits.addItem("8-bit", 8)
        self.bits.addItem("4-bit", 4)
        form.addRow("Weights:", self.bits)
        self.group_size = QComboBox()
        for g in (32, 64, 128):
            self.group_size.addItem(str(g), g)
        self.group_size.setCurrentIndex(1)
        form.addRow("Group size:", self.group_size)
        self.vision = QCheckBox("Also quantize the vision tower (it stays in float otherwise)")
        form.addRow("", self.vision)
        self.encoder_box = QWidget()
        ev = QVBoxLayout(self.encoder_box)
        ev.setContentsMargins(0, 0, 0, 0)
        self.build_rb = QRadioButton("Build fastvithd.mlpackage from the model's vision tower")
        self.build_rb.setChecked(True)
        self.use_rb = QRadioButton("Use an existing fastvithd.mlpackage:")
        self.mlpackage_edit = QLineEdit()
        self.check_label = QLabel()
        self.check_label.setWordWrap(True)
        ev.addWidget(self.build_rb)
        ev.addWidget(self.use_rb)
        ev.addWidget(_browse_row(self.mlpackage_edit, "Choose…", self._pick_package))
        check = QPushButton("Check package")
        check.clicked.connect(self.check_package)
        ev.addWidget(check)
        ev.addWidget(self.check_label)
        form.addRow("CoreML encoder:", self.encoder_box)
        self.form = form
        self.bits.currentIndexChanged.connect(self._update)
        self.use_rb.toggled.connect(self.completeChanged)
        self.mlpackage_edit.textChanged.connect(self.completeChanged)

    def initializePage(self) -> None:
        t = self.w.source.target()
        info = self.w.model_info
        self.form.setRowVisible(self.encoder_box, t == "mlx-swift")  # the label goes with it
        self.vision.setVisible(t != "mlx-swift" and (info is None or info["kind"] == "vlm"))
        self._update()

    def _update(self) -> None:
        q = self.bits.currentData() is not None
        self.group_size.setEnabled(q)
        self.vision.setEnabled(q)
        if not q:
            self.vision.setChecked(False)

    def _pick_package(self):
        d = QFileDialog.getExistingDirectory(self, "Choose fastvithd.mlpackage", self.mlpackage_edit.text())
        if d:
            self.mlpackage_edit.setText(d)
            self.use_rb.setChecked(True)
            self.check_package()

    @Slot()
    def check_package(self) -> bool:
        from finetune_app.core.errors import FinetuneError
        from finetune_app.core.export.export import check_user_mlpackage

        info = self.w.model_info
        try:
            found = check_user_mlpackage(Path(self.mlpackage_edit.text().strip()).expanduser(),
                                         info["config"] if info else {})
        except FinetuneError as exc:
            self.check_label.setText(f"✗ {exc.message}")
            return False
        self.check_label.setText(f"✓ input images {found['input']['shape']}, output image_features {found['output']['shape']}")
        return True

    def _swift(self) -> bool:
        return self.w.source.target() == "mlx-swift"

    def isComplete(self) -> bool:
        return not (self._swift() and self.use_rb.isChecked() and not self.mlpackage_edit.text().strip())

    def validatePage(self) -> bool:
        if self._swift() and self.use_rb.isChecked():
            return self.check_package()
        return True


class DestPage(QWizardPage):
    def __init__(self, wizard: ExportWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("Destination")
        self.setSubTitle("A new folder. The export is written beside it and moved into place only when complete.")
        form = QFormLayout(self)
        self.output_edit = QLineEdit()
        self.output_edit.setObjectName("output")
        form.addRow("Folder:", _browse_row(self.output_edit, "Choose…", self._pick))
        self.overwrite = QCheckBox("Replace the folder if it already exists")
        form.addRow("", self.overwrite)
        self.note = QLabel()
        self.note.setWordWrap(True)
        form.addRow("", self.note)
        self.output_edit.textChanged.connect(self._update)
        self.overwrite.toggled.connect(self._update)

    def initializePage(self) -> None:
        src = self.w.source
        target = src.target() or "adapter"
        text = self.output_edit.text().strip()
        if not text or text == getattr(self, "_default", None):  # a default, never the person's choice
            self._default = default_folder(target, src.adapter_edit.text().strip(), src.model_edit.text().strip())
            self.output_edit.setText(self._default)

    def _pick(self):
        d = QFileDialog.getSaveFileName(self, "Export to (a new folder)", self.output_edit.text())[0]
        if d:
            self.output_edit.setText(d)

    def _update(self) -> None:
        p = Path(self.output_edit.text().strip()).expanduser() if self.output_edit.text().strip() else None
        if p is not None and p.exists():
            self.note.setText("⚠ This folder exists." + (" It will be replaced after the export succeeds." if self.overwrite.isChecked()
                                                        else " Tick the box to replace it, or choose another name."))
        else:
            self.note.setText("")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        text = self.output_edit.text().strip()
        if not text:
            return False
        p = Path(text).expanduser()
        return not p.exists() or (self.overwrite.isChecked() and p.is_dir())


class SummaryPage(QWizardPage):
    def __init__(self, wizard: ExportWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("Summary")
        self.setSubTitle("Check the settings; Export starts writing.")
        lay = QVBoxLayout(self)
        self.text = QLabel()
        self.text.setObjectName("summary")
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.RichText)
        self.setCommitPage(True)
        self.setButtonText(QWizard.CommitButton, "Export")
        lay.addWidget(self.text)
        lay.addStretch(1)
        self.estimate = 0

    def initializePage(self) -> None:
        from finetune_app.core.export.export import estimate_bytes, free_space_target

        o = self.w.options()
        info = self.w.model_info
        rows = [("Target", TARGET_TITLES[o.target]), ("Base model", str(o.model or "(from the adapter)")),
                ("Adapter", str(o.adapter or "none (base model only)"))]
        if o.target != "adapter":
            q = "full precision" if not o.quantize_bits else f"{o.quantize_bits}-bit, group size {o.group_size}" + (
                ", vision tower too" if o.quantize_vision else "")
            rows.append(("Precision", q))
        if o.target == "mlx-swift":
            rows.append(("CoreML encoder", str(o.mlpackage) if o.mlpackage else "built from the model's vision tower"))
        note = self.w.source.layout_note()
        if note:
            rows.append(("Prompt layout", f"warning: {note}"))
        rows.append(("Destination", str(o.output) + (" (replaces the existing folder)" if o.overwrite else "")))
        try:
            if info is not None:
                self.estimate = estimate_bytes(info["path"], info["config"], target=o.target, adapter=o.adapter,
                                               quantize_bits=o.quantize_bits, group_size=o.group_size,
                                               quantize_vision=o.quantize_vision)
                rows.append(("Estimated size", human_bytes(self.estimate)))
        except (OSError, ValueError, KeyError):
            pass
        free = shutil.disk_usage(free_space_target(Path(o.output).expanduser().absolute())).free
        rows.append(("Free disk space", human_bytes(free)))
        self.text.setText("<table>" + "".join(f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{v}</td></tr>" for k, v in rows) + "</table>"
                          "<p>The bundle is verified before it is moved into place: it is reloaded with the "
                          "destination's loader (the Swift bundles: checked against the app's format and run the "
                          "way the app runs them) and answers a validation prompt.</p>")


class ProgressPage(QWizardPage):
    def __init__(self, wizard: ExportWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("Exporting")
        lay = QVBoxLayout(self)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.cancel = QPushButton("Cancel export")
        self.cancel.clicked.connect(self.w.cancel_export)
        lay.addWidget(self.bar)
        lay.addWidget(self.message)
        self.retry = QPushButton("Change settings")
        self.retry.setVisible(False)
        self.retry.clicked.connect(self.w.restart)
        lay.addWidget(self.cancel)
        lay.addWidget(self.retry)
        lay.addStretch(1)
        self.done = False
        self.error = ""

    def initializePage(self) -> None:
        self.done, self.error = False, ""
        self.bar.setValue(0)
        self.cancel.setEnabled(True)
        self.retry.setVisible(False)
        self.message.setText("Starting…")
        self.w.start_export()

    @Slot(float, str)
    def on_progress(self, fraction: float, message: str) -> None:
        self.bar.setValue(int(fraction * 1000))
        self.message.setText(message)

    def on_finished(self) -> None:
        self.done = True
        self.cancel.setEnabled(False)
        self.bar.setValue(1000)
        self.completeChanged.emit()
        self.w.next()

    @Slot(str)
    def on_failed(self, message: str) -> None:
        self.error = message
        self.cancel.setEnabled(False)
        self.retry.setVisible(True)
        self.message.setText(f"The export failed; nothing was written.\n\n{message}")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self.done


class ResultPage(QWizardPage):
    def __init__(self, wizard: ExportWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("Exported")
        lay = QVBoxLayout(self)
        self.headline = QLabel()
        self.headline.setWordWrap(True)
        self.verification = QPlainTextEdit()
        self.verification.setObjectName("verification")
        self.verification.setReadOnly(True)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["File", "Size"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.show_button = QPushButton("Show in Finder" if sys.platform == "darwin" else "Show folder")
        self.show_button.clicked.connect(self.show_in_finder)
        lay.addWidget(self.headline)
        lay.addWidget(QLabel("Verification:"))
        lay.addWidget(self.verification, 2)
        lay.addWidget(QLabel("Files:"))
        lay.addWidget(self.table, 2)
        lay.addWidget(self.show_button)

    def initializePage(self) -> None:
        r = self.w.result
        if r is None:
            return
        self.headline.setText(f"<b>{TARGET_TITLES[r.target]}</b> written to {r.output} in {r.seconds:.1f} s "
                              f"({human_bytes(r.total_bytes)}; estimated {human_bytes(r.estimate_bytes)}).")
        lines = r.verification.lines() if r.verification is not None else ["Verification skipped."]
        lines += [f"warning: {w}" for w in r.warnings if r.verification is None or w not in r.verification.warnings]
        self.verification.setPlainText("\n".join(lines))
        self.table.setRowCount(len(r.files) + 1)
        for i, (name, size) in enumerate(list(r.files) + [("total", r.total_bytes)]):
            self.table.setItem(i, 0, QTableWidgetItem(name))
            self.table.setItem(i, 1, QTableWidgetItem(human_bytes(size)))

    @Slot()
    def show_in_finder(self) -> None:
        r = self.w.result
        if r is None:
            return
        if sys.platform == "darwin":
            subprocess.run(["open", "-R", str(r.output)], check=False)
        else:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(r.output)))


class ExportWizard(QWizard):
    """The export wizard. `result` holds the ExportResult once an export succeeded."""

    def __init__(self, parent=None, *, model: str = "", adapter: str = "", output: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Export model")
        self.setWizardStyle(QWizard.ModernStyle)
        self.setOption(QWizard.NoBackButtonOnLastPage, True)
        self.setOption(QWizard.NoCancelButtonOnLastPage, True)
        self.model_info: dict | None = None
        self.result = None
        self._thread: QThread | None = None
        self._worker: ExportWorker | None = None
        self.source = SourcePage(self)
        self.quant = QuantPage(self)
        self.dest = DestPage(self)
        self.summary = SummaryPage(self)
        self.progress_page = ProgressPage(self)
        self.result_page = ResultPage(self)
        for pid, page in ((PAGE_SOURCE, self.source), (PAGE_QUANT, self.quant), (PAGE_DEST, self.dest),
                          (PAGE_SUMMARY, self.summary), (PAGE_PROGRESS, self.progress_page), (PAGE_RESULT, self.result_page)):
            self.setPage(pid, page)
        self.source.model_edit.setText(model)
        self.source.adapter_edit.setText(adapter)
        self.dest.output_edit.setText(output)
        self.source.refresh()
        self.resize(720, 620)

    # -- options -----------------------------------------------------------------------------
    def options(self) -> ExportOptions:
        target = self.source.target() or "adapter"
        quant = target != "adapter"
        bits = self.quant.bits.currentData() if quant else None
        package = None
        if target == "mlx-swift" and self.quant.use_rb.isChecked() and self.quant.mlpackage_edit.text().strip():
            package = self.quant.mlpackage_edit.text().strip()
        return ExportOptions(
            output=self.dest.output_edit.text().strip(), target=target,
            adapter=self.source.chosen_adapter(),
            model=self.source.model_edit.text().strip() or None,
            quantize_bits=bits, group_size=int(self.quant.group_size.currentData()),
            quantize_vision=bool(bits) and self.quant.vision.isChecked() and target != "mlx-swift",
            mlpackage=package, overwrite=self.dest.overwrite.isChecked())

    # -- worker ------------------------------------------------------------------------------
    def start_export(self) -> None:
        self.result = None
        self._thread = QThread(self)
        self._worker = ExportWorker(self.options())
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        queued = Qt.QueuedConnection  # the worker's signals are handled on the GUI thread
        self._worker.progressed.connect(self.progress_page.on_progress, queued)
        self._worker.finished.connect(self._on_finished, queued)
        self._worker.failed.connect(self.progress_page.on_failed, queued)
        # quit directly from the worker thread: a queued quit would wait for the GUI thread, which
        # may itself be waiting for this thread (closing the wizard mid-export)
        self._worker.finished.connect(self._thread.quit, Qt.DirectConnection)
        self._worker.failed.connect(self._thread.quit, Qt.DirectConnection)
        self._thread.start()

    @Slot(object)
    def _on_finished(self, result) -> None:
        self.result = result
        self.progress_page.on_finished()

    @Slot()
    def cancel_export(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self.progress_page.message.setText("Cancelling after the current step…")

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.isRunning()

    def reject(self) -> None:
        if self.is_running():  # closing while exporting cancels it (nothing is written)
            self.cancel_export()
            self._thread.wait()
        super().reject()

    def done(self, r: int) -> None:
        if self.is_running():
            self._thread.wait()
        super().done(r)

"""The hyperparameter form: every TrainConfig setting, presets, checks as you type, a memory estimate.

The form is a view of `TrainConfig`: each field's tooltip is its declared help, presets are
`core.config.PRESETS`, and the red borders come from `TrainConfig.problems()` (plus "not a number"
for text that does not parse), so the form and the engine can never disagree about what is valid.
The fields, their labels, groups, choices and placeholders are generated from the settings'
declarations (core.config.settings()). The step count and the memory estimate are core/estimates.py's
for the chosen model, batch and sequence length, against this machine's memory, with a warning
before a run would swap.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core import estimates, run_folder
from finetune_app.core.config import DEFAULT_EPOCHS, GROUPS, LENGTH, PRESETS, RUN, TrainConfig, setting_of, settings
from finetune_app.ui.widgets import Banner, heading, message_of, secondary

RED = "#d93025"
SWAP_ADVICE = ("It would swap, which makes training very slow. Lower the batch size or the max length, "
               "turn on 4-bit quantization, or turn on 'Save memory'.")
CUSTOM = "Custom"
CHOSEN_ELSEWHERE = ("model", "data")  # the model picker and the dataset browser set them (form.config(**paths))


def label(name: str) -> str:
    """A setting's form label (its name for anything else)."""
    return next((s.label for s in settings() if s.name == name), name)


def machine_memory_bytes() -> int:
    """Physical memory of this machine (0 when it cannot be told)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    try:  # macOS without SC_PHYS_PAGES
        import subprocess

        out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=2)
        return int(out.stdout.strip())
    except Exception:
        return 0


# ---- one field ----------------------------------------------------------------------------------

class Field(QWidget):
    """An editor for one TrainConfig setting (core.config.Setting: its kind, choices, placeholder and
    help), with its problem underneath."""

    changed = Signal()

    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        decl = setting_of(name)
        self.name = name
        self.optional = decl.optional
        self.kind = decl.kind.__name__  # bool, int, float, str, list
        choices = decl.choices
        if decl.kind is bool:
            self.editor = QCheckBox()
            self.editor.toggled.connect(self.changed)
        elif choices:
            self.editor = QComboBox()
            for text, value in choices:
                self.editor.addItem(text, value)
            self.editor.currentIndexChanged.connect(self.changed)
        else:
            self.editor = QLineEdit()
            self.editor.setPlaceholderText(decl.placeholder)
            self.editor.textChanged.connect(self.changed)
            self.editor.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.editor.setObjectName(f"field_{name}")
        self.editor.setToolTip(decl.help)
        self.message = QLabel()
        self.message.setObjectName(f"problem_{name}")
        self.message.setWordWrap(True)
        self.message.setStyleSheet(f"color: {RED};")
        # The line is always there (empty when fine): an error appearing never moves the form.
        self.message.setMinimumHeight(self.message.fontMetrics().height())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.editor)
        layout.addWidget(self.message)
        self.problem: str | None = None

    # value <-> widget
    def set_value(self, value) -> None:
        e = self.editor
        if isinstance(e, QCheckBox):
            e.setChecked(bool(value))
        elif isinstance(e, QComboBox):
            i = e.findData(value)
            if i < 0:  # a value the list does not offer (from a TOML file): show it anyway
                e.addItem(str(value), value)
                i = e.count() - 1
            e.setCurrentIndex(i)
        elif value is None:
            e.setText("")
        elif isinstance(value, list):
            e.setText(", ".join(value))
        elif isinstance(value, float):
            e.setText(_float_text(value))
        else:
            e.setText(str(value))

    def value(self) -> tuple[object, str | None]:
        """(value for TrainConfig, parse problem or None)."""
        e = self.editor
        if isinstance(e, QCheckBox):
            return e.isChecked(), None
        if isinstance(e, QComboBox):
            return e.currentData(), None
        text = e.text().strip()
        if not text:
            if self.optional:
                return None, None
            return (None, "is empty") if self.kind in ("int", "float") else ("", None)
        if self.kind == "list":
            return [t.strip() for t in re.split(r"[,\s]+", text) if t.strip()], None
        if self.kind == "int":
            try:
                return int(text.replace("_", "").replace(",", "")), None
            except ValueError:
                try:
                    float(text)
                    return None, "must be a whole number"
                except ValueError:
                    return None, f"'{text}' is not a number"
        if self.kind == "float":
            try:
                v = float(text.replace("_", ""))
            except ValueError:
                return None, f"'{text}' is not a number"
            if not math.isfinite(v):
                return None, "must be a finite number"
            return v, None
        return text, None

    def show_problem(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        self.problem = problem
        if problem:
            self.message.setText(f"{label(self.name)} {problem}.")
            if isinstance(self.editor, QLineEdit):
                self.editor.setStyleSheet(f"QLineEdit {{ border: 2px solid {RED}; border-radius: 4px; padding: 1px 3px; }}")
            else:
                self.editor.setStyleSheet(f"color: {RED};")
        else:
            self.message.setText("")
            self.editor.setStyleSheet("")


def _float_text(v: float) -> str:
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:g}"
    text = repr(v)
    return text[:-2] if text.endswith(".0") else text


# ---- the form -----------------------------------------------------------------------------------

class HyperparamForm(QWidget):
    """Signals: `configChanged()` after any edit, `validityChanged(bool)`."""

    configChanged = Signal()
    validityChanged = Signal(bool)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("hyperparamForm")
        self.fields: dict[str, Field] = {}
        self.model_choice = None  # workers.ModelChoice
        self.train_rows: int | None = None
        self.longest_row: int | None = None  # tokens, from the dataset check
        self.longest_exact = False
        self.memory_ram = machine_memory_bytes()
        self._loading = False
        self._valid = True
        self._problems: dict[str, str] = {}

        # presets and files
        self.preset = QComboBox()
        self.preset.setObjectName("presetCombo")
        for name in PRESETS:
            self.preset.addItem(name.capitalize(), name)
        self.preset.addItem(CUSTOM, None)
        self.preset.setToolTip("Quick test: 50 steps to check that everything works. Balanced: 3 epochs, a "
                               "good first run. Quality: 5 epochs, a larger adapter and a gentler rate. Preference: DPO on "
                               "chosen/rejected pairs, 2 epochs at a low rate. Reward: GRPO on prompts with "
                               "answers or rewards to check, 1 epoch.")
        self.preset.activated.connect(lambda _i: self.apply_preset(self.preset.currentData()))
        self.load_button = QPushButton("Load…")
        self.load_button.setObjectName("loadConfigButton")
        self.load_button.setToolTip("Load settings from a TOML file (a run folder's train_config.toml works too).")
        self.load_button.clicked.connect(self.choose_load)
        self.save_button = QPushButton("Save…")
        self.save_button.setObjectName("saveConfigButton")
        self.save_button.setToolTip("Save these settings as a TOML file (`finetune-app train --config FILE` reads it).")
        self.save_button.clicked.connect(self.choose_save)
        top = QHBoxLayout()
        top.addWidget(QLabel("Preset"))
        top.addWidget(self.preset)
        top.addStretch(1)
        top.addWidget(self.load_button)
        top.addWidget(self.save_button)

        # run folder
        self.output = Field("output")
        self.fields["output"] = self.output
        self.output.changed.connect(self._on_changed)
        out_browse = QPushButton("Choose…")
        out_browse.clicked.connect(self.choose_output)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output, 1)
        out_row.addWidget(out_browse, 0, Qt.AlignmentFlag.AlignTop)

        self.steps_note = secondary(QLabel(""))
        self.steps_note.setObjectName("stepsNote")
        self.steps_note.setWordWrap(True)

        # groups in two columns
        grid = QGridLayout()
        grid.setHorizontalSpacing(14)
        grid.setVerticalSpacing(10)
        titles = [*GROUPS, *(g for g in dict.fromkeys(s.group for s in settings()) if g not in GROUPS and g != RUN)]
        for i, title in enumerate(titles):  # each setting in its declared group, in declaration order
            box = QGroupBox(title)
            form = QFormLayout(box)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            for decl in (s for s in settings() if s.group == title):
                f = Field(decl.name)
                f.changed.connect(self._on_changed)
                self.fields[decl.name] = f
                text = QLabel(decl.label)
                text.setToolTip(decl.help)
                text.setBuddy(f.editor)
                form.addRow(text, f)
            if title == LENGTH:
                form.addRow(self.steps_note)
            grid.addWidget(box, i // 2, i % 2, Qt.AlignmentFlag.AlignTop)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)

        # memory
        self.memory = Banner("info", closable=False)
        self.memory.setObjectName("memoryEstimate")
        self.summary = Banner("error", closable=False)
        self.summary.setObjectName("formProblems")

        inner = QWidget()
        inner_layout = QVBoxLayout(inner)
        inner_layout.setContentsMargins(0, 0, 6, 0)
        run_box = QFormLayout()
        run_label = QLabel(label("output"))
        run_label.setToolTip(TrainConfig.help("output"))
        run_box.addRow(run_label, out_row)
        inner_layout.addLayout(run_box)
        inner_layout.addLayout(grid)
        inner_layout.addStretch(1)
        scroll = self.scroll = QScrollArea()
        scroll.setObjectName("hyperparamScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(inner)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(heading("Training settings", 1))
        layout.addLayout(top)
        layout.addWidget(self.memory)
        layout.addWidget(self.summary)
        layout.addWidget(scroll, 1)

        self.set_config(TrainConfig())
        self.apply_preset("balanced")

    # -- values --------------------------------------------------------------------------------
    def set_config(self, cfg: TrainConfig) -> None:
        self._loading = True
        try:
            for name, f in self.fields.items():
                f.set_value(getattr(cfg, name))
        finally:
            self._loading = False
        self._on_changed()

    def values(self) -> tuple[dict, dict[str, str]]:
        """Field values and the fields whose text does not parse."""
        out, parse_problems = {}, {}
        for name, f in self.fields.items():
            value, problem = f.value()
            if problem:
                parse_problems[name] = problem
            else:
                out[name] = value
        return out, parse_problems

    def config(self, **paths) -> TrainConfig:
        """The TrainConfig the form describes (fields that do not parse keep their defaults)."""
        values, _ = self.values()
        cfg = TrainConfig().replace(**values)
        return cfg.replace(**paths) if paths else cfg

    def problems(self) -> dict[str, str]:
        values, problems = self.values()
        cfg = TrainConfig().replace(**values)
        try:
            engine = cfg.problems()
        except TypeError as exc:  # a comparison between values of the wrong types
            engine = {"iters": f"cannot be checked ({exc})"}
        for name, reason in engine.items():
            problems.setdefault(name, reason)
        if cfg.iters is None and cfg.epochs is None:
            problems.setdefault("epochs", "is needed when the steps are empty (or give the steps)")
        return problems

    def is_valid(self) -> bool:
        return not self._problems

    def problem_names(self) -> list[str]:
        """The labels of the settings to fix, in the form's order (e.g. "Batch size")."""
        order = [n for n in self.fields if n in self._problems] + [n for n in self._problems if n not in self.fields]
        return [label(n) for n in order]

    def show_first_problem(self) -> str | None:
        """Scroll to the first setting to fix and put the cursor in it; returns its name."""
        for name, f in self.fields.items():
            if name in self._problems:
                self.scroll.ensureWidgetVisible(f, 20, 40)
                f.editor.setFocus()
                return name
        return None

    # -- presets -------------------------------------------------------------------------------
    def apply_preset(self, name: str | None) -> None:
        if not name or name not in PRESETS:
            return
        self._loading = True
        try:
            for key, value in PRESETS[name].items():
                self.fields[key].set_value(value)
        finally:
            self._loading = False
        self._on_changed()

    def matching_preset(self) -> str | None:
        values, _ = self.values()
        for name, preset in PRESETS.items():
            if all(values.get(k, object()) == v for k, v in preset.items()):
                return name
        return None

    # -- reactions -----------------------------------------------------------------------------
    def _on_changed(self) -> None:
        if self._loading:
            return
        problems = self.problems()
        self._problems = problems
        for name, f in self.fields.items():
            f.show_problem(problems.get(name))
        hidden = {k: v for k, v in problems.items() if k not in self.fields}
        if hidden:
            self.summary.show_message("Settings to fix", "; ".join(f"{k} {v}" for k, v in hidden.items()))
        else:
            self.summary.hide()
        preset = self.matching_preset()
        i = self.preset.findData(preset) if preset else self.preset.findData(None)
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(i)
        self.preset.blockSignals(False)
        self.update_estimates()
        valid = not problems
        if valid != self._valid:
            self._valid = valid
            self.validityChanged.emit(valid)
        self.configChanged.emit()

    VISION_FIELDS = ("train_vision", "train_projector", "image_size", "quantize_vision", "cache_vision")

    def set_model(self, choice) -> None:
        self.model_choice = choice
        text_only = choice is not None and getattr(choice.info, "kind", "vlm") == "text"
        for name in self.VISION_FIELDS:  # a text-only model has no vision tower to set up
            f = self.fields.get(name)
            if f is not None:
                f.setEnabled(not text_only)
                f.editor.setToolTip("Not used: this is a text-only model." if text_only else TrainConfig.help(name))
        self.update_estimates()

    def set_dataset_stats(self, train_rows: int | None, longest: int | None, exact: bool) -> None:
        self.train_rows, self.longest_row, self.longest_exact = train_rows, longest, exact
        self.update_estimates()

    def total_steps(self, cfg: TrainConfig | None = None) -> int | None:
        return estimates.total_steps_for_rows(cfg or self.config(), self.train_rows)

    def update_estimates(self) -> None:
        cfg = self.config()
        steps = self.total_steps(cfg)
        if steps is None:
            self.steps_note.setText("Open a dataset to see how many steps this is." if not cfg.iters else "")
        elif cfg.iters:
            self.steps_note.setText(f"{steps:,} steps (steps win over epochs when both are set).")
        else:
            self.steps_note.setText(f"≈ {steps:,} steps: {cfg.epochs or DEFAULT_EPOCHS:g} epoch(s) of "
                                    f"{self.train_rows:,} training rows at batch {cfg.batch_size}.")
        if steps is not None and self.train_rows and estimates.sequences_per_example(cfg) > 1:  # pairs, GRPO groups
            self.steps_note.setText(self.steps_note.text() + " " + estimates.sequences_text(cfg, self.train_rows)
                                    .capitalize() + ".")
        self._update_memory(cfg)

    def memory_estimate(self, cfg: TrainConfig | None = None) -> tuple[float, int, int] | None:
        """(estimated GB, sequence length used, machine bytes), or None without a model."""
        choice = self.model_choice
        if choice is None:
            return None
        cfg = cfg or self.config()
        info = choice.info
        seq = cfg.max_length if isinstance(cfg.max_length, int) and cfg.max_length > 0 else 2048
        if self.longest_row:
            seq = min(seq, self.longest_row)
        gb = estimates.run_memory_gb(cfg, parameters=info.parameters, dtype=info.dtype,
                                     quantization=info.quantization, sizes=choice.arch, seq_len=seq)
        return gb, seq, self.memory_ram

    def memory_fit(self, cfg: TrainConfig | None = None) -> "estimates.Fit | None":
        """Will it fit (#16): the same estimate against this machine's memory, with the largest
        batch and the longest row that fit (what `data check --model` prints too)."""
        choice, cfg = self.model_choice, cfg or self.config()
        est = self.memory_estimate(cfg)
        if est is None or not est[2]:
            return None
        info = choice.info
        return estimates.will_it_fit(cfg, budget_bytes=est[2], seq_len=est[1], parameters=info.parameters,
                                     dtype=info.dtype, quantization=info.quantization, sizes=choice.arch)

    def memory_warning(self) -> str | None:
        """A sentence when the run would likely swap (used before starting), else None."""
        est = self.memory_estimate()
        if est is None or not est[2]:
            return None
        gb, _, ram = est
        if gb * 1e9 >= 0.8 * ram:
            return (f"This run needs about {gb:.1f} GB, and this machine has {ram / 1e9:.1f} GB. "
                    + SWAP_ADVICE)
        return None

    def _update_memory(self, cfg: TrainConfig) -> None:
        est = self.memory_estimate(cfg)
        if est is None:
            self.memory.show_message("Memory", "Choose a model to see how much memory this run needs.", "info")
            return
        blocking = {"batch_size", "max_length", "lora_rank", "quantize_bits", "fine_tune_type"} & set(self._problems)
        if blocking:
            self.memory.show_message("Memory", "Fix the settings marked in red to see how much memory "
                                     "this run needs.", "info")
            return
        gb, seq, ram = est
        seq_note = (f"sequence {seq:,} tokens" + ("" if self.longest_exact or not self.longest_row
                                                   else " (estimated from the dataset)"))
        size = f"{gb:.2f}" if gb < 10 else f"{gb:.1f}"  # small models: batch size shows in the figure
        per = estimates.sequences_per_example(cfg)
        seqs = (f" ({cfg.batch_size * per:,} sequences: {'pairs' if per == 2 and cfg.objective != 'grpo' else 'answers'}"
                f" of {per})" if per > 1 and isinstance(cfg.batch_size, int) else "")
        base = f"About <b>{size} GB</b> for batch {cfg.batch_size}{seqs}, {seq_note}"
        if isinstance(cfg.batch_size, int) and cfg.batch_size > 1:
            one = self.memory_estimate(cfg.replace(batch_size=1))
            if one is not None and gb > one[0]:
                extra = (gb - one[0]) * 1e3
                base += (f"; the batch's activations add {extra:,.0f} MB over batch 1" if extra >= 1
                         else f"; the batch's activations add {extra * 1e3:,.0f} KB over batch 1")
        if not ram:
            self.memory.show_message("Memory", base + ".", "info")
            return
        share = gb * 1e9 / ram
        fit = self.memory_fit(cfg)
        if fit is not None:  # what would fit instead (or as well)
            base += (f". Largest batch at {seq:,} tokens: {fit.largest_batch}; longest row at batch "
                     f"{fit.batch_size}: {fit.longest_row:,} tokens")
        if share >= 0.8:
            self.memory.show_message("Memory: this would swap", f"{base}, but this machine has "
                                     f"{ram / 1e9:.1f} GB. " + SWAP_ADVICE, "error")
        elif share >= 0.6:
            self.memory.show_message("Memory: tight", f"{base} of this machine's {ram / 1e9:.1f} GB "
                                     f"({share:.0%}). Other apps may push it into swap.", "warning")
        else:
            self.memory.show_message("Memory: fits", f"{base} of this machine's {ram / 1e9:.1f} GB "
                                     f"({share:.0%}).", "success")

    # -- files ---------------------------------------------------------------------------------
    def choose_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a Run Folder")
        if path:
            self.fields["output"].set_value(path)

    def choose_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save Settings", str(Path.home() / run_folder.CONFIG_FILE),
                                              "TOML files (*.toml)")
        if path:
            self.save(path)

    def choose_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load Settings", str(Path.home()), "TOML files (*.toml);;All files (*)")
        if path:
            self.load(path)

    def save(self, path: str | Path, **paths) -> Path:
        return self.config(**paths).save(path)

    def load(self, path: str | Path) -> TrainConfig | None:
        """Fill the form from a TOML file; the model and data it names are returned to the caller."""
        try:
            cfg = TrainConfig.load(path)
        except Exception as exc:
            self.summary.show_message("These settings cannot be loaded", message_of(exc), "error")
            return None
        self.set_config(cfg)
        return cfg

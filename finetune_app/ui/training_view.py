"""The training screen: live curves, the numbers that matter, sample captions, and the controls.

Events arrive as queued signals from the training thread (workers.TrainingRun). Each slot only
appends to lists; a 10 Hz timer redraws the plots, so a burst of reports never stalls the window.
Sample captions of the same validation images are shown per evaluation, newest first, so the
person sees them improve. A failed run shows its reason in a panel, never a traceback.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Callable

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core.run_folder import metrics_path
from finetune_app.ui.plots import BLUE, GREEN, ORANGE, PURPLE, ThemedPlot, nice_ceiling
from finetune_app.ui.widgets import Banner, breakable, clean_output, format_duration, heading, secondary

EMA_STEPS = 20.0  # the smoothed loss averages over about this many steps, however often reports come
SCORES_OF_100 = ("chrf", "bleu")  # sacreBLEU's scale; the score plot shows them / 100
SCORE_COLOURS = (GREEN, ORANGE, PURPLE, BLUE, "#e5534b", "#8b949e")
REDRAW_MS = 100  # plots redraw at most 10 times a second
MAX_SAMPLE_GROUPS = 30
SAMPLE_THUMB = 72

RUNNING = ("loading", "preparing", "started", "resumed", "paused", "stopping")
ENDED = ("stopped", "finished", "failed")

STATE_TEXT = {
    "idle": "Ready", "loading": "Loading the model…", "preparing": "Preparing the data…",
    "started": "Training", "resumed": "Training", "paused": "Paused", "pausing": "Pausing after this step…",
    "stopping": "Stopping…", "stopped": "Stopped", "finished": "Finished", "failed": "Failed",
}


def ask_stop(parent: QWidget, step: int) -> str | None:
    """Ask how to stop: "save", "discard" or None (keep training)."""
    box = QMessageBox(parent)
    box.setObjectName("stopDialog")
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Stop training?")
    box.setText(f"Stop training at step {step:,}?")
    box.setInformativeText("Saving keeps the adapter and a checkpoint in the run folder, so you can use it "
                           "or continue later.")
    save = box.addButton("Stop and Save", QMessageBox.ButtonRole.AcceptRole)
    discard = box.addButton("Stop without Saving", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton("Keep Training", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(save)
    box.exec()
    clicked = box.clickedButton()
    return "save" if clicked is save else "discard" if clicked is discard else None


def process_peak_gb() -> float:
    """This process's peak resident memory (what a CPU run uses; MLX reports 0 there)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # bytes on macOS, KiB else
    except Exception:
        return 0.0


class Stat(QFrame):
    """One number with its name under it."""

    def __init__(self, name: str, object_name: str):
        super().__init__()
        self.setObjectName(object_name)
        self.value = QLabel("–")
        self.value.setObjectName(f"{object_name}Value")
        f = self.value.font()
        f.setPointSizeF(f.pointSizeF() + 4)
        f.setBold(True)
        self.value.setFont(f)
        self.name = secondary(QLabel(name))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(0)
        layout.addWidget(self.value)
        layout.addWidget(self.name)

    def set(self, text: str) -> None:
        self.value.setText(text)


class SampleCard(QFrame):
    """A validation image with its reference caption and the model's output at one step."""

    def __init__(self, item, pixmap: QPixmap | None):
        super().__init__()
        self.setObjectName("sampleCard")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        if item.image:
            pic = QLabel()
            pic.setObjectName("sampleImage")
            pic.setFixedSize(SAMPLE_THUMB, SAMPLE_THUMB)
            pic.setAlignment(Qt.AlignmentFlag.AlignCenter)
            if pixmap is not None:
                pic.setPixmap(pixmap)
            layout.addWidget(pic)
        self.has_picture = pixmap is not None
        output = clean_output(item.output)
        match = output.lower().rstrip(".") == item.reference.strip().lower().rstrip(".")
        colour = GREEN if match else ORANGE
        prompt = "" if item.image else f"<span style='opacity:.7'>{html.escape(item.prompt[:160])}</span><br>"
        out = html.escape(breakable(output)) if output else "<i>(nothing)</i>"
        label = QLabel(f"{prompt}<span style='opacity:.7'>expected</span> {html.escape(item.reference)}<br>"
                       f"<span style='opacity:.7'>model</span> <b style='color:{colour}'>{out}</b>")
        label.setObjectName("sampleText")
        label.setWordWrap(True)
        label.setTextFormat(Qt.TextFormat.RichText)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(label, 1)
        self.matches = match


class TrainingView(QWidget):
    """Shows one run at a time. `startRequested` asks the main window to build and start a run."""

    startRequested = Signal()
    runEnded = Signal(str)  # final state: finished / stopped / failed
    stateShown = Signal(str)  # the state the screen shows now (for toolbar actions)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("trainingView")
        self.run = None  # workers.TrainingRun
        self.state = "idle"
        self.step = 0
        self.total_steps = 0
        self._thumbs: dict[int, QPixmap | None] = {}
        # SampleItem -> ImageRef of its picture (the main window looks it up in the open dataset)
        self.image_resolver: Callable | None = None
        self._dirty = False
        self._t_started: float | None = None
        self._paused_for = 0.0
        self._t_paused: float | None = None
        self._first_step: int | None = None
        self._first_active = 0.0
        self.sample_reports: list = []
        self.reset_data()

        # -- header and controls -----------------------------------------------------------------
        self.status = heading("Ready", 4)
        self.status.setObjectName("trainingStatus")
        self.run_folder = secondary(QLabel(""))
        self.run_folder.setObjectName("runFolder")
        self.run_folder.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.start_button = QPushButton("Start Training")
        self.start_button.setObjectName("startButton")
        self.start_button.clicked.connect(self.startRequested)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setObjectName("pauseButton")
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button = QPushButton("Stop…")
        self.stop_button.setObjectName("stopButton")
        self.stop_button.clicked.connect(self.request_stop)
        self.open_folder = QPushButton("Show Run Folder")
        self.open_folder.setObjectName("openRunFolder")
        self.open_folder.clicked.connect(self._open_run_folder)
        self.start_hint = secondary(QLabel(""))
        self.start_hint.setObjectName("startHint")
        self.start_hint.setWordWrap(True)
        self.start_hint.setTextFormat(Qt.TextFormat.RichText)
        head = QHBoxLayout()
        titles = QVBoxLayout()
        titles.addWidget(self.status)
        titles.addWidget(self.run_folder)
        head.addLayout(titles, 1)
        for b in (self.start_button, self.pause_button, self.stop_button, self.open_folder):
            head.addWidget(b, 0, Qt.AlignmentFlag.AlignTop)
        self.progress = QProgressBar()
        self.progress.setObjectName("trainingProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")

        self.error = Banner("error")
        self.error.setObjectName("trainingError")

        # -- numbers -----------------------------------------------------------------------------
        self.stats = {}
        stats_row = QHBoxLayout()
        for key, name in (("step", "step"), ("epoch", "epoch"), ("loss", "training loss"),
                          ("val", "validation loss"), ("tps", "tokens / s"), ("mem", "peak memory"),
                          ("elapsed", "elapsed"), ("eta", "remaining")):
            s = Stat(name, f"stat_{key}")
            self.stats[key] = s
            stats_row.addWidget(s)
        stats_row.addStretch(1)
        from finetune_app.ui.host_rates import HostRatesTable

        self.host_rates = HostRatesTable()  # several machines: each one's share

        # -- plots -------------------------------------------------------------------------------
        self.loss_plot = ThemedPlot("Loss", left="loss", bottom="step")
        self.loss_plot.setObjectName("lossPlot")
        self.loss_plot.addLegend(offset=(-10, 10))
        # A thin line, no markers: scatter markers are painted in Python, which costs the window
        # the GIL several times per repaint while the trainer runs.
        self.raw_curve = self.loss_plot.plot([], [], name="training (raw)", pen=pg.mkPen(BLUE, width=1))
        self.raw_curve.setOpacity(0.55)
        self.ema_curve = self.loss_plot.plot([], [], name="training (smoothed)", pen=pg.mkPen(BLUE, width=2.5))
        self.val_curve = self.loss_plot.plot([], [], name="validation", pen=pg.mkPen(ORANGE, width=2),
                                             symbol="s", symbolSize=7, symbolBrush=ORANGE, symbolPen=None)
        self.loss_plot.apply_palette()
        self.lr_plot = ThemedPlot("Learning rate", left="rate", bottom="step")
        self.lr_plot.setObjectName("lrPlot")
        self.lr_curve = self.lr_plot.plot([], [], pen=pg.mkPen(PURPLE, width=2))
        self.lr_plot.setMaximumHeight(190)
        self.lr_plot.getAxis("left").setWidth(60)
        self.loss_plot.getAxis("left").setWidth(60)
        self.lr_plot.setXLink(self.loss_plot)

        # Scores of generations during training (eval_metrics): shown from the first EvalReport.
        self.score_plot = ThemedPlot("Scores on validation rows", left="score (0-1)", bottom="step")
        self.score_plot.setObjectName("scorePlot")
        self.score_plot.addLegend(offset=(-10, 5), colCount=3)
        self.score_plot.setMinimumHeight(170)
        self.score_plot.getAxis("left").setWidth(60)
        self.score_plot.setXLink(self.loss_plot)
        self.score_plot.hide()
        self.score_curves: dict[str, pg.PlotDataItem] = {}
        # Preference / reward objectives (DPO, IPO, ORPO, GRPO): their own numbers, from the first report of one.
        from finetune_app.ui.objective_plot import ObjectivePlot

        self.objective_panel = ObjectivePlot("Preference / reward")
        self.objective_panel.setMinimumHeight(170)
        self.objective_panel.plot.setXLink(self.loss_plot)
        self.objective_panel.hide()

        plots = QWidget()
        pl = QVBoxLayout(plots)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.loss_plot, 3)
        pl.addWidget(self.objective_panel, 2)
        pl.addWidget(self.score_plot, 2)
        pl.addWidget(self.lr_plot, 1)

        # -- samples and log ---------------------------------------------------------------------
        self.samples_box = QWidget()
        self.samples_layout = QVBoxLayout(self.samples_box)
        self.samples_layout.setContentsMargins(0, 0, 0, 0)
        self.samples_empty = secondary(QLabel("Captions of the same validation images appear here at "
                                              "each evaluation, so you can watch them improve."))
        self.samples_empty.setWordWrap(True)
        self.samples_layout.addWidget(self.samples_empty)
        self.samples_layout.addStretch(1)
        samples_scroll = QScrollArea()
        samples_scroll.setObjectName("samplesScroll")
        samples_scroll.setWidgetResizable(True)
        samples_scroll.setWidget(self.samples_box)
        samples_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.log = QPlainTextEdit()
        self.log.setObjectName("trainingLog")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setMaximumHeight(130)
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(heading("Samples", 1))
        sl.addWidget(samples_scroll, 1)
        sl.addWidget(heading("Log", 1))
        sl.addWidget(self.log)
        side.setMinimumWidth(340)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(plots)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(self.start_hint)
        layout.addWidget(self.progress)
        layout.addWidget(self.error)
        layout.addLayout(stats_row)
        layout.addWidget(self.host_rates)
        layout.addWidget(split, 1)

        self._redraw_timer = QTimer(self)
        self._redraw_timer.setInterval(REDRAW_MS)
        self._redraw_timer.timeout.connect(self._redraw)
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick_clock)
        self._update_buttons()

    # -- data ------------------------------------------------------------------------------------
    def reset_data(self) -> None:
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.ema: list[float] = []
        self._ema_state: list[tuple[float, float]] = []  # (raw, weight) after each point, so a resume rewinds it
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.lrs: list[float] = []
        self.scores: dict[str, tuple[list[int], list[float]]] = {}  # metric -> (steps, values on 0-1)
        self.objective: dict[str, tuple[list[int], list[float]]] = {}  # objective_metrics name -> (steps, values)
        self.sample_reports = []
        self._dirty = True

    def loss_points(self) -> int:
        """Raw loss points currently drawn in the plot."""
        x, _ = self.raw_curve.getData()
        return 0 if x is None else len(x)

    # -- run wiring --------------------------------------------------------------------------------
    def attach(self, run, *, total_steps: int | None = None) -> None:
        """Show `run` (a workers.TrainingRun not yet started): clear the screen and connect it.

        A resumed run first shows its curves from the run folder's metrics.jsonl up to the step it
        continues from, and `total_steps` (from its record) when its settings give only epochs."""
        self.run = run
        self.reset_data()
        self._thumbs.clear()
        self._clear_samples()
        self.error.hide()
        self.host_rates.clear_rates()
        self.log.clear()
        self.step, self.total_steps = 0, total_steps or run.config.iters or 0
        if getattr(getattr(run, "worker", None), "resume", False):
            self.load_history(metrics_path(run.config.output))
        self._t_started, self._paused_for, self._t_paused = time.perf_counter(), 0.0, None
        self._first_step, self._first_active = None, 0.0
        for s in self.stats.values():
            s.set("–")
        self.run_folder.setText(f"Run folder: {run.config.output}")
        if self.step and self.total_steps:  # a resumed run: where it continues from, of its real total
            self.progress.setRange(0, self.total_steps)
            self.progress.setValue(min(self.step, self.total_steps))
            self.progress.setFormat("Resuming: step %v of %m…")
        else:
            self.progress.setRange(0, 0)  # busy until the first phase reports
            self.progress.setFormat("Starting…")
        run.connect(stateChanged=self.on_state, progressed=self.on_progress, trainReport=self.on_train,
                    valReport=self.on_val, sampleReport=self.on_samples, evalReport=self.on_eval,
                    objectiveReport=self.on_objective,
                    checkpointSaved=self.on_checkpoint, notice=self.on_notice, done=self.on_done)
        self._set_state("loading")
        self._log("Starting a run in " + run.config.output)
        self._dirty = True
        self._redraw()  # the run's ranges before the first paint (else a second full paint follows)
        self._redraw_timer.start()
        self._clock.start()

    def show_in_turns(self, show: Callable[[], None], then: Callable[[], None]) -> None:
        """`show()` puts this screen on view; its first paint then comes in short turns of the event
        loop (the screen with empty plot areas, then each plot on its own) and `then()` runs once the
        last has painted, at once when the window is not on screen (issue 18: no long turn; a run's
        thread started from `then` does not take the GIL from the first paint)."""
        from finetune_app.ui.plots import AfterPaint

        plots = [p for p in (self.lr_plot, self.score_plot, self.objective_panel.plot, self.loss_plot)
                 if p.isVisibleTo(self)]
        for p in plots:
            p.hold_paint()
        show()
        if not self.isVisible():
            for p in plots:
                p.release_paint()
            then()
            return

        def next_plot(i: int = 0) -> None:
            if i == len(plots):
                then()
                return
            plots[i].release_paint()
            AfterPaint(plots[i].viewport(), lambda: next_plot(i + 1))

        AfterPaint(self, next_plot)

    def is_running(self) -> bool:
        """A run is on screen and has not ended (its thread may still be saving)."""
        if self.run is None or self.state in ENDED or self.state == "idle":
            return False
        return self.run.is_running() or not self.run.started

    def set_can_start(self, ok: bool, why: str = "") -> None:
        self._can_start, self._why = ok, why
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.is_running()
        can = getattr(self, "_can_start", False)
        self.start_button.setEnabled(can and not running)
        why = "" if running or can else getattr(self, "_why", "")
        text = html.escape(why)
        if "settings marked in red" in why:  # a link that opens the form at the first one
            text += " <a href='#settings'>Show the settings to fix</a>"
        self.start_hint.setText(text)
        self.start_hint.setVisible(bool(why))
        if self.state == "idle":
            self.status.setText("Ready" if can else "Not ready to start")
        active = self.state in ("started", "resumed", "paused", "pausing")
        self.pause_button.setEnabled(active)
        self.pause_button.setText("Resume" if self.state in ("paused", "pausing") else "Pause")
        self.stop_button.setEnabled(running and self.state != "stopping")
        self.open_folder.setEnabled(self.run is not None and Path(self.run.config.output).is_dir())

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state = state
        text = STATE_TEXT.get(state, state.capitalize())
        if state == "stopped" and self.run is not None and not self.run.control.save_on_stop:
            text = "Stopped without saving"
        self.status.setText(text)
        self._update_buttons()
        self.stateShown.emit(state)

    # -- controls ----------------------------------------------------------------------------------
    def toggle_pause(self) -> None:
        if self.run is None:
            return
        if self.state in ("paused", "pausing"):
            self.run.resume()
            self._set_state("resumed" if self.state == "paused" else "started")
        elif self.state in ("started", "resumed"):
            self.run.pause()
            self._set_state("pausing")

    def request_stop(self) -> None:
        if not self.is_running():
            return
        choice = ask_stop(self, self.step)
        if choice is None or not self.is_running():
            return
        self.stop(save=choice == "save")

    def stop(self, *, save: bool = True) -> None:
        if self.run is not None and self.is_running():
            self.run.stop(save=save)
            self._log("Stopping" + (" and saving…" if save else " without saving…"))
            self._set_state("stopping")

    # -- event slots (GUI thread, queued) ----------------------------------------------------------
    def on_state(self, state: str, reason: str, step: int) -> None:
        if state == "paused":
            self._t_paused = time.perf_counter()
            self.stats["eta"].set("paused")  # no time passes for the run while it is paused
        elif state in ("resumed", "stopping") and self._t_paused is not None:
            self._paused_for += time.perf_counter() - self._t_paused
            self._t_paused = None
        if state in ("started", "resumed"):
            self.progress.setRange(0, max(1, self.total_steps))
            self.progress.setValue(min(self.step, max(1, self.total_steps)))
            self.progress.setFormat("step %v of %m")
        if state == "failed":
            self.error.show_message("Training failed", reason or "The run stopped with an error.", "error")
            if self.progress.maximum() == 0:
                self.progress.setRange(0, 1)
                self.progress.setFormat("Not started")
            self._log(f"Failed: {reason}")
        else:
            self._log(STATE_TEXT.get(state, state) + (f" ({reason})" if reason else "")
                      + (f" at step {step:,}" if step and state in ("paused", "resumed", "stopped", "finished") else ""))
        if self.state == "stopping" and state not in ENDED:
            return  # a stop was asked for: keep saying so until the run has ended
        self._set_state(state, reason)

    def on_progress(self, phase: str, done: int, total: int) -> None:
        if self.state in ("loading", "preparing") and not self.step:  # a resumed run keeps its steps
            self.progress.setRange(0, max(1, total))
            self.progress.setValue(min(done, total))
            self.progress.setFormat(f"{phase.capitalize()}… %v of %m" if total else phase.capitalize() + "…")

    def load_history(self, metrics_path: Path) -> int:
        """The curves of the run so far (a resumed run): train and validation points read from
        its metrics.jsonl. Returns the last step shown."""
        from finetune_app.core.training.events import MetricsLog

        for row in MetricsLog.read(metrics_path):
            if row.get("kind") == "train" and "step" in row and "loss" in row:
                self._add_train_point(int(row["step"]), float(row["loss"]), float(row.get("learning_rate") or 0.0))
            elif row.get("kind") == "val" and "step" in row and "val_loss" in row:
                self.val_steps.append(int(row["step"]))
                self.val_losses.append(float(row["val_loss"]))
            elif row.get("kind") == "eval" and "step" in row and isinstance(row.get("metrics"), dict):
                self._add_scores(int(row["step"]), row["metrics"])
            if row.get("kind") in ("train", "objective") and "step" in row:
                self._add_objective(int(row["step"]), row)
        self.step = self.loss_steps[-1] if self.loss_steps else 0
        if self.loss_steps:
            self.progress.setValue(min(self.step, self.progress.maximum()))
            self.stats["step"].set(f"{self.step:,} / {self.total_steps:,}")
            self.stats["loss"].set(f"{self.losses[-1]:.3f}")
        if self.val_losses:
            self.stats["val"].set(f"{self.val_losses[-1]:.3f}")
        self._dirty = True
        self._redraw()
        return self.step

    def _add_train_point(self, step: int, loss: float, lr: float) -> None:
        # A resumed run repeats the steps after its checkpoint: drop the old points from there on.
        while self.loss_steps and self.loss_steps[-1] >= step:
            for series in (self.loss_steps, self.losses, self.ema, self.lrs, self._ema_state):
                series.pop()
        while self.val_steps and self.val_steps[-1] > step:
            self.val_steps.pop()
            self.val_losses.pop()
        for steps, values in [*self.scores.values(), *self.objective.values()]:
            while steps and steps[-1] > step:
                steps.pop()
                values.pop()
        self.loss_steps.append(step)
        self.losses.append(loss)
        gap = step - (self.loss_steps[-2] if len(self.loss_steps) > 1 else 0)
        a = 1.0 - math.exp(-max(gap, 1) / EMA_STEPS)
        raw, weight = self._ema_state[-1] if self._ema_state else (0.0, 0.0)
        raw, weight = (1 - a) * raw + a * loss, (1 - a) * weight + a
        self._ema_state.append((raw, weight))
        self.ema.append(raw / weight)
        self.lrs.append(lr)

    def on_train(self, r) -> None:
        self.step, self.total_steps = r.step, r.total_steps
        self._add_train_point(r.step, r.loss, r.learning_rate)
        self._dirty = True
        self.progress.setRange(0, max(1, r.total_steps))
        self.progress.setValue(r.step)
        self.progress.setFormat("step %v of %m")
        s = self.stats
        s["step"].set(f"{r.step:,} / {r.total_steps:,}")
        s["epoch"].set(f"{r.epoch:.2f}")
        s["loss"].set(f"{r.loss:.3f}")
        s["tps"].set(f"{r.tokens_per_second:,.0f}")
        s["mem"].set(f"{max(r.peak_memory_gb or 0.0, process_peak_gb()):.2f} GB")  # MLX says ~0 on CPU
        eta = self._eta(r.step, r.total_steps)
        s["eta"].set(format_duration(eta if eta is not None else r.eta_seconds))
        if r.hosts:
            self.host_rates.show_rates(r.hosts)
        if r.metrics:
            self._add_objective(r.step, {"kind": "train", "metrics": r.metrics})

    def on_objective(self, r) -> None:
        """What a preference / reward objective measures besides its loss (GRPO: rewards, KL)."""
        self._add_objective(r.step, {"kind": "objective", "split": r.split, "metrics": r.metrics})
        if r.split != "train":
            from finetune_app.core.training.objective_metrics import text

            self._log(f"Held-out at step {r.step:,}:{text(r.metrics).replace(' |', '', 1)}")

    def _add_objective(self, step: int, row: dict) -> None:
        from finetune_app.core.training.objective_metrics import from_row

        for name, value in from_row(row).items():
            steps, values = self.objective.setdefault(name, ([], []))
            while steps and steps[-1] >= step:  # one value a step (the latest); a resumed run repeats steps
                steps.pop()
                values.pop()
            steps.append(step)
            values.append(value)
        self._dirty = True

    def on_val(self, r) -> None:
        self.val_steps.append(r.step)
        self.val_losses.append(r.val_loss)
        self._dirty = True
        self.stats["val"].set(f"{r.val_loss:.3f}")
        self._log(f"Validation loss {r.val_loss:.3f} at step {r.step:,} ({r.val_tokens:,} {r.unit}, {r.seconds:.1f} s)")

    def _add_scores(self, step: int, metrics: dict) -> None:
        for name, value in metrics.items():
            steps, values = self.scores.setdefault(name, ([], []))
            steps.append(step)
            values.append(float(value) / (100.0 if name in SCORES_OF_100 else 1.0))
        self._dirty = True

    def on_eval(self, r) -> None:
        """Scores of generations for some validation rows (TrainConfig.eval_metrics)."""
        self._add_scores(r.step, r.metrics)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
        self._log(f"Scores at step {r.step:,} on {r.n} validation rows: {shown or 'none'} ({r.seconds:.1f} s)")

    def on_samples(self, report) -> None:
        self.sample_reports.append(report)
        self.samples_empty.hide()
        box = QGroupBox(f"Step {report.step:,}")
        box.setObjectName("sampleGroup")
        grid = QGridLayout(box)
        grid.setContentsMargins(6, 6, 6, 6)
        cards = [SampleCard(item, self.sample_pixmap(item)) for item in report.items]
        cols = 1
        for i, card in enumerate(cards):
            grid.addWidget(card, i // cols, i % cols)
        right = sum(c.matches for c in cards)
        box.setTitle(f"Step {report.step:,} · {right} of {len(cards)} right")
        self.samples_layout.insertWidget(1, box)  # newest first, under the hint
        groups = [self.samples_layout.itemAt(i).widget() for i in range(self.samples_layout.count())]
        groups = [g for g in groups if isinstance(g, QGroupBox)]
        for old in groups[MAX_SAMPLE_GROUPS:]:
            old.setParent(None)
            old.deleteLater()

    def sample_pixmap(self, item) -> QPixmap | None:
        """The picture of a sample item: its path when it is one, else asked of `image_resolver`."""
        if not item.image:
            return None
        if item.index in self._thumbs:
            return self._thumbs[item.index]
        from finetune_app.core.data.sample import ImageRef
        from finetune_app.ui.dataset_model import load_thumbnail

        path = Path(item.image)
        ref = ImageRef(path=path) if path.is_absolute() and path.is_file() else None
        if ref is None and self.image_resolver is not None:
            try:
                ref = self.image_resolver(item)
            except Exception:
                ref = None
        image = load_thumbnail(ref, SAMPLE_THUMB) if ref is not None else None
        pixmap = QPixmap.fromImage(image) if image is not None and not image.isNull() else None
        self._thumbs[item.index] = pixmap
        return pixmap

    def on_checkpoint(self, step: int, path: str) -> None:
        self._log(f"Checkpoint saved at step {step:,}: {Path(path).name}")
        self._update_buttons()

    def on_notice(self, message: str) -> None:
        self._log(message)

    def on_done(self, result) -> None:
        self._redraw()
        self._redraw_timer.stop()
        self._clock.stop()
        self._tick_clock()
        final = "failed" if result is None else result.status
        if self.state not in ENDED:
            self._set_state(final)
        if result is not None:
            self._log(f"{result.status.capitalize()} at step {result.step:,} of {result.total_steps:,} "
                      f"in {format_duration(result.seconds)}. Adapter: {result.run_dir}")
            self.stats["eta"].set(format_duration(0) if result.status == "finished" else "–")
        self._update_buttons()
        self.runEnded.emit(final)

    # -- drawing -----------------------------------------------------------------------------------
    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.raw_curve.setData(self.loss_steps, self.losses)
        self.ema_curve.setData(self.loss_steps, self.ema)
        self.val_curve.setData(self.val_steps, self.val_losses)
        self.lr_curve.setData(self.loss_steps, self.lrs)
        self._draw_scores()
        # Ranges change only when the data outgrows them (cheap redraws, a steady picture).
        last = max(self.loss_steps[-1] if self.loss_steps else 0, self.val_steps[-1] if self.val_steps else 0)
        x_max = max(self.total_steps, last, 1)
        finite = [v for v in self.losses + self.val_losses if v == v and abs(v) != float("inf")]
        self.loss_plot.set_view(0, x_max, 0, nice_ceiling(max(finite) * 1.05) if finite else 1.0)
        lrs = [v for v in self.lrs if v == v]
        self.lr_plot.set_view(0, x_max, 0, nice_ceiling(max(lrs) * 1.1) if lrs and max(lrs) > 0 else 1.0)
        self.score_plot.set_view(0, x_max, 0, 1.3)  # headroom for the legend
        self.objective_panel.setVisible(self.objective_panel.show_runs(
            [("", GREEN, {k: v for k, v in self.objective.items() if v[0]})], x_max=x_max))

    def _draw_scores(self) -> None:
        """One curve per score (BLEU and chrF divided by 100, so every score is on 0-1)."""
        for name in list(self.score_curves):
            if name not in self.scores:
                self.score_plot.removeItem(self.score_curves.pop(name))
        for i, (name, (steps, values)) in enumerate(self.scores.items()):
            curve = self.score_curves.get(name)
            if curve is None:
                colour = SCORE_COLOURS[i % len(SCORE_COLOURS)]
                label = f"{name} / 100" if name in SCORES_OF_100 else name
                curve = self.score_plot.plot([], [], name=label, pen=pg.mkPen(colour, width=2), symbol="o",
                                             symbolSize=6, symbolBrush=colour, symbolPen=None)
                self.score_curves[name] = curve
                self.score_plot.apply_palette()
            curve.setData(steps, values)
        self.score_plot.setVisible(bool(self.scores))

    def _active_seconds(self) -> float:
        """Time spent training so far, pauses excluded."""
        if self._t_started is None:
            return 0.0
        paused = self._paused_for + ((time.perf_counter() - self._t_paused) if self._t_paused else 0.0)
        return time.perf_counter() - self._t_started - paused

    def _eta(self, step: int, total: int) -> float | None:
        """Remaining time at this run's own pace, pauses excluded (None before two reports)."""
        if self._first_step is None:
            self._first_step, self._first_active = step, self._active_seconds()
            return None
        done = step - self._first_step
        spent = self._active_seconds() - self._first_active
        if done <= 0 or spent <= 0:
            return None
        return max(0.0, (total - step) * spent / done)

    def _tick_clock(self) -> None:
        if self._t_started is None:
            return
        self.stats["elapsed"].set(format_duration(self._active_seconds()))
        if self._t_paused is not None or self.state in ("paused", "pausing"):
            self.stats["eta"].set("paused")

    def _clear_samples(self) -> None:
        for i in reversed(range(self.samples_layout.count())):
            w = self.samples_layout.itemAt(i).widget()
            if isinstance(w, QGroupBox):
                w.setParent(None)
                w.deleteLater()
        self.samples_empty.show()

    def _log(self, text: str) -> None:
        """Append a line; the view follows new lines unless the person scrolled up to read."""
        bar = self.log.verticalScrollBar()
        following = bar.value() >= bar.maximum() - 2
        self.log.appendPlainText(time.strftime("%H:%M:%S  ") + text)
        if following:
            bar.setValue(bar.maximum())

    def _open_run_folder(self) -> None:
        if self.run is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.run.config.output)))

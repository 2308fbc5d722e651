"""The menu-bar item (system tray): training state at a glance, and control without the window.

The icon shows the state (idle, training with a progress ring in 10 % steps, paused, finished,
failed) from the monochrome template images in resources/tray/. On macOS they are masks
(`QIcon.setIsMask(True)`): the menu bar draws them in its own colour for light and dark mode. On
Linux they are tinted for the panel (white on the dark GNOME-style top bars, the palette's text
colour elsewhere; `FINETUNE_TRAY_TINT=#rrggbb` overrides).

The menu shows step / total, the current and best validation loss, tokens per second and the time
left, and offers Pause/Resume, Stop and Save, Show Finetune and Quit. A notification says when a
run finishes or fails.

While training, closing the window hides it (training goes on; the menu-bar item stays) when the
system has a tray. Quitting mid-run asks first, stops with `save=True`, waits until the worker
has written the checkpoint, then quits, so the run can be resumed.

The controller follows the window's TrainingView (`stateShown`, `runEnded`, `.run`), and each
new run's worker signals (`trainReport`, `valReport`, `stateChanged`, `checkpointSaved`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QGuiApplication,
    QIcon,
    QImage,
    QPainter,
    QPalette,
    QPixmap,
)
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox, QSystemTrayIcon

from finetune_app.resources import tray_icon_name, tray_icon_path
from finetune_app.ui.widgets import format_duration

TINT_ENV = "FINETUNE_TRAY_TINT"
DARK_PANEL_DESKTOPS = ("GNOME", "UNITY", "UBUNTU", "PANTHEON", "BUDGIE", "CINNAMON")

# TrainingView state -> tray icon state
TRAINING_STATES = ("loading", "preparing", "started", "resumed", "stopping")
PAUSED_STATES = ("paused", "pausing")


def tray_state(view_state: str) -> str:
    if view_state in PAUSED_STATES:
        return "paused"
    if view_state in TRAINING_STATES:
        return "training"
    if view_state in ("finished", "failed"):
        return view_state
    return "idle"  # idle, stopped


def panel_colour() -> QColor:
    """The colour Linux/Windows tray icons are drawn in."""
    forced = os.environ.get(TINT_ENV, "").strip()
    if forced and QColor(forced).isValid():
        return QColor(forced)
    desktop = os.environ.get("XDG_CURRENT_DESKTOP", "").upper()
    if any(d in desktop for d in DARK_PANEL_DESKTOPS):
        return QColor("#ffffff")
    return QGuiApplication.palette().color(QPalette.ColorRole.WindowText)


def tinted(path: Path, colour: QColor, dpr: float = 1.0) -> QPixmap:
    """A black template image recoloured (its alpha kept as the shape)."""
    image = QImage(str(path)).convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
    painter = QPainter(image)
    painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceIn)
    painter.fillRect(image.rect(), colour)
    painter.end()
    pixmap = QPixmap.fromImage(image)
    pixmap.setDevicePixelRatio(dpr)
    return pixmap


def tray_icon(state: str, progress: float | None = None, *, platform: str | None = None,
              colour: QColor | None = None) -> QIcon:
    """The menu-bar icon for a state: a mask on macOS, tinted for the panel (or `colour`) elsewhere."""
    platform = platform or sys.platform
    one, two = tray_icon_path(state, progress), tray_icon_path(state, progress, scale=2)
    if platform == "darwin":
        icon = QIcon()
        icon.addFile(str(one))
        icon.addFile(str(two))
        icon.setIsMask(True)
        return icon
    colour = colour or panel_colour()
    icon = QIcon()
    icon.addPixmap(tinted(one, colour, 1.0))
    icon.addPixmap(tinted(two, colour, 2.0))
    return icon


def ask_quit_while_training(parent, step: int) -> bool:
    """True when the person chose to stop, save a checkpoint and quit."""
    box = QMessageBox(parent)
    box.setObjectName("quitWhileTrainingDialog")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Quit Finetune?")
    box.setText(f"A model is training (step {step:,}). Stop it, save a checkpoint and quit?")
    box.setInformativeText("The checkpoint keeps everything learned so far; resume the run later from the run folder.")
    quit_button = box.addButton("Stop, Save and Quit", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(quit_button)
    box.exec()
    return box.clickedButton() is quit_button


class TrayController(QObject):
    """The menu-bar item of one MainWindow."""

    stateChanged = Signal(str)  # tray state: idle / training / paused / finished / failed
    quitting = Signal()  # the app is about to quit (after any checkpoint was saved)

    def __init__(self, window, parent: QObject | None = None):
        super().__init__(parent or window)
        self.setObjectName("trayController")
        self.window = window
        self.view = window.training
        self.quit_function = QApplication.quit  # replaceable (tests)
        self.run = None
        self.state = "idle"
        self.view_state = "idle"
        self.progress: float | None = None
        self.icon_name = tray_icon_name("idle")
        self.step = self.total_steps = 0
        self.train_loss = self.tokens_per_second = self.eta = None
        self.val_loss = self.best_val_loss = None
        self.reason = ""
        self.run_folder = ""
        self.notifications: list[tuple[str, str, str]] = []  # (title, text, kind), newest last
        self._quitting = False
        self._hid_once = False

        self.menu = QMenu()
        self.menu.setObjectName("trayMenu")
        self.act_status = self._info_action("trayStatus")
        self.act_val = self._info_action("trayValidation")
        self.act_speed = self._info_action("traySpeed")
        self.menu.addSeparator()
        self.act_pause = self.menu.addAction("Pause", self.toggle_pause)
        self.act_pause.setObjectName("trayPause")
        self.act_stop = self.menu.addAction("Stop and Save…", self.stop)
        self.act_stop.setObjectName("trayStop")
        self.menu.addSeparator()
        self.act_show = self.menu.addAction("Show Finetune", self.show_window)
        self.act_show.setObjectName("trayShow")
        self.act_quit = self.menu.addAction("Quit Finetune", self.quit_app)
        self.act_quit.setObjectName("trayQuit")
        self.act_quit.setMenuRole(QAction.MenuRole.NoRole)  # the app menu keeps its own Quit
        self.menu.aboutToShow.connect(self.refresh)

        self.tray = QSystemTrayIcon(self)
        self.tray.setObjectName("trayIcon")
        self.tray.setContextMenu(self.menu)
        self.tray.activated.connect(self._on_activated)
        self._set_icon("idle", None)

        self.view.stateShown.connect(self._on_view_state)
        self.view.runEnded.connect(self._on_run_ended)
        window.installEventFilter(self)
        if self.tray_available():
            self.tray.show()
        self.refresh()

    def _info_action(self, name: str) -> QAction:
        action = self.menu.addAction("")
        action.setObjectName(name)
        action.setEnabled(False)  # information, not a command
        return action

    # -- environment ------------------------------------------------------------------------------
    def tray_available(self) -> bool:
        return QSystemTrayIcon.isSystemTrayAvailable()

    def is_training(self) -> bool:
        return self.view.is_running()

    # -- following the run ------------------------------------------------------------------------
    def _on_view_state(self, state: str) -> None:
        run = getattr(self.view, "run", None)
        if run is not None and run is not self.run:
            self._attach(run)
        self.view_state = state
        if state == "failed" and not self.reason:  # the view shows the reason before it says "failed"
            self.reason = self.view.error.text.text()
        if state == "finished":
            self.eta = 0.0
        self._update()

    def _attach(self, run) -> None:
        self.run = run
        self.step, self.total_steps = 0, run.config.iters or 0
        self.train_loss = self.tokens_per_second = self.eta = None
        self.val_loss = self.best_val_loss = None
        self.reason = ""
        self.run_folder = str(run.config.output)
        run.connect(trainReport=self._on_train, valReport=self._on_val, stateChanged=self._on_run_state)

    def _on_train(self, r) -> None:
        self.step, self.total_steps = r.step, r.total_steps
        self.train_loss, self.tokens_per_second, self.eta = r.loss, r.tokens_per_second, r.eta_seconds
        self._update()

    def _on_val(self, r) -> None:
        self.val_loss = r.val_loss
        if r.val_loss == r.val_loss and (self.best_val_loss is None or r.val_loss < self.best_val_loss):
            self.best_val_loss = r.val_loss
        self._update()

    def _on_run_state(self, state: str, reason: str, step: int) -> None:
        if state == "failed":
            self.reason = reason
        if step:
            self.step = max(self.step, step)

    def _on_run_ended(self, final: str) -> None:
        self.view_state = final
        self._update()
        if final == "finished":
            val = f" · validation loss {self.val_loss:.3f}" if self.val_loss is not None else ""
            self.notify("Training finished",
                        f"{self.step:,} steps{val}. The adapter is in {Path(self.run_folder).name or self.run_folder}.",
                        "information")
        elif final == "failed":
            self.notify("Training failed", self.reason or self.view.error.text.text() or "The run stopped with an error.",
                        "critical")
        if self._quitting:
            QTimer.singleShot(0, self._finish_quit)

    # -- what the menu says -----------------------------------------------------------------------
    def _fraction(self) -> float | None:
        if self.state != "training" or not self.total_steps or self.view_state in ("loading", "preparing"):
            return None
        return min(1.0, max(0.0, self.step / self.total_steps))

    def status_text(self) -> str:
        s, step, total = self.view_state, self.step, self.total_steps
        of = f"step {step:,} of {total:,}" if total else f"step {step:,}"
        if self.run is None:
            return "No training run"
        if s == "loading":
            return "Loading the model…"
        if s == "preparing":
            return "Preparing the data…"
        if s in ("started", "resumed"):
            pct = f" ({step / total:.0%})" if total else ""
            return f"Training · {of}{pct}"
        if s == "pausing":
            return f"Pausing after this step · {of}"
        if s == "paused":
            return f"Paused · {of}"
        if s == "stopping":
            return "Saving a checkpoint and stopping…" if self._quitting or self.run.control.save_on_stop else "Stopping…"
        if s == "finished":
            return f"Finished · {step:,} steps"
        if s == "stopped":
            return f"Stopped at {of}"
        if s == "failed":
            reason = " ".join((self.reason or "the run stopped with an error").split())
            return "Failed: " + (reason if len(reason) <= 90 else reason[:89] + "…")
        return "Ready"

    def validation_text(self) -> str:
        if self.val_loss is None:
            return "Validation loss –"
        best = f" · best {self.best_val_loss:.3f}" if self.best_val_loss is not None else ""
        return f"Validation loss {self.val_loss:.3f}{best}"

    def speed_text(self) -> str:
        tps = f"{self.tokens_per_second:,.0f} tokens/s" if self.tokens_per_second is not None else "– tokens/s"
        if self.view_state in ("finished", "stopped", "failed"):
            return tps
        eta = format_duration(self.eta) if self.eta is not None else "–"
        return f"{tps} · {eta} left"

    def menu_lines(self) -> list[str]:
        """The menu as a person reads it: visible entries, separators as "—", commands that cannot
        be used now marked "(disabled)"."""
        info = (self.act_status, self.act_val, self.act_speed)
        return ["—" if a.isSeparator() else a.text() + ("" if a.isEnabled() or a in info else " (disabled)")
                for a in self.menu.actions() if a.isVisible()]

    def refresh(self) -> None:
        self.act_status.setText(self.status_text())
        self.act_val.setText(self.validation_text())
        self.act_speed.setText(self.speed_text())
        has_stats = self.run is not None and self.view_state not in ("loading", "preparing")
        self.act_val.setVisible(has_stats)
        self.act_speed.setVisible(has_stats)
        active = self.view_state in ("started", "resumed", "paused", "pausing")
        self.act_pause.setEnabled(active and not self._quitting)
        self.act_pause.setText("Resume" if self.view_state in PAUSED_STATES else "Pause")
        self.act_stop.setEnabled(self.is_training() and self.view_state != "stopping" and not self._quitting)
        self.act_quit.setEnabled(not self._quitting)
        tip = "Finetune · " + self.status_text()
        self.tray.setToolTip(tip)

    def _set_icon(self, state: str, fraction: float | None) -> None:
        name = tray_icon_name(state, fraction if state == "training" else None)
        if name != self.icon_name or self.tray.icon().isNull():
            self.icon_name = name
            progress = fraction if state == "training" else None
            self.tray.setIcon(tray_icon(state, progress))
            # the same picture beside the status line, in the menu's own text colour
            text = self.menu.palette().color(QPalette.ColorGroup.Active, QPalette.ColorRole.WindowText)
            self.act_status.setIcon(tray_icon(state, progress, colour=text))

    def _update(self) -> None:
        new_state = tray_state(self.view_state) if self.run is not None else "idle"
        changed = new_state != self.state
        self.state = new_state
        self._set_icon(self.state, self._fraction())
        self.refresh()
        if changed:
            self.stateChanged.emit(self.state)

    def notify(self, title: str, text: str, kind: str = "information") -> None:
        """A native notification (QSystemTrayIcon.showMessage) when the tray can show one."""
        self.notifications.append((title, text, kind))
        icons = {"information": QSystemTrayIcon.MessageIcon.Information,
                 "warning": QSystemTrayIcon.MessageIcon.Warning, "critical": QSystemTrayIcon.MessageIcon.Critical}
        if self.tray.isVisible() and QSystemTrayIcon.supportsMessages():
            self.tray.showMessage(title, text, icons.get(kind, QSystemTrayIcon.MessageIcon.Information), 8000)

    # -- commands ---------------------------------------------------------------------------------
    def toggle_pause(self) -> None:
        self.view.toggle_pause()

    def stop(self) -> None:
        self.view.request_stop()

    def show_window(self) -> None:
        app = QApplication.instance()
        if app is not None:
            app.setQuitOnLastWindowClosed(True)
        w = self.window
        if w.isMinimized():
            w.showNormal()
        w.show()
        w.raise_()
        w.activateWindow()

    def _on_activated(self, reason) -> None:
        if sys.platform != "darwin" and reason in (QSystemTrayIcon.ActivationReason.Trigger,
                                                   QSystemTrayIcon.ActivationReason.DoubleClick):
            self.show_window()

    def quit_app(self) -> None:
        """Quit; mid-run: ask, stop with save=True, wait for the checkpoint, then quit."""
        if self._quitting:
            return
        if self.is_training():
            parent = self.window if self.window.isVisible() else None
            if not ask_quit_while_training(parent, self.step):
                return
            self._quitting = True
            if self.is_training():  # it may have ended while the question was open
                if self.view_state != "stopping":
                    self.view.stop(save=True)
                elif self.run is not None:
                    self.run.control.stop(save=True)
                self.refresh()
                return  # _on_run_ended finishes the quit once the worker has saved
        self._quitting = True
        self._finish_quit()

    def _finish_quit(self) -> None:
        if self.run is not None:
            self.run.wait(60000)  # the worker has emitted done; let its thread end
        self.quitting.emit()
        w = self.window
        w.removeEventFilter(self)
        w.close()
        self.tray.hide()
        self.quit_function()

    # -- the window's close button ----------------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:
        if obj is self.window and event.type() == QEvent.Type.Close and not self._quitting:
            if self.is_training() and self.tray_available():
                event.ignore()
                self.hide_window()
                return True
        return False

    def hide_window(self) -> None:
        """Hide (not close) the window: training goes on, the menu-bar item stays."""
        app = QApplication.instance()
        if app is not None:
            app.setQuitOnLastWindowClosed(False)
        self.window.hide()
        if not self._hid_once:
            self._hid_once = True
            self.notify("Finetune keeps training",
                        "The window is closed, the run goes on. Use the menu-bar item to follow it, show the "
                        "window again, or quit (a checkpoint is saved first).")

    def dispose(self) -> None:
        self.tray.hide()
        try:
            self.window.removeEventFilter(self)
        except RuntimeError:
            pass

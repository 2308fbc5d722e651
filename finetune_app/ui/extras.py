"""Caption tests, base-vs-fine-tuned comparison, the menu-bar item and picture drops, added to the
main window by one call:

    from finetune_app.ui.extras import attach_extras
    self.extras = attach_extras(self)      # at the end of MainWindow.__init__

What it adds: the "Test Captions" and "Compare" tabs (sharing one InferenceService thread with its
own copy of the models), the TrayController (menu-bar item wired to the TrainingView and each
run's worker signals; hide-on-close while training; quit that saves a checkpoint first), a drop
handler on the window that sends pictures to the caption panel (everything else still goes to
MainWindow.dropEvent: datasets, models, settings), and the File ▸ Quit action rerouted to the
tray's quit (ask, stop with save=True, wait for the checkpoint, quit).

What it reads on the window (see docs/caption-and-tray.md for the contract): `tabs`, `training`
(TrainingView: `run`, `state`, `stateShown`, `runEnded`, `is_running()`, `toggle_pause()`,
`request_stop()`, `stop(save=)`, `error`), `run` (TrainingRun: `config`, `connect()`, `wait()`,
`control`), `model_choice.path`, `dataset_check.dataset.path`, `form.config()` and `menuBar()`.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication

from finetune_app.ui.caption_panel import CaptionPanel, InferenceService, wants_drop
from finetune_app.ui.compare_view import CompareView
from finetune_app.ui.tray import TrayController


class Extras(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.setObjectName("finetuneExtras")
        self.window = window
        self.service = InferenceService(self)
        self.caption_panel = CaptionPanel(self.service, context_fn=self.context)
        self.compare_view = CompareView(self.service, context_fn=self.context)
        self.caption_tab = window.tabs.addTab(self.caption_panel, "Test Captions")
        self.compare_tab = window.tabs.addTab(self.compare_view, "Compare")
        self.tray = TrayController(window, self)
        window.setAcceptDrops(True)
        window.installEventFilter(self)
        self.quit_actions = self._reroute_quit()
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        self._shut = False

    # -- what the window knows ----------------------------------------------------------------------
    def context(self) -> dict:
        w = self.window
        ctx: dict = {}
        choice = getattr(w, "model_choice", None)
        if choice is not None and getattr(choice, "path", None):
            ctx["model"] = str(choice.path)
        check = getattr(w, "dataset_check", None)
        if check is not None:
            ctx["data"] = str(check.dataset.path)
        try:
            cfg = w.form.config()
            if isinstance(cfg.valid_fraction, float | int) and isinstance(cfg.seed, int):
                ctx["valid_fraction"], ctx["seed"] = float(cfg.valid_fraction), int(cfg.seed)
        except Exception:
            pass
        run = getattr(w, "run", None) or getattr(getattr(w, "training", None), "run", None)
        if run is not None:
            c = run.config
            ctx.update(run_dir=str(c.output), run_model=str(c.model), run_data=str(c.data),
                       run_valid_fraction=float(c.valid_fraction), run_seed=int(c.seed), run_image_size=c.image_size)
        return ctx

    # -- pictures dropped anywhere on the window ------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:
        if obj is self.window:
            t = event.type()
            if t in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and wants_drop(event.mimeData()):
                event.acceptProposedAction()
                return True
            if t == QEvent.Type.Drop and wants_drop(event.mimeData()):
                event.acceptProposedAction()
                self.show_captions()
                self.caption_panel.handle_mime(event.mimeData())
                return True
        return False

    def show_captions(self) -> None:
        self.window.tabs.setCurrentWidget(self.caption_panel)

    def show_compare(self) -> None:
        self.window.tabs.setCurrentWidget(self.compare_view)

    # -- quitting ---------------------------------------------------------------------------------
    def _reroute_quit(self) -> list[QAction]:
        """File ▸ Quit (and ⌘Q, which is that action on macOS) goes through the tray's quit: with a
        run going, closing the window only hides it, so Quit must stop, save and quit itself."""
        found = []
        for menu_action in self.window.menuBar().actions():
            menu = menu_action.menu()
            if menu is None:
                continue
            for action in menu.actions():
                if action.menuRole() == QAction.MenuRole.QuitRole:
                    try:
                        action.triggered.disconnect()
                    except (RuntimeError, TypeError):
                        pass
                    action.triggered.connect(self.tray.quit_app)
                    found.append(action)
        return found

    def shutdown(self) -> None:
        """End the caption worker (cancels what is queued; waits for the current token)."""
        if self._shut:
            return
        self._shut = True
        self.service.shutdown()
        self.tray.dispose()


def attach_extras(window) -> Extras:
    """Add caption tests, comparison, the menu-bar item and picture drops to a MainWindow
    (once: a second call returns the same Extras)."""
    existing = getattr(window, "extras", None)
    if isinstance(existing, Extras):
        return existing
    extras = Extras(window)
    window.extras = extras
    return extras

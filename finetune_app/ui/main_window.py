"""The main window: Dataset, Model & Settings and Training screens, the toolbar, files dropped on it.

It wires the screens together (a chosen model makes the dataset recount its tokens and the form
estimate memory; the dataset's split sizes follow the form's validation share and seed), decides
when a run can start and says why not, starts runs on the training thread, persists settings and
recent items, and asks before closing while a model is training.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QLabel,
    QMainWindow,
    QMessageBox,
    QStyle,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core.config import TrainConfig
from finetune_app.ui.app import app_data_dir, runs_dir, settings
from finetune_app.ui.dataset_browser import DatasetBrowser
from finetune_app.ui.hyperparams import HyperparamForm
from finetune_app.ui.model_picker import ModelPicker
from finetune_app.ui.training_view import TrainingView
from finetune_app.ui.widgets import Banner, message_of
from finetune_app.ui.workers import Task, TrainingRun, build_demo

RECENT_DATASETS_KEY = "datasets/recent"
LAST_MODEL_KEY = "session/model"
FORM_KEY = "form/config"
DOWNLOAD_MODEL = "mlx-community/FastVLM-0.5B-bf16"
# The demo: a tiny random Qwen2-VL learns "a {colour} {shape}" (600 steps: colour and shape mostly
# right on held-out pictures; see shared/reference/mlx-findings.md).
DEMO_SETTINGS = dict(fine_tune_type="lora", lora_rank=16, lora_alpha=16.0, learning_rate=1e-3, iters=600,
                     epochs=None, batch_size=4, lr_schedule="cosine", warmup_steps=0, steps_per_report=10,
                     steps_per_eval=100, save_every=200, sample_count=4, sample_max_tokens=12)

TAB_DATASET, TAB_SETTINGS, TAB_TRAINING = 0, 1, 2
CLUSTER_KEY, CLUSTER_ON_KEY = "cluster/hosts", "cluster/enabled"


def recent_datasets() -> list[str]:
    value = settings().value(RECENT_DATASETS_KEY, [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or []) if str(v).strip()]


def ask_close_while_training(parent) -> bool:
    """True when the person chose "Stop and Save" (the window then closes once the run has saved)."""
    box = QMessageBox(parent)
    box.setObjectName("closeWhileTrainingDialog")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Training is running")
    box.setText("A model is training. Stop it and save before closing?")
    box.setInformativeText("The adapter and a checkpoint are saved in the run folder, so nothing learned is lost.")
    stop = box.addButton("Stop and Save", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(stop)
    box.exec()
    return box.clickedButton() is stop


def ask_start_despite_memory(parent, warning: str) -> bool:
    """Before a run that would swap: True only when the person chose "Start Anyway"."""
    box = QMessageBox(parent)
    box.setObjectName("memoryWarningDialog")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Not enough memory")
    box.setText("This run would probably not fit in memory.")
    box.setInformativeText(warning)
    start = box.addButton("Start Anyway", QMessageBox.ButtonRole.AcceptRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.exec()
    return box.clickedButton() is start


def launch_facts(_task=None) -> tuple[list, bool]:
    """At launch, off the window's thread: the interrupted runs that can resume (dead runs are
    marked interrupted first) and whether any run was ever recorded (the welcome is only for the
    first one)."""
    from finetune_app.core import runs as core_runs

    with core_runs.open_store() as store:
        found = core_runs.recover_at_startup(store)
        return found, bool(found) or bool(store.runs())


def ask_recovery(parent, rec, count: int) -> str:
    """The launch-time offer for an interrupted run: "resume", "inspect" or "discard"."""
    box = QMessageBox(parent)
    box.setObjectName("recoveryDialog")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("A run was interrupted")
    more = f" ({count - 1} more on the History tab)" if count > 1 else ""
    box.setText(f"Run {rec.id} ({rec.name}) stopped at step {rec.step or 0:,} of {rec.total_steps or 0:,} when its "
                f"process ended{more}.")
    box.setInformativeText("Resume continues it from its newest checkpoint. Inspect shows it on the History "
                           "tab. Discard marks it stopped; its folder is kept.")
    resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
    inspect = box.addButton("Inspect", QMessageBox.ButtonRole.ActionRole)
    discard = box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(resume)
    box.exec()
    clicked = box.clickedButton()
    return {resume: "resume", inspect: "inspect", discard: "discard"}.get(clicked, "later")


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("Finetune")
        self.setUnifiedTitleAndToolBarOnMac(True)
        self.setAcceptDrops(True)
        self.model_choice = None
        self.dataset_check = None
        self.run: TrainingRun | None = None
        self._close_when_stopped = False
        self._demo_task: Task | None = None
        self._launch_task: Task | None = None  # reads the run database at launch (recovery first)

        self.picker = ModelPicker()
        self.browser = DatasetBrowser()
        self.form = HyperparamForm()
        self.training = TrainingView()

        settings_page = QWidget()
        sp = QVBoxLayout(settings_page)
        sp.addWidget(self.picker)
        sp.addSpacing(6)
        sp.addWidget(self.form, 1)
        from finetune_app.ui.cluster_panel import ClusterPanel

        self.cluster = ClusterPanel()
        sp.addWidget(self.cluster)

        self.tabs = QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.browser, "Dataset")
        self.tabs.addTab(settings_page, "Model && Settings")
        self.tabs.addTab(self.training, "Training")
        from finetune_app.ui.run_history import RunHistoryView

        self.history = RunHistoryView()
        self.history.history_repaired.connect(
            lambda text: self.statusBar().showMessage("The run history needed repair: see the History tab.", 0))
        self.tabs.addTab(self.history, "History")
        self.notice = Banner("info")
        self.notice.setObjectName("windowNotice")
        central = QWidget()
        cl = QVBoxLayout(central)
        cl.setContentsMargins(8, 6, 8, 4)
        cl.addWidget(self.notice)
        cl.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self._build_actions()
        self._build_status()

        self.picker.modelChosen.connect(self._on_model)
        self.picker.modelCleared.connect(self._on_model_cleared)
        self.picker.failed.connect(lambda _msg: self.status_model.setText("No model"))
        self.picker.cancelled.connect(lambda: self.status_model.setText("No model"))
        self.browser.checked.connect(self._on_dataset)
        self.browser.opening.connect(self._on_dataset_opening)
        self.browser.failed.connect(self._on_dataset_failed)
        self.form.configChanged.connect(self._on_form_changed)
        self.cluster.changed.connect(self._update_ready)
        self.training.startRequested.connect(self.start_training)
        self.training.runEnded.connect(self._on_run_ended)
        self.training.stateShown.connect(lambda _s: self._update_ready())
        self.training.image_resolver = self._sample_image
        self.training.start_hint.linkActivated.connect(lambda _link: self.show_settings_problems())

        self.history.duplicate_config.connect(self._duplicate_config)
        self.history.resume_requested.connect(self.resume_run)

        self._restore_settings()
        self._on_form_changed()
        self._update_ready()
        # Menu-bar status, caption testing by drag and drop, base vs fine-tuned comparison.
        from finetune_app.ui.extras import attach_extras

        self.extras = attach_extras(self)

    # -- chrome ------------------------------------------------------------------------------------
    def _build_actions(self) -> None:
        style = self.style()
        icon = style.standardIcon
        SP = QStyle.StandardPixmap
        # Datasets are files (JSONL, CSV, JSON) or folders: one action each, Ctrl+O for files.
        self.act_open = QAction(icon(SP.SP_FileIcon), "Open Dataset File…", self)
        self.act_open.setShortcut(QKeySequence.StandardKey.Open)
        self.act_open.setToolTip("Open a JSONL, CSV or JSON dataset file")
        self.act_open.triggered.connect(self._open_dataset_file_dialog)
        self.act_open_folder = QAction(icon(SP.SP_DirOpenIcon), "Open Dataset Folder…", self)
        self.act_open_folder.setShortcut(QKeySequence("Ctrl+Shift+O"))
        self.act_open_folder.setToolTip("Open a folder of images with captions (captions.csv, metadata.jsonl…)")
        self.act_open_folder.triggered.connect(self._open_dataset_dialog)
        self.act_model = QAction(icon(SP.SP_DriveHDIcon), "Choose Model…", self)
        self.act_model.setShortcut(QKeySequence("Ctrl+L"))  # Ctrl/⌘+M is Minimise (Window menu)
        self.act_model.triggered.connect(self._focus_model)
        self.act_start = QAction(icon(SP.SP_MediaPlay), "Start Training", self)
        self.act_start.setShortcut(QKeySequence("Ctrl+R"))
        self.act_start.triggered.connect(self.start_training)
        self.act_pause = QAction(icon(SP.SP_MediaPause), "Pause", self)
        self.act_pause.setShortcut(QKeySequence("Ctrl+P"))
        self.act_pause.triggered.connect(self.training.toggle_pause)
        # Space pauses and resumes while the Training screen has the focus (not in a text field).
        self.pause_space = QShortcut(QKeySequence(Qt.Key.Key_Space), self.training)
        self.pause_space.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.pause_space.activated.connect(self.training.toggle_pause)
        self.act_stop = QAction(icon(SP.SP_MediaStop), "Stop…", self)
        self.act_stop.setShortcut(QKeySequence("Ctrl+."))
        self.act_stop.triggered.connect(self.training.request_stop)
        self.act_load = QAction("Load Settings…", self)
        self.act_load.triggered.connect(self._load_settings_dialog)
        self.act_save = QAction("Save Settings…", self)
        self.act_save.setShortcut(QKeySequence.StandardKey.Save)
        self.act_save.triggered.connect(self.form.choose_save)
        self.act_demo = QAction("Set Up the Demo", self)
        self.act_demo.triggered.connect(self.start_demo)

        tb = QToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for a in (self.act_open, self.act_open_folder, self.act_model):
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.act_start, self.act_pause, self.act_stop):
            tb.addAction(a)
        self.addToolBar(tb)

        # The standard menu set: App (on macOS Qt moves About, Settings and Quit there by their
        # roles), File, Edit, View, Training, Window, Help.
        self.app_menu = self.menuBar().addMenu("Finetune")
        self.act_about = QAction("About Finetune", self)
        self.act_about.setMenuRole(QAction.MenuRole.AboutRole)
        self.act_about.triggered.connect(self.show_about)
        self.act_settings = QAction("Settings…", self)
        self.act_settings.setShortcut(QKeySequence("Ctrl+,"))
        self.act_settings.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.act_settings.triggered.connect(lambda: self.tabs.setCurrentIndex(TAB_SETTINGS))
        self.app_menu.addAction(self.act_about)
        self.app_menu.addAction(self.act_settings)
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self.act_open)
        file_menu.addAction(self.act_open_folder)
        self.act_label = file_menu.addAction("Label Pictures…", self._label_dialog)
        self.act_label.setToolTip("A folder of pictures without captions: caption them with the base model, "
                                  "correct, save and train")
        self.recent_menu = file_menu.addMenu("Open Recent Dataset")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addAction(self.act_model)
        file_menu.addSeparator()
        file_menu.addAction(self.act_load)
        file_menu.addAction(self.act_save)
        file_menu.addSeparator()
        file_menu.addAction(self.act_demo)
        file_menu.addSeparator()
        quit_action = file_menu.addAction("Quit", self.close)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.act_quit = quit_action
        edit_menu = self.menuBar().addMenu("&Edit")
        for text, key, slot in (("Undo", QKeySequence.StandardKey.Undo, "undo"),
                                ("Redo", QKeySequence.StandardKey.Redo, "redo"),
                                (None, None, None),
                                ("Cut", QKeySequence.StandardKey.Cut, "cut"),
                                ("Copy", QKeySequence.StandardKey.Copy, "copy"),
                                ("Paste", QKeySequence.StandardKey.Paste, "paste"),
                                ("Select All", QKeySequence.StandardKey.SelectAll, "selectAll")):
            if text is None:
                edit_menu.addSeparator()
                continue
            action = edit_menu.addAction(text, lambda s=slot: self._edit(s))
            action.setShortcut(key)
            action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)  # the menu item; fields keep their keys
        view_menu = self.menuBar().addMenu("&View")
        for i, name in enumerate(("Dataset", "Model && Settings", "Training", "History")):
            action = view_menu.addAction(name, lambda i=i: self.tabs.setCurrentIndex(i))
            action.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
        view_menu.addSeparator()
        view_menu.addAction(tb.toggleViewAction())
        run_menu = self.menuBar().addMenu("&Training")
        for a in (self.act_start, self.act_pause, self.act_stop):
            run_menu.addAction(a)
        run_menu.addSeparator()
        self.act_export = QAction("Export Model…", self)
        self.act_export.setShortcut(QKeySequence("Ctrl+E"))
        self.act_export.triggered.connect(self.open_export_wizard)
        run_menu.addAction(self.act_export)
        window_menu = self.menuBar().addMenu("&Window")
        self.act_minimise = window_menu.addAction("Minimise", self.showMinimized)
        self.act_minimise.setShortcut(QKeySequence("Ctrl+M"))
        window_menu.addAction("Zoom", lambda: self.showNormal() if self.isMaximized() else self.showMaximized())
        full = window_menu.addAction("Enter Full Screen",
                                     lambda: self.showNormal() if self.isFullScreen() else self.showFullScreen())
        full.setShortcut(QKeySequence.StandardKey.FullScreen)
        help_menu = self.menuBar().addMenu("&Help")
        self.act_help = help_menu.addAction("Finetune Help", self.open_help)
        self.act_help.setShortcut(QKeySequence.StandardKey.HelpContents)
        help_menu.addAction("Set Up the Demo", self.start_demo)

    def _edit(self, slot: str) -> None:
        """Edit menu: the standard edit on whatever has the focus (a field, the log…)."""
        from PySide6.QtWidgets import QApplication

        widget = QApplication.focusWidget()
        if widget is not None and hasattr(widget, slot):
            getattr(widget, slot)()

    def open_help(self) -> bool:
        """Help opens the bundled documentation (the README) in the system's viewer."""
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        from finetune_app.resources import help_path

        try:
            path = help_path()
        except Exception as exc:
            self.notice.show_message("The help is not installed", message_of(exc), "warning")
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    def show_about(self) -> None:
        from finetune_app import __version__ as version

        QMessageBox.about(self, "About Finetune", f"<b>Finetune</b> {version}<br>Fine-tune vision-language and "
                          "language models on your own pictures and text, with MLX.")

    def _build_status(self) -> None:
        self.status_model = QLabel("No model")
        self.status_model.setObjectName("statusModel")
        self.status_data = QLabel("No dataset")
        self.status_data.setObjectName("statusData")
        self.statusBar().addPermanentWidget(self.status_model)
        self.statusBar().addPermanentWidget(self.status_data)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        items = recent_datasets()
        if not items:
            self.recent_menu.addAction("No recent datasets").setEnabled(False)
        for path in items:
            self.recent_menu.addAction(path, lambda p=path: self.open_dataset(p))

    def _focus_model(self) -> None:
        self.tabs.setCurrentIndex(TAB_SETTINGS)
        self.picker.source.setFocus()
        self.picker.source.lineEdit().selectAll()

    def _open_dataset_dialog(self) -> None:
        self.tabs.setCurrentIndex(TAB_DATASET)
        self.browser.choose_folder()

    def _label_dialog(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Label the pictures of a folder", str(Path.home()))
        if folder:
            self.label_folder(folder)

    def label_folder(self, folder: str):
        """The Label tab on this folder's pictures (created the first time)."""
        if getattr(self, "labeller", None) is None:
            from finetune_app.ui.labelling import LabelPanel

            self.labeller = LabelPanel()
            self.labeller.saved.connect(self.open_dataset)
            self.tabs.addTab(self.labeller, "Label")
        if self.model_choice is not None:
            self.labeller.set_model(str(self.model_choice.path))
        self.labeller.open_folder(folder)
        self.tabs.setCurrentWidget(self.labeller)
        return self.labeller

    def _open_dataset_file_dialog(self) -> None:
        self.tabs.setCurrentIndex(TAB_DATASET)
        self.browser.choose_file()

    def _load_settings_dialog(self) -> None:
        self.tabs.setCurrentIndex(TAB_SETTINGS)
        self.form.choose_load()

    # -- opening things ----------------------------------------------------------------------------
    def open_paths(self, paths) -> None:
        """Files and folders from the command line or dropped on the window: each goes where it fits."""
        for raw in paths:
            path = Path(raw).expanduser()
            if path.suffix.lower() == ".toml" and path.is_file():
                cfg = self.form.load(path)
                if cfg is not None:
                    self.tabs.setCurrentIndex(TAB_SETTINGS)
            elif _is_model_folder(path):
                self.load_model(str(path))
            else:
                self.open_dataset(str(path))

    def open_dataset(self, path: str) -> None:
        self.tabs.setCurrentIndex(TAB_DATASET)
        self.browser.open_path(path)

    def load_model(self, source: str) -> None:
        self.picker.load(source)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    # -- reactions ---------------------------------------------------------------------------------
    def _on_model(self, choice) -> None:
        self.model_choice = choice
        self.browser.set_model(choice)
        self.form.set_model(choice)
        self.status_model.setText(f"Model: {choice.info.family} · {choice.name}")
        settings().setValue(LAST_MODEL_KEY, str(choice.path))
        if getattr(self, "labeller", None) is not None:
            self.labeller.set_model(str(choice.path))
        self._update_cluster_paths()
        self._update_ready()

    def _on_model_cleared(self) -> None:
        self.model_choice = None
        self.form.set_model(None)
        self.status_model.setText("Model: loading…")
        self._update_ready()

    def _on_dataset_opening(self, path: str) -> None:
        self.dataset_check = None
        self.status_data.setText(f"Dataset: opening {Path(path).name}…")
        self._update_ready()

    def _on_dataset_failed(self, _message: str) -> None:
        self.dataset_check = None
        name = Path(self.browser._path or "").name
        self.status_data.setText(f"Dataset: {name} could not be opened" if name else "No dataset")
        self._update_ready()

    def _on_dataset(self, check) -> None:
        self.dataset_check = check
        r = check.report
        self.status_data.setText(f"Dataset: {Path(str(check.dataset.path)).name} · {r.rows_usable:,} usable rows")
        lengths = r.token_lengths.values()
        self.form.set_dataset_stats(len(self.browser.train_rows), max(lengths) if lengths else None,
                                    check.exact_tokens)
        path = str(check.dataset.path)
        items = [path] + [p for p in recent_datasets() if p != path]
        s = settings()
        s.setValue(RECENT_DATASETS_KEY, items[:10])
        self._update_cluster_paths()
        self._update_ready()

    def _update_cluster_paths(self) -> None:
        model = str(self.model_choice.path) if self.model_choice is not None else ""
        data = str(self.dataset_check.dataset.path) if self.dataset_check is not None else ""
        self.cluster.set_paths(model, data)

    def _on_form_changed(self) -> None:
        cfg = self.form.config()
        if isinstance(cfg.valid_fraction, float) and isinstance(cfg.seed, int):
            self.browser.set_split_params(cfg.valid_fraction, cfg.seed)
        self.browser.set_max_length(cfg.max_length if isinstance(cfg.max_length, int) else None)
        if self.dataset_check is not None:
            self.form.train_rows = len(self.browser.train_rows)
        self._update_ready()

    def why_not_ready(self) -> str:
        """Empty when a run can start; else what is missing, in plain words."""
        if self.training.is_running():
            return "A run is in progress."
        missing = []
        if self.model_choice is None:
            missing.append("choose a base model (Model & Settings)")
        if self.dataset_check is None:
            missing.append("open a dataset")
        elif not self.dataset_check.report.rows_usable:
            missing.append("fix the dataset: no row is usable")
        if not self.form.is_valid():
            names = self.form.problem_names()
            missing.append("fix the settings marked in red (" + ", ".join(names[:4])
                           + (f" and {len(names) - 4} more" if len(names) > 4 else "") + ")")
        if not missing and self.cluster.why_not_ready():
            return self.cluster.why_not_ready()
        return ("To start: " + "; ".join(missing) + ".") if missing else ""

    def _update_ready(self) -> None:
        why = self.why_not_ready()
        running = self.training.is_running()
        # No reason is kept while a run is on screen: at its end the Training screen would show
        # "A run is in progress." for an instant, relaying out and repainting every plot (issue 18).
        self.training.set_can_start(not why, "" if running else why)
        self.act_start.setEnabled(not why and not running)
        self.act_start.setToolTip(why or "Start training with these settings")
        state = self.training.state
        self.act_pause.setEnabled(state in ("started", "resumed", "paused", "pausing"))
        self.act_pause.setText("Resume" if state in ("paused", "pausing") else "Pause")
        self.act_stop.setEnabled(running and state != "stopping")

    # -- training ----------------------------------------------------------------------------------
    def new_run_folder(self) -> Path:
        name = Path(str(self.dataset_check.dataset.path)).name or "run"
        base = runs_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder, n = base, 1
        while folder.exists():
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        return folder

    def start_training(self) -> bool:
        why = self.why_not_ready()
        if why or self.training.is_running():
            if why:
                self.notice.show_message("Not ready to train", why, "warning")
                if not self.form.is_valid() and not self.training.is_running():
                    self.show_settings_problems()
            return False
        warning = self.form.memory_warning()
        if warning and not ask_start_despite_memory(self, warning):
            return False
        form_cfg = self.form.config()
        output = form_cfg.output or str(self.new_run_folder())
        cfg = form_cfg.replace(model=str(self.model_choice.path), data=str(self.dataset_check.dataset.path),
                               output=output)
        try:
            cfg.validate()
        except Exception as exc:
            self.notice.show_message("These settings cannot start a run", message_of(exc), "error")
            return False
        self.notice.hide()
        if self.cluster.isChecked():  # several machines: mlx.launch, this machine is rank 0
            from finetune_app.ui.workers import DistributedTrainingRun

            self.run = DistributedTrainingRun(cfg, self.cluster.host_list(), parent=self)
        else:
            self.run = TrainingRun(cfg, parent=self)
        self.training.attach(self.run)
        # The click's work in turns of the event loop, none a stall one can see (issue 18): the run
        # now; then the Training tab, painted a part per turn (TrainingView.show_in_turns); the
        # settings file (~25 ms) and the thread once it has painted, so that the first paint does
        # not compete for the GIL with the trainer's busiest moments.
        QTimer.singleShot(0, self._show_training_then_start)
        self._update_ready()
        return True

    def _show_training_then_start(self, *, save_form: bool = True) -> None:
        run = self.run

        def start() -> None:
            if save_form:
                self._save_form()
            QTimer.singleShot(0, self, lambda: run.started or run.start())

        self.training.show_in_turns(self.show_training_tab, start)

    def show_training_tab(self) -> None:
        self.tabs.setCurrentIndex(TAB_TRAINING)

    def open_export_wizard(self) -> None:
        """The export wizard for the current model and the latest run's adapter."""
        from finetune_app.ui.export_wizard import ExportWizard

        model = str(self.model_choice.path) if self.model_choice is not None else ""
        adapter = self.run.config.output if self.run is not None else ""
        ExportWizard(self, model=model, adapter=adapter).exec()
        self.history.refresh()

    def show_settings_problems(self) -> None:
        """The Model & Settings tab, scrolled to the first setting to fix."""
        self.tabs.setCurrentIndex(TAB_SETTINGS)
        QTimer.singleShot(0, self.form.show_first_problem)  # once the tab has its geometry

    def _duplicate_config(self, cfg) -> None:
        self.form.set_config(cfg)
        self.tabs.setCurrentIndex(TAB_SETTINGS)

    def resume_run(self, run_id: int) -> None:
        """Continue an interrupted or finished run from its last checkpoint (run history)."""
        from finetune_app.ui.run_history import resume_training_config

        if self.training.is_running():
            self.notice.show_message("A run is already training", "Stop it before resuming another.", "warning")
            return
        try:
            cfg = resume_training_config(run_id)
        except Exception as exc:
            self.notice.show_message("This run cannot be resumed", message_of(exc), "error")
            return
        c = self.cluster  # on the checked hosts when they were checked for this run's model and data
        if c.isChecked() and not c.why_not_ready() and (c.model, c.data) == (cfg.model, cfg.data):
            from finetune_app.ui.workers import DistributedTrainingRun

            self.run = DistributedTrainingRun(cfg, c.host_list(), resume=True, parent=self)
        else:
            self.run = TrainingRun(cfg, resume=True, parent=self)
        total = None
        try:
            from finetune_app.core import runs as core_runs

            with core_runs.open_store() as store:
                rec = store.get(run_id)
                total = rec.total_steps if rec is not None else None
        except Exception:
            pass  # the record only adds the total; the run's first report brings it anyway
        if self.model_choice is None or str(self.model_choice.path) != cfg.model:
            self.status_model.setText(f"Model: {Path(cfg.model).name} (run {run_id})")
        if self.dataset_check is None or str(self.dataset_check.dataset.path) != cfg.data:
            self.status_data.setText(f"Dataset: {Path(cfg.data).name} (run {run_id})")
        self.training.attach(self.run, total_steps=total)
        self._show_training_then_start(save_form=False)

    def _sample_image(self, item):
        """The ImageRef of a run's sample item: row `item.index` of the run's dataset."""
        run = self.run
        check = self.dataset_check
        if run is None:
            return None
        if check is not None and str(check.dataset.path) == run.config.data:
            dataset = check.dataset
        else:  # a resumed run's dataset, opened once (not at every sample card)
            cached = getattr(self, "_run_dataset", None)
            if cached is None or cached[0] != run.config.data:
                from finetune_app.core.data import open_dataset

                cached = (run.config.data, open_dataset(run.config.data, format=run.config.data_format))
                self._run_dataset = cached
            dataset = cached[1]
        sample = dataset.sample(item.index)
        return sample.images[0] if sample.images else None

    def _on_run_ended(self, state: str) -> None:
        if self.run is not None:
            self.run.wait(10000)
        self._update_ready()
        if self._close_when_stopped:
            self._close_when_stopped = False
            QTimer.singleShot(0, self.close)

    # -- demo and welcome --------------------------------------------------------------------------
    def maybe_show_welcome(self) -> None:
        """At launch, once the window is on screen: an interrupted run is offered first (resume,
        inspect or discard); else the welcome, only until the first run; else the last model and
        dataset are reopened."""
        QTimer.singleShot(0, self._at_launch)

    def _at_launch(self) -> None:
        """Read the run database on a worker (opening it may create, migrate or repair it: 20-55 ms
        of the window's thread); the offer or the welcome follows when the answer arrives."""
        task = Task(launch_facts, name="launch", parent=self)
        task.succeeded.connect(self._on_launch_facts)
        task.failed.connect(self._on_launch_failed)
        self._launch_task = task
        task.start()

    def _on_launch_failed(self, _exc) -> None:
        self._on_launch_facts(([], False))  # an unreadable history must not keep the welcome away

    def _on_launch_facts(self, facts) -> None:
        self._launch_task = None
        found, has_runs = facts
        self.history.show_repairs()  # a damaged run database was moved aside and rebuilt: say so
        if self.offer_recovery(found):
            return
        if has_runs:
            self.reopen_last_session()
        else:
            self._welcome()

    def reopen_last_session(self) -> None:
        """The model and dataset of the last session, when they are still there."""
        model = str(settings().value(LAST_MODEL_KEY, "") or "")
        if model and _is_model_folder(Path(model)):
            self.load_model(model)
        recent = recent_datasets()
        if recent and Path(recent[0]).exists():
            self.open_dataset(recent[0])

    def offer_recovery(self, found=None) -> bool:
        """Ask about the newest interrupted run that can continue; True when one was offered.
        `found`: the interrupted runs already read (at launch, on a worker); None reads them here."""
        from finetune_app.core import runs as core_runs

        if found is None:
            try:
                found = core_runs.recover_at_startup()
            except Exception:
                return False
        if not found:
            return False
        rec = found[0]
        choice = ask_recovery(self, rec, len(found))
        self.history.refresh()
        if choice == "resume":
            self.resume_run(rec.id)
        elif choice == "inspect":
            self.tabs.setCurrentWidget(self.history)
            self.history.select_runs([rec.id])
        elif choice == "discard":
            with core_runs.open_store() as store:
                store.set_status(rec.id, "stopped", "Discarded at launch: not resumed (it can still be "
                                 "resumed from the History tab).")
            self.history.refresh()
        return True

    def _welcome(self) -> None:
        from finetune_app.ui.welcome import CHOICE_DEMO, CHOICE_DOWNLOAD, run_welcome

        choice = run_welcome(self, settings())
        if choice == CHOICE_DEMO:
            self.start_demo()
        elif choice == CHOICE_DOWNLOAD:
            self.tabs.setCurrentIndex(TAB_SETTINGS)
            self.picker.load(DOWNLOAD_MODEL)

    def start_demo(self) -> None:
        """Build the tiny model and the shapes pictures in the app-data folder, then load both."""
        if self._demo_task is not None:
            return
        dest = app_data_dir() / "demo"
        self.notice.show_message("Setting up the demo", "Building a tiny model and drawing the demo pictures…", "info")
        task = Task(lambda t: build_demo(dest, t), name="demo", uses_mlx=True, parent=self)
        task.progressed.connect(lambda text: self.notice.show_message("Setting up the demo", str(text), "info"))
        task.succeeded.connect(self._on_demo_ready)
        task.failed.connect(lambda exc: self._demo_failed(exc))
        self._demo_task = task
        task.start()

    def _on_demo_ready(self, paths) -> None:
        self._demo_task = None
        model, data = paths
        # The demo's own valid settings, whatever the form held (saved settings may be invalid).
        self.form.set_config(TrainConfig().replace(**DEMO_SETTINGS, output=""))
        self.load_model(str(model))
        self.open_dataset(str(data))
        self.notice.show_message(
            "The demo is ready",
            "A tiny model that has never seen a picture will learn to name the colour and shape in "
            "each one. Press Start Training and watch the sample captions on the Training screen.", "success")

    def _demo_failed(self, exc) -> None:
        self._demo_task = None
        self.notice.show_message("The demo could not be set up", message_of(exc), "error")

    # -- settings ----------------------------------------------------------------------------------
    def _save_form(self) -> None:
        s = settings()
        s.setValue(FORM_KEY, self.form.config().replace(output="").to_toml())

    def _restore_settings(self) -> None:
        s = settings()
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 820)
        text = s.value(FORM_KEY)
        if isinstance(text, str) and text.strip():
            try:
                data = tomllib.loads(text)
                data = {k: v for k, v in data.items() if k not in ("model", "data", "output")}
                self.form.set_config(TrainConfig.from_dict(data))
            except Exception:
                pass  # settings from another version: keep the defaults
        hosts = s.value(CLUSTER_KEY)
        if isinstance(hosts, str) and hosts:
            self.cluster.restore_json(hosts)
        self.cluster.setChecked(str(s.value(CLUSTER_ON_KEY, "false")).lower() == "true")

    def _save_settings(self) -> None:
        s = settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue(CLUSTER_KEY, self.cluster.to_json())
        s.setValue(CLUSTER_ON_KEY, "true" if self.cluster.isChecked() else "false")
        self._save_form()
        s.sync()

    def shutdown(self) -> None:
        """Before the process exits: no thumbnail decoding or training left running."""
        loader = self.browser.model.loader
        loader.clear()
        loader.pool.waitForDone(3000)
        if self.run is not None and self.run.is_running():
            self.run.stop(save=True)
            self.run.wait(60000)

    def closeEvent(self, event) -> None:
        if self.training.is_running():
            if ask_close_while_training(self):
                self._close_when_stopped = True
                self.training.stop(save=True)
            event.ignore()
            return
        self._save_settings()
        if self.run is not None:
            self.run.wait(30000)
        super().closeEvent(event)

"""Work that must not run on the GUI thread: model download/inspection, dataset checks, the demo
build, and training. Results come back only through Qt signals (queued to the GUI thread).

Two kinds of worker:

* `Task`: a function on a daemon thread, for jobs a person may abandon (a download on a dead
  network can hang in a socket call no one can interrupt; a daemon thread never keeps the app from
  quitting). Cancelling is immediate for the UI (the task's results are ignored from then on) and
  cooperative for the thread (its next progress report raises `Cancelled`).
* `TrainingRun`: a `TrainingWorker` QObject moved to a QThread whose `run` slot starts the run
  there (core.runner.start_run, in the calling thread). MLX streams are thread-local, so the
  trainer's arrays are made, used and released on that thread; every engine event becomes one
  signal, queued to the UI.

Every thread that touched MLX calls `mx.clear_streams()` before it ends: without it the process
aborts at exit ("terminate called without an active exception", measured with mlx 0.32.4).
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.events import ProgressThrottle


class Cancelled(Exception):
    """Raised inside a task's thread when its owner cancelled it."""


def release_mlx_thread_state() -> None:
    """Free this thread's MLX streams (see the module docstring). No gc.collect() here: a full
    collection holds the GIL for hundreds of milliseconds and the window would freeze meanwhile."""
    try:
        import mlx.core as mx

        mx.clear_streams()
    except Exception:
        pass


_LIVE_TASKS: set["Task"] = set()  # keeps each Task alive until its thread ends


class Task(QObject):
    """Run `fn(task)` on a daemon thread. `fn` reports with `task.report(value)` (which raises
    Cancelled once cancelled) and returns its result. Signals arrive on the GUI thread."""

    progressed = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)  # the exception
    ended = Signal()  # after succeeded/failed, also when cancelled (then nothing else is sent)

    def __init__(self, fn: Callable[["Task"], Any], *, name: str = "task", uses_mlx: bool = False,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self._fn = fn
        self._uses_mlx = uses_mlx
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.name = name

    # -- owner side (GUI thread) -------------------------------------------------------------
    def start(self) -> "Task":
        _LIVE_TASKS.add(self)
        # released on the GUI thread (queued), so the QObject is never destroyed on the worker
        self.ended.connect(self._release, Qt.ConnectionType.QueuedConnection)
        self._thread = threading.Thread(target=self._main, name=f"finetune-{self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Abandon: from now on nothing from this task reaches the UI."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.is_running()

    # -- worker side -------------------------------------------------------------------------
    def report(self, value: Any) -> None:
        self.check()
        self.progressed.emit(value)

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def _main(self) -> None:
        try:
            try:
                result = self._fn(self)
            except Cancelled:
                return
            except BaseException as exc:  # shown in a panel, never as a traceback
                if not self.cancelled:
                    self.failed.emit(exc)
                return
            if not self.cancelled:
                self.succeeded.emit(result)
        finally:
            if self._uses_mlx:
                release_mlx_thread_state()
            try:
                self.ended.emit()
            except RuntimeError:
                pass

    @Slot()
    def _release(self) -> None:
        _LIVE_TASKS.discard(self)


# ---- jobs ---------------------------------------------------------------------------------------

@dataclass
class ModelChoice:
    """A resolved model: where it is, what it is, and its tokenizer for counting tokens."""

    source: str
    path: Path
    info: Any  # core.models.ModelInfo
    tokenizer_base: Any = field(repr=False, default=None)  # BaseModel with model=None
    arch: dict = field(default_factory=dict)  # core.estimates.model_sizes: hidden_size, num_layers, ...

    @property
    def name(self) -> str:
        return self.source if not Path(self.source).expanduser().exists() else Path(self.source).name


# What the background jobs and a run import on first use: transformers, mlx-vlm, mlx-lm (and, through
# mlx_lm.tuner, wandb when installed). Every job imports them first, with full garbage collections
# paused (quiet_gc: otherwise each import's allocations set off collections that freeze the window
# for 60-190 ms), so the training thread finds them loaded and its start does not stutter.
# (Modules that only define classes may load here, Qt widget classes included; no widget is made.)
# mlx_vlm comes first: it quietens transformers' advisory warnings before transformers is imported.
WARM_IMPORTS = ("mlx_vlm", "mlx_vlm.generate", "mlx.optimizers", "mlx_lm",
                "mlx_lm.generate", "mlx_lm.sample_utils", "mlx_lm.tuner.utils", "finetune_app.core.models",
                "finetune_app.core.estimates", "finetune_app.core.data", "finetune_app.core.data.tokenize",
                "finetune_app.core.runner", "finetune_app.core.training.trainer", "finetune_app.core.generate",
                # the export wizard's modules: imported on the window's thread they cost ~50 ms at its opening
                "finetune_app.core.export.export", "finetune_app.ui.export_wizard")


def warm_imports(names: tuple[str, ...] = WARM_IMPORTS) -> None:
    import importlib

    from finetune_app.ui import quiet_gc

    with quiet_gc.paused():
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # an optional module missing only means no warm-up for it
                pass


def load_model_choice(source: str, task: Task) -> ModelChoice:
    """Resolve (download with progress) and describe a model without keeping its weights."""
    warm_imports()
    from finetune_app.core.estimates import model_sizes
    from finetune_app.core.models import (
        BaseModel,
        describe,
        load_base,
        resolve_model_path,
    )

    def progress(done: int, total: int, what: str) -> None:
        task.report(("download", done, total, what))

    path = resolve_model_path(source, progress=progress)
    task.report(("inspect", 0, 0, str(path)))
    base = load_base(path, lazy=True)  # lazy: shapes and dtypes without reading the weights
    info = describe(base)
    lite = BaseModel(model=None, processor=base.processor, kind=base.kind, model_type=base.model_type,
                     path=base.path, config=base.config, source=source)
    arch = model_sizes(base.config)
    del base
    return ModelChoice(source=source, path=path, info=info, tokenizer_base=lite, arch=arch)


def rough_token_count(sample) -> int:
    """Without a model: about four characters per token, images not counted."""
    return max(1, round(sum(len(t.text) for t in sample.turns) / 4))


@dataclass
class DatasetCheck:
    """An opened, validated dataset and how its token lengths were counted."""

    dataset: Any  # core.data.Dataset
    report: Any  # core.data.Report
    exact_tokens: bool
    counted_with: str  # model family or "estimate"
    seconds: float = 0.0


def check_dataset(path_or_dataset, model: ModelChoice | None, task: Task) -> DatasetCheck:
    """Open (unless already open) and validate every row; token lengths with the model when given."""
    warm_imports(("finetune_app.core.data", "finetune_app.core.data.tokenize"))
    from finetune_app.core.data import open_dataset, validate
    from finetune_app.core.data.tokenize import Encoder

    t0 = time.perf_counter()
    if isinstance(path_or_dataset, (str, Path)):
        task.report(("opening", 0, 0))
        dataset = open_dataset(path_or_dataset)
    else:
        dataset = path_or_dataset
    counter, exact, counted_with = rough_token_count, False, "estimate"
    if model is not None and model.tokenizer_base is not None:
        encoder = Encoder(model.tokenizer_base)
        counter, exact, counted_with = encoder.count_tokens, True, model.info.family
    last = 0.0

    def progress(done: int, total: int) -> None:
        """A few reports a second, not one a row: each is a queued call on the window's thread, and
        a backlog of them ran as one long turn (348 demo rows: up to 230 ms; issue 18)."""
        nonlocal last
        task.check()  # cancelling still stops the check at the next row
        now = time.monotonic()
        if done >= total or now - last >= 0.1:
            last = now
            task.report(("checking", done, total))

    report = validate(dataset, token_counter=counter, check_images=True, progress=progress)
    return DatasetCheck(dataset, report, exact, counted_with, time.perf_counter() - t0)


def build_demo(dest: Path, task: Task, *, n_train: int = 300, n_valid: int = 48) -> tuple[Path, Path]:
    """The welcome's demo: the tiny Qwen2-VL model and the shapes dataset, in the app-data folder."""
    task.report("Loading the libraries…")
    warm_imports()
    from finetune_app.core.data.demo import make_shapes_dataset
    from finetune_app.testing import DEMO_FAMILY
    from finetune_app.testing.tiny_models import cached_tiny_model

    task.report("Building the tiny demo model…")
    model = cached_tiny_model(DEMO_FAMILY, root=dest / "models")
    data = dest / "shapes"
    if not (data / "captions.csv").is_file():
        task.report("Drawing the demo pictures…")
        make_shapes_dataset(data, n_train=n_train, n_valid=n_valid, size=64, seed=0, overwrite=True)
    return model, data


# ---- training -----------------------------------------------------------------------------------

class TrainingWorker(QObject):
    """Lives on the training QThread. `run()` starts the run there and turns each engine event
    into one signal; pause/resume/stop go through the thread-safe Control."""

    stateChanged = Signal(str, str, int)  # state, reason, step
    progressed = Signal(str, int, int)  # phase, done, total (before training starts)
    trainReport = Signal(object)  # events.TrainReport
    valReport = Signal(object)  # events.ValReport
    sampleReport = Signal(object)  # events.SampleReport
    evalReport = Signal(object)  # events.EvalReport (scores during training)
    objectiveReport = Signal(object)  # events.ObjectiveReport (GRPO's rewards per step and held out)
    checkpointSaved = Signal(int, str)
    notice = Signal(str)
    done = Signal(object)  # RunResult, or None when the run failed


    def __init__(self, config: TrainConfig, *, resume: bool = False, hosts=None):
        super().__init__()
        from finetune_app.core.training.control import Control

        self.config = config
        self.resume = resume
        self.hosts = hosts  # core.cluster.hosts.HostList: train on several machines (mlx.launch)
        self.control = Control()  # exists before the run: the buttons steer it from the start
        self.progress = ProgressThrottle(0.1)  # seconds between Progress signals
        self.failed_reason = ""

    def _on_event(self, event) -> None:  # called on the training thread
        from finetune_app.core.training import events as ev

        if isinstance(event, ev.TrainReport):
            self.trainReport.emit(event)
        elif isinstance(event, ev.ValReport):
            self.valReport.emit(event)
        elif isinstance(event, ev.SampleReport):
            self.sampleReport.emit(event)
        elif isinstance(event, ev.EvalReport):
            self.evalReport.emit(event)
        elif isinstance(event, ev.ObjectiveReport):
            self.objectiveReport.emit(event)
        elif isinstance(event, ev.StateChanged):
            if event.state == "started":
                # The model, data and libraries are loaded: move them out of the collector's sight.
                # Otherwise a full collection (triggered by the step's allocations, on this thread)
                # walks millions of objects holding the GIL, and the window freezes meanwhile.
                gc.freeze()
            if event.state == "failed":
                self.failed_reason = event.reason
            self.stateChanged.emit(event.state, event.reason, event.step)
        elif isinstance(event, ev.Progress):
            if self.progress.due(event):
                self.progressed.emit(event.phase, event.done, event.total)
        elif isinstance(event, ev.CheckpointSaved):
            self.checkpointSaved.emit(event.step, event.path)
        elif isinstance(event, ev.Notice):
            self.notice.emit(event.message)

    def _log_line(self, line: str) -> None:
        """A line from mlx.launch or a rank (not an event): the launcher's warnings go to the log."""
        if line.startswith("[WARN]"):
            self.notice.emit(line.replace("[WARN] ", "").strip())

    @Slot()
    def run(self) -> None:
        """The run, on this QThread (core.runner.start_run in the calling thread): here, or on
        several machines, where rank 0 records the run and its events arrive as a local run's do.
        (One worker class for both: PySide6 6.11 ran a subclass's `run` slot on the GUI thread.)"""
        result = None
        try:
            from finetune_app.core.runner import start_run

            result = start_run(self.config, resume=self.resume, listeners=[self._on_event], control=self.control,
                               hosts=self.hosts, log=self._log_line).result
        except Exception as exc:
            if not self.failed_reason:  # the run reports its own failures; this is before it
                from finetune_app.ui.widgets import message_of

                self.failed_reason = message_of(exc)
                self.stateChanged.emit("failed", self.failed_reason, 0)
        finally:
            release_mlx_thread_state()
            self.done.emit(result)


class TrainingRun(QObject):
    """One training run: its QThread, its worker, and the controls the UI uses."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, parent: QObject | None = None,
                 worker: TrainingWorker | None = None):
        super().__init__(parent)
        self.config = config
        self.thread = QThread()
        self.thread.setObjectName("finetune-training")
        self.worker = worker or TrainingWorker(config, resume=resume)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.done.connect(self.thread.quit, Qt.ConnectionType.DirectConnection)
        self.result = None
        self.started = False
        self.worker.done.connect(self._keep_result, Qt.ConnectionType.QueuedConnection)

    def connect(self, **slots) -> None:
        """Connect worker signals to UI slots, always queued: `run.connect(trainReport=view.add)`.

        Slots must be methods of QObjects that live on the GUI thread: a queued call to a plain
        function or lambda has no receiver thread, is posted to the training thread, and never
        runs once that thread's loop has ended."""
        for name, slot in slots.items():
            getattr(self.worker, name).connect(slot, Qt.ConnectionType.QueuedConnection)

    def _keep_result(self, result) -> None:
        self.result = result

    @property
    def control(self):
        return self.worker.control

    def start(self) -> None:
        self.started = True
        self.thread.start()

    def is_running(self) -> bool:
        return self.thread.isRunning()

    def pause(self) -> None:
        self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    def stop(self, *, save: bool = True) -> None:
        self.control.stop(save=save)

    def wait(self, ms: int = 30000) -> bool:
        return self.thread.wait(ms)

    def terminate(self) -> None:
        """A run on several machines: stop every rank now (rank 0 saves the last finished step)."""
        self.control.terminate()


# ---- training on several machines ----------------------------------------------------------------

def DistributedTrainingRun(config: TrainConfig, hosts, *, resume: bool = False,
                           parent: QObject | None = None) -> TrainingRun:
    """A TrainingRun whose worker launches the run on several machines. (A factory, not a
    subclass: PySide6 6.11 resolved `connect` on a subclass of TrainingRun to QObject.connect.)"""
    return TrainingRun(config, resume=resume, parent=parent,
                       worker=TrainingWorker(config, resume=resume, hosts=hosts))

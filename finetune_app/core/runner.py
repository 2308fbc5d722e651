"""`start_run(config, ...) -> RunHandle`: the one way a training run starts.

The CLI (`train`, `train --hostfile`, `runs resume`, `demo`), the app's training worker and each
rank of a launched run all come here, so what a run is given is decided once:

* where it trains: in this process (`Trainer`), or on several machines (`hosts`: `mlx.launch`
  starts core/cluster/rank.py on each, and their events come back here as a local run's do);
* on which thread: the calling one (the default: the call returns when the run has ended, and
  raises its error, as `Trainer.run()` does) or a new one (`thread=True`: returns at once);
* who hears it: `listeners` (every event, on the main rank only; under `mlx.launch` the other
  ranks train silently) and the run history (`record`, core/runs.py), as before;
* how it is steered: one `Control` (pause/resume/stop; for a launch also `terminate`), which the
  caller may create first (the GUI's buttons exist before the run does).

No MLX at import: the engine loads when a run starts.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.control import Control

_END = object()


@dataclass
class RunHandle:
    """A run started by `start_run`: its control, its outcome, and (thread=True) its events."""

    config: TrainConfig
    resume: bool
    control: Control
    listeners: list = field(default_factory=list)
    hosts: object = None  # core.cluster.hosts.HostList: trained on several machines
    base: object = None  # an already loaded core.models.BaseModel (the demo reuses it)
    record: bool = True
    store: object = None  # a RunStore to record into (else the default one)
    log: Callable[[str], None] | None = None  # the launcher's own lines (not events)
    env: dict | None = None  # extra environment of the launched ranks
    result: object = None  # RunResult once it ended
    error: BaseException | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _queue: queue.SimpleQueue | None = None

    # ---- the caller's side ---------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None):
        """The RunResult (status finished or stopped); raises the run's error. None: timed out."""
        if not self._done.wait(timeout):
            return None
        if self.error is not None:
            raise self.error
        return self.result

    def events(self, timeout: float | None = None) -> Iterator:
        """Each event as it comes, until the run ends (thread=True only; else pass listeners)."""
        if self._queue is None:
            raise RuntimeError("events() follows a run started with thread=True; pass listeners instead")
        while True:
            event = self._queue.get(timeout=timeout)
            if event is _END:
                return
            yield event

    # ---- the run's side ------------------------------------------------------------------------
    def _main(self, *, own_thread: bool) -> None:
        try:
            self.result = self._launch() if self.hosts is not None else self._train_here()
        except BaseException as exc:
            self.error = exc
        finally:
            if own_thread:  # a thread that touched MLX frees its streams (see ui/workers.py)
                _release_mlx_thread_state()
            if self._queue is not None:
                self._queue.put(_END)
            self._done.set()

    def _train_here(self):
        from finetune_app.core.distributed import world
        from finetune_app.core.training.trainer import Trainer

        main = world().is_main
        listeners = list(self.listeners) if main else []
        recorder = self._recorder() if main else None
        if recorder is not None:
            listeners.append(recorder)
        try:
            return Trainer(self.config, listeners=listeners, control=self.control, resume=self.resume,
                           base=self.base).run()
        finally:
            if recorder is not None:
                recorder.close()

    def _recorder(self):
        """The run history (core/runs.py) records the run: into `store` when given, else the
        default database unless $FINETUNE_RECORD_RUNS is 0."""
        from finetune_app.core import runs

        if not self.record:
            return None
        if self.store is not None:
            return runs.RunRecorder(self.config, resume=self.resume, store=self.store)
        return runs.default_recorder(self.config, resume=self.resume)

    def _launch(self):
        """Several machines: rank 0 (on this machine) records the run and reports its events."""
        from finetune_app.core.cluster.launch import DistributedRun
        from finetune_app.core.training.peers import PeerLost
        from finetune_app.core.training.trainer import RunResult

        launch = DistributedRun(self.hosts, self.config, resume=self.resume, listeners=self.listeners,
                                log=self.log, env=self.env)
        t0 = time.perf_counter()
        launch.start()
        self.control.relay_to(lambda word: launch.terminate() if word == "terminate" else launch.send(word))
        try:
            outcome = launch.wait()
        except BaseException:  # Ctrl-C twice, a bug: the ranks must not train on unattended
            launch.terminate()
            raise
        finally:
            self.control.relay_to(None)
        if outcome.status == "failed":  # already reported as a "failed" event
            raise PeerLost(outcome.message)
        return RunResult(outcome.status, outcome.step, self.config.iters or outcome.step, None, None,
                         outcome.run_dir, time.perf_counter() - t0)


def start_run(config: TrainConfig, *, resume: bool = False, listeners=(), control: Control | None = None,
              hosts=None, base=None, record: bool = True, store=None, thread: bool = False,
              log: Callable[[str], None] | None = None, env: dict | None = None) -> RunHandle:
    """Start a training run (see the module docstring). `resume`: continue the run in
    `config.output` from its newest good checkpoint. Returns its handle; with thread=False only
    after the run has ended, raising the run's error (a FinetuneError, PeerLost for a launch)."""
    handle = RunHandle(config, resume, control or Control(), list(listeners), hosts, base, record, store, log, env)
    if thread:
        handle._queue = queue.SimpleQueue()
        handle.listeners.append(handle._queue.put)
        handle._thread = threading.Thread(target=handle._main, kwargs={"own_thread": True},
                                          name="finetune-run", daemon=True)
        handle._thread.start()
        return handle
    handle._main(own_thread=False)
    handle.wait()  # raises the run's error here, in the caller's thread
    return handle


def _release_mlx_thread_state() -> None:
    try:
        import mlx.core as mx

        mx.clear_streams()
    except Exception:
        pass

"""The loop's data-parallel hook (core/distributed.py has the process group; the step sums the
gradients across ranks).

* Pause and stop are agreed: each step also sums every process's requests (evaluated with the
  step), and the next step starts by reading that sum, so all of them pause or stop at the same step (a request may reach only one: the app talks to rank 0, a
  terminal's Ctrl-C reaches the local ones).
* Collectives are watched (peers.py); when a peer is lost, rank 0 saves the last finished step
  from references it kept (no copies) and says where the run continues from.
* Each report carries every process's throughput (gathered at the report step, which all share).
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import sys
import threading

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from finetune_app.core import run_folder
from finetune_app.core.training import checkpoint as ckpt
from finetune_app.core.training.backend import on_cuda
from finetune_app.core.training.events import HostRate, StateChanged
from finetune_app.core.training.hooks import Hook

SAVE_TIMEOUT = 30.0  # seconds for the last-step save; on a GPU it can wait for the dead collective



class DataParallel(Hook):
    """No-ops in a single process. `save_step(params, optimizer_state, state)` writes a checkpoint
    of the given values (the run's own saver); `emit` reports a lost peer."""

    def __init__(self, world, *, run_dir, fine_tune_type: str, emit, save_step):
        self.world = world
        self.run_dir, self.fine_tune_type, self.emit, self.save_step = run_dir, fine_tune_type, emit, save_step
        self.peers = None  # peers.PeerWatch while training
        self.last_good = None  # (trainable params, optimizer state, TrainState) of the last finished step
        self.host_names: list[str] = []
        self.step = 0  # the last finished step (for the message when a peer is lost)

    # ---- life ------------------------------------------------------------------------------
    def start(self, run) -> None:
        if self.world.distributed:
            from finetune_app.core.training.peers import PeerWatch

            self.peers = PeerWatch(self.on_peer_lost).start()
            self.meet(run)

    def after_step(self, run, done) -> None:
        self.step = done.step
        self.keep_last_good(run)

    def close(self) -> None:
        if self.peers is not None:
            self.peers.close()

    def collective(self, what: str):
        return self.peers.collective(what) if self.peers is not None else contextlib.nullcontext()

    def meet(self, run) -> None:
        """Before the first step: who is who (host names), and the starting point to fall back to."""
        self.step = run.state.step
        with self.collective("meeting the other processes"):
            self.host_names = self.world.host_names()
        self.keep_last_good(run)

    # ---- every step --------------------------------------------------------------------------
    def flag_sum(self, control):
        """This process's pause/stop requests summed over every process, lazily: the trainer
        evaluates it together with the step, so agreeing costs no extra synchronisation."""
        if not self.world.distributed:
            return None
        stop = control.stop_requested
        flags = [int(stop), int(stop and not control.save_on_stop), int(control.paused and not stop)]
        return self.world.sum(mx.array(flags, dtype=mx.int32))

    def read(self, flags, control) -> tuple[bool, bool, bool]:
        """(stop, save, pause) from an evaluated `flag_sum` (None: this process's own requests)."""
        if flags is None:
            return control.stop_requested, control.save_on_stop, control.paused and not control.stop_requested
        stop, nosave, pause = (v > 0 for v in flags.tolist())
        if stop:
            control.stop(save=not nosave)
        return stop, not nosave, pause and not stop

    def agree(self, control, *, watched: bool = True) -> tuple[bool, bool, bool]:
        """(stop, save, pause) as every process sees them, now (before the first step, and while
        paused, when the paused process(es) hold the others here)."""
        flags = self.flag_sum(control)
        if flags is not None:
            with self.collective("agreeing on pause/stop") if watched else contextlib.nullcontext():
                mx.eval(flags)
        return self.read(flags, control)

    def keep_last_good(self, run) -> None:
        """References to the finished step's values (just evaluated), so a dropped peer costs at
        most the step in flight. Full fine-tuning would keep a second copy of the model alive: it
        relies on the periodic checkpoints instead."""
        if self.peers is None or self.fine_tune_type == "full":
            return
        self.last_good = (tree_flatten(run.base.model.trainable_parameters()), tree_flatten(run.optimizer.state),
                          dataclasses.replace(run.state))

    def host_rates(self, examples: int, tokens: int, elapsed: float) -> tuple[HostRate, ...]:
        if not self.world.distributed:
            return ()
        local = mx.array([examples / elapsed, tokens / elapsed, mx.get_peak_memory() / 1e9], dtype=mx.float32)
        with self.collective("sharing throughput"):
            rows = self.world.gather(local).reshape(self.world.size, 3).tolist()
        return tuple(HostRate(rank=r, host=self.host_names[r], examples_per_second=ex, tokens_per_second=tok,
                              peak_memory_gb=mem) for r, (ex, tok, mem) in enumerate(rows))

    # ---- a peer is lost ----------------------------------------------------------------------
    def _save_last_good(self):
        params, opt_state, state = self.last_good
        existing = run_folder.checkpoint_dir(self.run_dir, state.step)
        if existing.is_dir():
            return existing
        return self.save_step(tree_unflatten(params), tree_unflatten(opt_state), state)

    def _save_within_timeout(self):
        """The save on a thread of its own, given up after SAVE_TIMEOUT: on CUDA, reading the arrays
        waits for the GPU stream, which may be stuck in the dead collective (seen with NCCL). The
        checkpoint is staged and renamed, so an abandoned save leaves nothing half-written."""
        box = {}

        def save():
            try:
                box["path"] = self._save_last_good()
            except Exception as exc:  # the periodic checkpoints remain
                box["error"] = exc

        # Reading an array on a GPU can block *holding the GIL* (seen on CUDA with NCCL: the process
        # froze, no Python thread ran again). faulthandler's timer is a C thread: it ends the
        # process if the save has not let go by then; the launcher then reports the periodic
        # checkpoints (launch.py).
        faulthandler.dump_traceback_later(SAVE_TIMEOUT + 15, exit=True)
        worker = threading.Thread(target=save, name="finetune-last-step-save", daemon=True)
        worker.start()
        worker.join(SAVE_TIMEOUT)
        faulthandler.cancel_dump_traceback_later()
        if "error" in box:
            print(f"warning: could not save the last finished step: {box['error']}", file=sys.stderr)
        elif worker.is_alive():
            print(f"warning: saving the last finished step took over {SAVE_TIMEOUT:.0f} s; given up",
                  file=sys.stderr)
        return box.get("path")

    def on_peer_lost(self, reason: str) -> str:
        """Save the last finished step (rank 0) and say where the run can continue from."""
        saved = None
        # On CUDA, reading the last step's arrays waits for the GPU stream, which is stuck in the
        # dead NCCL collective (measured on 2 H200: the save froze the process, GIL held): there the
        # periodic checkpoints are the resume point. On the CPU (ring) the save takes milliseconds;
        # on Metal it is tried, with the C timer as the backstop.
        if self.world.is_main and self.last_good is not None and self.last_good[2].step > 0 and not on_cuda():
            saved = self._save_within_timeout()
        latest, _ = ckpt.latest_valid(self.run_dir) if self.world.is_main else (None, [])
        step = self.last_good[2].step if self.last_good else self.step
        if not self.world.is_main:
            fix = "Rank 0 keeps the run's checkpoints."
        elif latest is not None:
            where = f"Step {step} is saved in {latest}" if saved else f"The newest checkpoint is {latest}"
            fix = (f"{where}. Resume it (History > Resume in the app, or `finetune-app train --resume "
                   f"{self.run_dir}`) on this machine alone, or on every host again with --hostfile once they "
                   "are back: the global batch does not depend on the number of hosts, so the run continues "
                   "the same way.")
        else:
            fix = "No checkpoint was written yet: start the run again once every host is back."
        message = f"Data-parallel training stopped at step {step}: {reason}. {fix}"
        if self.world.is_main:
            self.emit(StateChanged("failed", message, step=step))
        if threading.current_thread() is not threading.main_thread():  # the process ends without the CLI
            print(f"error (rank {self.world.rank}): {message}", file=sys.stderr, flush=True)
        return message

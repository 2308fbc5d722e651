"""What a data-parallel run does when another of its processes stops answering.

MLX's collectives have no timeout. When a peer dies, the ring back-end either raises ("[ring]
connection to a peer was lost") or leaves the survivors waiting in `mx.eval` for ever (both seen
with mlx 0.32.4), and `mlx.launch` then SIGTERMs the survivors. So each process

* marks its blocking collective evaluations (`collective()`): an error raised there becomes
  `PeerLost`;
* runs a watchdog thread that declares the peers lost when one of them takes longer than the
  timeout (`FINETUNE_PEER_TIMEOUT` seconds, default 300, and never less than 20 times the slowest
  collective seen so far);
* handles SIGTERM, which `distributed.world()` takes on a thread of its own: the main thread may
  be stuck in C++, where no Python signal handler ever runs.

In each case `on_lost(reason)` runs once (the trainer saves the last completed step there, on
rank 0). Off the main thread the process then exits with EXIT_PEER_LOST: its main thread cannot
be woken.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable

from finetune_app.core.errors import FinetuneError

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: try again (resume) later
DEFAULT_TIMEOUT = 300.0
_COLLECTIVE_WORDS = ("ring", "nccl", "mpi", "jaccl", "peer", "socket", "connection", "distributed")


class PeerLost(FinetuneError):
    """Another process of a data-parallel run dropped out."""

    exit_code = EXIT_PEER_LOST


def timeout_from_env() -> float:
    try:
        return max(1.0, float(os.environ.get("FINETUNE_PEER_TIMEOUT", DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT


class PeerWatch:
    def __init__(self, on_lost: Callable[[str], None], *, timeout: float | None = None, poll: float = 0.5):
        self._on_lost = on_lost
        self.base_timeout = timeout_from_env() if timeout is None else timeout
        self._poll = poll
        self._lock = threading.Lock()
        self._armed_at: float | None = None
        self._what = ""
        self._slowest = 0.0
        self._fired = False
        self._handled = threading.Event()
        self._closed = threading.Event()

    # ---- life ------------------------------------------------------------------------------
    def start(self) -> "PeerWatch":
        from finetune_app.core import distributed

        threading.Thread(target=self._watch, name="finetune-peer-watch", daemon=True).start()
        distributed.on_sigterm(self._sigterm)
        stacks = os.environ.get("FINETUNE_STACKS_DIR")  # diagnostics (tests): where a hung process was
        if stacks:  # faulthandler's C handler writes every thread's stack even while one holds the GIL
            self._stacks = open(os.path.join(stacks, f"rank{os.environ.get('MLX_RANK', 0)}.txt"), "w")
            faulthandler.register(signal.SIGUSR1, file=self._stacks, all_threads=True)
        return self

    def close(self) -> None:
        from finetune_app.core import distributed

        self._closed.set()
        distributed.remove_sigterm_handler(self._sigterm)

    @property
    def timeout(self) -> float:
        return max(self.base_timeout, 20 * self._slowest)

    # ---- the main thread's side ----------------------------------------------------------------
    @contextmanager
    def collective(self, what: str):
        """Around an evaluation that waits for every process (a gradient sum, a shared flag)."""
        t0 = time.monotonic()
        with self._lock:
            self._armed_at, self._what = t0, what
        # the watchdog is a Python thread; if the stuck call holds the GIL it never runs, so a C
        # timer (faulthandler) ends the process a minute later in any case
        faulthandler.dump_traceback_later(self.timeout + 60, exit=True)
        try:
            yield
        except RuntimeError as exc:
            text = str(exc)
            if not any(w in text.lower() for w in _COLLECTIVE_WORDS):
                raise
            reason = f"another process stopped answering while {what} ({text.strip()})"
            raise PeerLost(self.lost(reason) or reason) from None
        finally:
            faulthandler.cancel_dump_traceback_later()
            with self._lock:
                self._armed_at = None
                self._slowest = max(self._slowest, time.monotonic() - t0)

    def lost(self, reason: str, *, exit_after: bool = False) -> str | None:
        """Run `on_lost` once; returns its message (None when it already ran)."""
        with self._lock:
            first, self._fired = not self._fired, True
        message = None
        try:
            if first:
                try:
                    message = self._on_lost(reason)
                finally:
                    self._handled.set()
            elif exit_after:  # let the first caller finish saving (the save is atomic either way)
                self._handled.wait(120)
        finally:
            if exit_after:
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(EXIT_PEER_LOST)
        return message

    # ---- threads ----------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closed.wait(self._poll):
            with self._lock:
                armed, what = self._armed_at, self._what
            if armed is not None and time.monotonic() - armed > self.timeout:
                waited = time.monotonic() - armed
                self.lost(f"another process stopped answering: no reply for {waited:.0f} s while {what} "
                          f"(FINETUNE_PEER_TIMEOUT={self.timeout:.0f})", exit_after=True)

    def _sigterm(self) -> None:
        self.lost("this process was told to stop (SIGTERM); mlx.launch does that when another process of "
                  "the run ends", exit_after=True)

"""Pause, resume and stop a run from another thread (the GUI, a signal handler, the tray, the
launching machine).

The trainer polls it between optimizer steps, so a request takes effect within one step.
Thread-safe: only threading primitives are shared, never MLX arrays.

A run on several machines has one Control too: `relay_to(send)` passes every request on as a
command word (COMMANDS) to the launch, which copies it to each rank, where `follow(lines)` applies
it to that rank's Control. Requests made before the launch exists are kept and sent on attach.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

# the words that travel from the launching machine to every rank, one per line
COMMANDS = ("pause", "resume", "stop", "stop-discard", "terminate")


class Control:
    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self.save_on_stop = True
        self._relay: Callable[[str], None] | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def pause(self) -> None:
        self._running.clear()
        self._send("pause")

    def resume(self) -> None:
        self._running.set()
        self._send("resume")

    def stop(self, *, save: bool = True) -> None:
        self.save_on_stop = save
        self._stop.set()
        self._running.set()  # wake a paused loop so it can stop
        self._send("stop" if save else "stop-discard")

    def terminate(self) -> None:
        """End a launched run's processes now (rank 0 saves the last finished step). A run in this
        process has no processes to end: stop it instead."""
        self._send("terminate")

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block until resumed or stopped; True when it returned because of a resume/stop."""
        return self._running.wait(timeout)

    # ---- several machines ----------------------------------------------------------------------
    def relay_to(self, send: Callable[[str], None] | None) -> None:
        """Pass every request from now on (and those made so far) to `send(command)`; None: stop."""
        with self._lock:
            self._relay, pending, self._pending = send, self._pending, []
        for command in pending if send is not None else ():
            send(command)

    def _send(self, command: str) -> None:
        with self._lock:
            relay = self._relay
            if relay is None:
                if command != "terminate":  # kept for a launch that has not started yet
                    self._pending = [*self._pending[-15:], command]  # (a local run never takes them)
                return
        relay(command)

    def apply(self, command: str) -> None:
        """One command word from the launching machine (unknown words are ignored)."""
        word = command.strip().lower()
        if word == "pause":
            self.pause()
        elif word == "resume":
            self.resume()
        elif word in ("stop", "stop-discard"):
            self.stop(save=word == "stop")

    def follow(self, lines: Iterable[str]) -> None:
        """Apply each line of `lines` (a rank's stdin, which the launcher copies to every rank)."""
        for line in lines:
            self.apply(line)

"""Pause, resume and stop a run from another thread (the GUI, a signal handler, the tray).

The trainer polls `checkpoint()` between optimizer steps, so a request takes effect within one
step. Thread-safe: only threading primitives are shared, never MLX arrays."""

from __future__ import annotations

import threading


class Control:
    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self.save_on_stop = True

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self, *, save: bool = True) -> None:
        self.save_on_stop = save
        self._stop.set()
        self._running.set()  # wake a paused loop so it can stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block until resumed or stopped; True when it returned because of a resume/stop."""
        return self._running.wait(timeout)

"""How long the GUI event loop stalls: a 10 ms timer records how late each tick arrives.

A tick that comes 40 ms late means the window could not repaint or react for 40 ms. Used by the
tests (p99 under 50 ms while a tiny model trains) and available for diagnosing a sluggish UI.

On Linux each tick also records, from /proc/thread-self/schedstat, how long the window's thread ran
(its own work: painting, slots) and how long it sat runnable in the kernel's run queue (no core
free: other processes, MLX's CPU threads). The rest of a stall the thread was blocked: waiting for
the GIL held by another thread (or for I/O). Only that part is what a background thread cost.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback

from PySide6.QtCore import QObject, Qt, QTimer


class StallMeter(QObject):
    """`gaps` holds every tick's lateness; `stalls` the ones over `report_over` seconds, each with
    where the other threads were when the window got the GIL back (often the culprit's line)."""

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None, *, report_over: float = 0.04):
        super().__init__(parent)
        self.interval = interval_ms / 1000.0
        self.report_over = report_over
        self.gaps: list[float] = []  # seconds later than the interval, per tick
        self.since: list[float] = []  # per tick: when the wait for it began (the previous tick), from start()
        self.stalls: list[tuple[float, float, list[str]]] = []  # (seconds since start, gap, stacks)
        # per tick (Linux; else 0): seconds the thread ran / waited for a core since the last tick
        self.ran: list[float] = []
        self.waits: list[float] = []
        self.stall_ticks: list[int] = []  # per stall: its index in gaps, ran, waits
        self._t0 = 0.0
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None

    def start(self) -> None:
        self._sched_last = _schedstat()
        self._last = self._t0 = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._last = None

    def _tick(self) -> None:
        now = time.perf_counter()
        sched = _schedstat()
        if self._last is not None:
            gap = max(0.0, now - self._last - self.interval)
            wait = min(gap, sched[1] - self._sched_last[1])
            self.gaps.append(gap)
            self.since.append(self._last - self._t0)
            self.ran.append(sched[0] - self._sched_last[0])
            self.waits.append(wait)
            if gap > self.report_over:
                self.stalls.append((self._last - self._t0, gap, self._other_threads()))
                self.stall_ticks.append(len(self.gaps) - 1)
        self._last, self._sched_last = now, sched

    @staticmethod
    def _other_threads() -> list[str]:
        main = threading.main_thread().ident
        out = []
        for ident, frame in sys._current_frames().items():
            if ident != main:
                where = traceback.extract_stack(frame)[-3:][::-1]
                out.append(" <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in where))
        return out

    def worst(self, n: int = 5) -> str:
        """The n longest stalls, for a test's or a person's eyes."""
        rows = sorted(zip(self.stalls, self.stall_ticks), key=lambda s: -s[0][1])[:n]
        return "\n".join(f"  {gap * 1000:6.0f} ms at {t:6.2f} s (waiting for a core {self.waits[i] * 1000:.0f} ms): "
                         + " | ".join(stacks) for (t, gap, stacks), i in rows)

    def percentile(self, q: float) -> float:
        if not self.gaps:
            return 0.0
        ordered = sorted(self.gaps)
        k = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
        return ordered[k]

    def stats(self) -> dict:
        """Stalls in milliseconds: ticks, median, p99 and the longest."""
        return {"ticks": len(self.gaps), "p50_ms": self.percentile(50) * 1000,
                "p99_ms": self.percentile(99) * 1000,
                "max_ms": (max(self.gaps) * 1000) if self.gaps else 0.0}


def _schedstat() -> tuple[float, float]:
    """Seconds this thread has run, and spent runnable but not running (Linux); zeros elsewhere."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            ran, waited = fh.read().split()[:2]
        return int(ran) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0

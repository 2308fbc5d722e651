"""How long the GUI event loop stalls: a 10 ms timer records how late each tick arrives.

A tick that comes 40 ms late means the window could not repaint or react for 40 ms. Used by the
tests (p99 under 50 ms while a tiny model trains) and available for diagnosing a sluggish UI.
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
        self.stalls: list[tuple[float, float, list[str]]] = []  # (seconds since start, gap, stacks)
        self._t0 = 0.0
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None

    def start(self) -> None:
        self._last = self._t0 = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._last = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            gap = max(0.0, now - self._last - self.interval)
            self.gaps.append(gap)
            if gap > self.report_over:
                self.stalls.append((self._last - self._t0, gap, self._other_threads()))
        self._last = now

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
        rows = sorted(self.stalls, key=lambda s: -s[1])[:n]
        return "\n".join(f"  {gap * 1000:6.0f} ms at {t:6.2f} s: " + " | ".join(stacks) for t, gap, stacks in rows)

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

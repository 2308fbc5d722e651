"""How long the GUI event loop stalls: a 10 ms timer records how late each tick arrives.

A tick that comes 40 ms late means the window could not repaint or react for 40 ms. Used by the
tests (p99 under 50 ms while a tiny model trains) and available for diagnosing a sluggish UI.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, Qt, QTimer


class StallMeter(QObject):
    def __init__(self, interval_ms: int = 10, parent: QObject | None = None):
        super().__init__(parent)
        self.interval = interval_ms / 1000.0
        self.gaps: list[float] = []  # seconds later than the interval, per tick
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None

    def start(self) -> None:
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._last = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append(max(0.0, now - self._last - self.interval))
        self._last = now

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

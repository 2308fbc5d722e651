"""The plot of a preference or reward objective's own numbers (reward accuracy and margin, chosen
and rejected log-probabilities, KL, GRPO's reward mean and spread) with a selector of the metric.

Used live on the Training screen (one run) and in the run History (one or several runs compared).
Each run draws the training values as a line and the held-out ones (GRPO's evaluations) as dashed
points in its colour. Series come from core/training/objective_metrics.py.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from finetune_app.core.training import objective_metrics as om
from finetune_app.ui.plots import ThemedPlot

PREFERRED = ("reward_accuracy", "reward_mean")  # what the selector starts on, when present


class ObjectivePlot(QWidget):
    def __init__(self, title: str = "Objective", parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("objectivePanel")
        self.title = title
        self.selector = QComboBox()
        self.selector.setObjectName("objectiveMetric")
        self.selector.setToolTip("Which of the objective's numbers to plot")
        self.selector.currentIndexChanged.connect(lambda _: self._draw())
        self.plot = ThemedPlot(title, bottom="step")
        self.plot.setObjectName("objectivePlot")
        self.plot.getAxis("left").setWidth(60)
        self.plot.addLegend(offset=(-10, 5))
        self.curves: list[pg.PlotDataItem] = []
        self._runs: list[tuple[str, str, dict]] = []
        self._x_max: float | None = None
        self._names: list[str] = []
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(QLabel("Plot:"))
        top.addWidget(self.selector, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)

    @property
    def metric(self) -> str | None:
        return self.selector.currentData()

    def select(self, name: str) -> None:
        i = self.selector.findData(name)
        if i >= 0:
            self.selector.setCurrentIndex(i)

    def names(self) -> list[str]:
        return list(self._names)

    def show_runs(self, runs: list[tuple[str, str, dict]], *, x_max: float | None = None) -> bool:
        """Draw `runs`: (label, colour, name -> (steps, values)) each. Returns whether there is
        anything to plot (the caller shows or hides the panel)."""
        self._runs, self._x_max = runs, x_max
        bases = {n[len(om.VALID):] if n.startswith(om.VALID) else n for _, _, s in runs for n in s}
        names = sorted(bases, key=om.order_key)
        if names != self._names:
            keep = self.metric
            self._names = names
            self.selector.blockSignals(True)
            self.selector.clear()
            for n in names:
                self.selector.addItem(om.label(n), n)
            want = keep if keep in names else next((p for p in PREFERRED if p in names), names[0] if names else None)
            if want is not None:
                self.selector.setCurrentIndex(self.selector.findData(want))
            self.selector.blockSignals(False)
        self._draw()
        return bool(names)

    def points(self) -> list[tuple[list, list]]:
        """(steps, values) of each curve drawn now."""
        out = []
        for c in self.curves:
            x, y = c.getData()
            out.append(([] if x is None else list(x), [] if y is None else list(y)))
        return out

    def _draw(self) -> None:
        for c in self.curves:
            self.plot.removeItem(c)
        self.curves = []
        legend = self.plot.plotItem.legend
        if legend is not None:
            legend.clear()
        name = self.metric
        if name is None:
            return
        xs: list[float] = []
        ys: list[float] = []
        for label, colour, series in self._runs:
            for key, held_out in ((name, False), (om.VALID + name, True)):
                if key not in series:
                    continue
                steps, values = series[key]
                text = " ".join(p for p in (label, "(held out)" if held_out else "") if p) or None
                if held_out:
                    curve = self.plot.plot(steps, values, name=text, symbol="o", symbolSize=6, symbolBrush=colour,
                                           symbolPen=None, pen=pg.mkPen(colour, width=1.5, style=Qt.PenStyle.DashLine))
                else:
                    curve = self.plot.plot(steps, values, name=text if label else None, pen=pg.mkPen(colour, width=2))
                self.curves.append(curve)
                xs += list(steps)
                ys += list(values)
        self.plot.setLabel("left", om.label(name))
        self.plot.apply_palette()
        finite = [y for y in ys if math.isfinite(y)]
        x_hi = max([self._x_max or 0, *xs, 1])
        if name == "reward_accuracy":
            lo, hi = 0.0, 1.05
        elif finite:
            lo, hi = min(finite), max(finite)
            pad = (hi - lo) * 0.1 or max(abs(hi) * 0.1, 1e-3)
            lo, hi = lo - pad, hi + pad
        else:
            lo, hi = 0.0, 1.0
        self.plot.set_view(0, x_hi, lo, hi)

"""pyqtgraph plots that follow the window's palette (light or dark), with the app's colours."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem

from finetune_app.ui.app import is_dark

# Series colours readable on both light and dark backgrounds.
BLUE = "#3d8bfd"
ORANGE = "#f28e2b"
GREEN = "#2ea043"
PURPLE = "#a371f7"
GREY = "#8b949e"


def nice_ceiling(value: float) -> float:
    """The next "round" number at or above value (1, 2, 2.5, 5 times a power of ten)."""
    if not value or value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


class ThemedPlot(pg.PlotWidget):
    """A PlotWidget whose background, axes and grid follow the palette when it changes.

    Built for live data that must not stall the window: ranges are set by the caller (`set_view`,
    changing only when the data outgrows them) instead of pyqtgraph's auto-range, which re-lays
    the axes on every update and paints each plot twice; axes are cached as pixmaps, so a new
    point repaints the curve, not the tick labels (measured: ~115 ms -> a few ms per update).
    """

    def __init__(self, title: str = "", *, left: str = "", bottom: str = "", parent=None):
        self._ready = False
        self._held = False
        self._title = title
        super().__init__(parent=parent)
        self._ready = True
        self.plotItem.setMenuEnabled(False)
        self.plotItem.hideButtons()
        self.setMouseEnabled(x=False, y=False)
        self._grid = _GridLines(self.plotItem)
        self.plotItem.vb.disableAutoRange()
        self._view: tuple | None = None
        for name in ("left", "bottom"):
            axis = self.plotItem.getAxis(name)
            axis.enableAutoSIPrefix(False)
            axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self._focus_filter = _NoRepaintOnFocus(self.viewport())
        if left:
            self.setLabel("left", left)
        if bottom:
            self.setLabel("bottom", bottom)
        self.apply_palette()

    def apply_palette(self) -> None:
        if not self._ready:
            return
        pal = self.palette()
        bg = pal.color(QPalette.ColorRole.Base)
        fg = pal.color(QPalette.ColorRole.Text)
        self.setBackground(bg)
        self._grid.set_colour(fg)
        for name in ("left", "bottom"):
            axis = self.plotItem.getAxis(name)
            axis.setPen(pg.mkPen(QColor(fg.red(), fg.green(), fg.blue(), 140)))
            axis.setTextPen(pg.mkPen(fg))
        if self._title:
            self.plotItem.setTitle(self._title, color=fg.name(), size="10pt")
        legend = self.plotItem.legend
        if legend is not None:
            legend.setLabelTextColor(fg)
            for _sample, label in legend.items:  # existing labels keep their colour otherwise
                label.setText(label.text, color=fg.name())
            legend.setBrush(pg.mkBrush(QColor(bg.red(), bg.green(), bg.blue(), 200)))

    def set_view(self, x0: float, x1: float, y0: float, y1: float) -> None:
        """Show exactly this range; nothing happens when it is the one shown already."""
        view = (x0, x1 if x1 > x0 else x0 + 1, y0, y1 if y1 > y0 else y0 + 1)
        if view != self._view:
            self._view = view
            self.setRange(xRange=view[:2], yRange=view[2:], padding=0)

    def fit_view(self, xs, ys, *, x_min: float | None = None) -> None:
        """Show all of these points (finite ones): x from x_min (or the data's first step) to the
        last step, y from 0 to a round ceiling; used where the data is known up front."""
        pts = [(float(x), float(y)) for x, y in zip(xs, ys)
               if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
        if not pts:
            self.set_view(0, 1, 0, 1)
            return
        x_lo = min(p[0] for p in pts) if x_min is None else x_min
        x_hi = max(p[0] for p in pts)
        y_lo = min(0.0, min(p[1] for p in pts))
        self.set_view(x_lo, x_hi, y_lo, nice_ceiling(max(p[1] for p in pts) * 1.05))

    def hold_paint(self) -> None:
        """Until release_paint(), paint only the background: a screen of several plots shows in
        short turns of the event loop, one plot each, instead of one long first paint (issue 18)."""
        self._held = True

    def release_paint(self) -> None:
        if self._held:
            self._held = False
            self.viewport().update()

    def paintEvent(self, event) -> None:
        if self._held:
            painter = QPainter(self.viewport())
            painter.fillRect(event.rect(), self.backgroundBrush())
            painter.end()
            return
        super().paintEvent(event)

    def set_title(self, title: str) -> None:
        self._title = title
        self.apply_palette()

    def changeEvent(self, event) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange,
                            QEvent.Type.StyleChange):
            self.apply_palette()
        super().changeEvent(event)

    @property
    def dark(self) -> bool:
        return is_dark(self.palette())


class _GridLines:
    """The grid at the axes' ticks as path items in the view (per axis, one per tick level), painted
    by Qt alone, with pyqtgraph's `showGrid(alpha=0.18)` look. pyqtgraph's own grid is drawn by
    each axis into a cache the size of the whole plot, in Python: about half of a plot's paint
    after every range change (the loss plot's first paint 44-62 -> 25-31 ms measured; issue 18)."""

    ALPHA = 46  # of 255, the major lines; level i gets ALPHA / (i + 1), thinned where they are dense
    LEVELS = 3

    def __init__(self, plot_item):
        self.item = plot_item
        self.colour = QColor(128, 128, 128)
        self.paths = {}
        for name in ("bottom", "left"):
            for level in range(self.LEVELS):
                path = QGraphicsPathItem()
                path.setZValue(-100)  # under the curves
                plot_item.vb.addItem(path, ignoreBounds=True)
                self.paths[name, level] = path
        plot_item.vb.sigRangeChanged.connect(self.update)
        plot_item.vb.sigResized.connect(self.update)

    def set_colour(self, colour: QColor) -> None:
        self.colour = QColor(colour)
        self.update()

    def update(self, *_args) -> None:
        vb = self.item.vb
        (x0, x1), (y0, y1) = vb.viewRange()
        size = vb.size()
        for name, lo, hi, pixels in (("bottom", x0, x1, size.width()), ("left", y0, y1, size.height())):
            levels = self.item.getAxis(name).tickValues(lo, hi, pixels) if pixels > 0 and hi > lo else []
            for level in range(self.LEVELS):
                values = levels[level][1] if level < len(levels) else []
                line = QPainterPath()
                for v in values:
                    if name == "bottom":
                        line.moveTo(v, y0)
                        line.lineTo(v, y1)
                    else:
                        line.moveTo(x0, v)
                        line.lineTo(x1, v)
                alpha = self.ALPHA / (level + 1) * min(1.0, max(0.0, 0.05 * pixels / (len(values) + 1)))
                pen = QPen(QColor(self.colour.red(), self.colour.green(), self.colour.blue(), int(alpha)))
                pen.setCosmetic(True)
                pen.setWidth(1)
                path = self.paths[name, level]
                path.setPen(pen)
                path.setPath(line)


class _NoRepaintOnFocus(QObject):
    """Keeps the window's focus changes from the plot's scene. Qt repaints every graphics item when
    its window is activated or deactivated (a dialog opening, a click elsewhere: 20-50 ms for the
    loss plot, axes included); a plot's colours are its own, the same in an inactive window, and
    its items take no focus, so nothing there depends on it (issue 18)."""

    def __init__(self, viewport):
        super().__init__(viewport)
        viewport.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        return event.type() in (QEvent.Type.WindowActivate, QEvent.Type.WindowDeactivate)


class AfterPaint(QObject):
    """Calls `then` in the event loop's next turn once `widget` has painted, or after `limit_ms`
    when it does not paint (a hidden or minimised window): work that can wait for a frame."""

    def __init__(self, widget, then, *, limit_ms: int = 500):
        super().__init__(widget)
        self._widget, self._then = widget, then
        widget.installEventFilter(self)
        QTimer.singleShot(limit_ms, self, self._fire)

    def eventFilter(self, obj, event) -> bool:
        if obj is self._widget and event.type() == QEvent.Type.Paint:
            QTimer.singleShot(0, self, self._fire)  # after this paint has finished
        return False

    def _fire(self) -> None:
        if self._then is None:
            return
        then, self._then = self._then, None
        self._widget.removeEventFilter(self)
        self.deleteLater()
        then()

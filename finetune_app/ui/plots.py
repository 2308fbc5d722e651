"""pyqtgraph plots that follow the window's palette (light or dark), with the app's colours."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QEvent
from PySide6.QtGui import QColor, QPalette

from finetune_app.ui.app import is_dark

# Series colours readable on both light and dark backgrounds.
BLUE = "#3d8bfd"
ORANGE = "#f28e2b"
GREEN = "#2ea043"
PURPLE = "#a371f7"
GREY = "#8b949e"


class ThemedPlot(pg.PlotWidget):
    """A PlotWidget whose background, axes and grid follow the palette when it changes."""

    def __init__(self, title: str = "", *, left: str = "", bottom: str = "", parent=None):
        self._ready = False
        self._title = title
        super().__init__(parent=parent)
        self._ready = True
        self.plotItem.setMenuEnabled(False)
        self.plotItem.hideButtons()
        self.setMouseEnabled(x=False, y=False)
        self.plotItem.showGrid(x=True, y=True, alpha=0.18)
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
        for name in ("left", "bottom"):
            axis = self.plotItem.getAxis(name)
            axis.setPen(pg.mkPen(QColor(fg.red(), fg.green(), fg.blue(), 140)))
            axis.setTextPen(pg.mkPen(fg))
        if self._title:
            self.plotItem.setTitle(self._title, color=fg.name(), size="10pt")
        legend = self.plotItem.legend
        if legend is not None:
            legend.setLabelTextColor(fg)
            legend.setBrush(pg.mkBrush(QColor(bg.red(), bg.green(), bg.blue(), 200)))

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

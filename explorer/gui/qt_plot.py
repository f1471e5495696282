"""A pyqtgraph plot as every view here uses it."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QGraphicsItem


def plot_widget(**kwargs) -> pg.PlotWidget:
    """A white PlotWidget whose axes are painted into a cached pixmap: an axis replays its tick labels'
    text on every repaint of the plot otherwise (3 ms an axis in software rendering), which made
    redrawing a tab's two plots take 40-200 ms on the GUI thread. The cache is redrawn when the axis
    changes (range, size), so what is shown is the same."""
    plot = pg.PlotWidget(background="w", **kwargs)
    for name in ("left", "bottom", "right", "top"):
        axis = plot.getAxis(name)
        axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        # an axis re-sized itself to its tick labels after painting them, both ways: new data with wider
        # (or narrower) labels moved the plot and it was painted a second time, whole (~20 ms). Room for
        # seven-digit labels from the start, never shrunk: a plot is laid out once
        axis.setStyle(autoReduceTextSpace=False)
    left = plot.getAxis("left")
    left.textWidth = max(left.textWidth, QFontMetrics(left.font()).horizontalAdvance("8888888") + 2)
    left._updateWidth()
    return plot

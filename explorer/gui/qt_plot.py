"""A pyqtgraph plot as every view here uses it."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QGraphicsItem


def plot_widget(**kwargs) -> pg.PlotWidget:
    """A white PlotWidget whose axes are painted into a cached pixmap: an axis replays its tick labels'
    text on every repaint of the plot otherwise (3 ms an axis in software rendering), which made
    redrawing a tab's two plots take 40-200 ms on the GUI thread. The cache is redrawn when the axis
    changes (range, size), so what is shown is the same."""
    plot = pg.PlotWidget(background="w", **kwargs)
    for name in ("left", "bottom", "right", "top"):
        plot.getAxis(name).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
    return plot

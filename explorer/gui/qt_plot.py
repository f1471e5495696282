"""A pyqtgraph plot, and the plot items, as every view here uses them."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QGraphicsItem

LABEL_ROOM = "8888888"  # by default the left axis has room for seven-digit tick labels from the start


def plot_widget(label_room: str = LABEL_ROOM, **kwargs) -> pg.PlotWidget:
    """A white PlotWidget whose axes are painted into a cached pixmap: an axis replays its tick labels'
    text on every repaint of the plot otherwise (3 ms an axis in software rendering), which made
    redrawing a tab's two plots take 40-200 ms on the GUI thread. The cache is redrawn when the axis
    changes (range, size), so what is shown is the same. ``label_room``: the widest tick label the left
    axis makes room for from the start (e.g. ``"0.00"`` for a fraction)."""
    plot = pg.PlotWidget(background="w", **kwargs)
    for name in ("left", "bottom", "right", "top"):
        axis = plot.getAxis(name)
        axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        # an axis re-sized itself to its tick labels after painting them, both ways: new data with wider
        # (or narrower) labels moved the plot and it was painted a second time, whole (~20 ms). Room for
        # the widest expected labels from the start, never shrunk: a plot is laid out once
        axis.setStyle(autoReduceTextSpace=False)
    # pyqtgraph has no public call for the initial text room of an auto-expanding axis: this is the one
    # it makes itself when a tick label is wider than the room (tests/gui checks the room is there, so a
    # pyqtgraph release that changes it fails a test rather than the layout)
    left = plot.getAxis("left")
    left._updateMaxTextSize(QFontMetrics(left.font()).horizontalAdvance(label_room) + 2)
    return plot


def curve(plot: pg.PlotWidget, x, y, **kwargs) -> pg.PlotDataItem:
    """``plot.plot(x, y, **kwargs)`` without pyqtgraph's dynamic range limit, which re-derives every item's
    points on each change of the view's range (once more per drawing). The values drawn here are counts
    and weights, never extreme enough to need it."""
    return plot.plot(x, y, dynamicRangeLimit=None, **kwargs)


def data_item(x, y, **kwargs) -> pg.PlotDataItem:
    """A :class:`pyqtgraph.PlotDataItem` as :func:`curve` makes it, to be added to a plot later."""
    return pg.PlotDataItem(x, y, dynamicRangeLimit=None, **kwargs)

"""The sensitivity scan as a picture (``compression-explorer sensitivity --png``): one plot per kind (sparsity,
bits, parameters kept), one labelled curve per layer, accuracy against the setting; rendered headless with
pyqtgraph (the offscreen platform when there is no display), so the CLI needs no other plotting library."""

from __future__ import annotations

import os

import pyqtgraph as pg
from PySide6.QtCore import QBuffer, QIODevice
from PySide6.QtWidgets import QApplication

from explorer.engine.storage.atomic import atomic_write_bytes
from explorer.gui.qt_plot import curve

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
TITLES = {"sparsity": "against sparsity (%)", "bits": "against bits", "rank": "against parameters kept (%)"}


def render_png(points: list, path: str, metric: str, title: str) -> None:
    """Draw ``points`` (:class:`~explorer.engine.sensitivity.scan.Point`) and save the PNG at ``path``."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication.instance() or QApplication([])
    kinds = list(dict.fromkeys(p.kind for p in points))
    layers = list(dict.fromkeys(p.layer for p in points))
    win = pg.GraphicsLayoutWidget()
    win.setBackground("w")
    win.resize(460 * len(kinds), 420)
    win.addLabel(title, col=0, colspan=len(kinds), color="k", size="11pt")
    win.nextRow()
    for kind in kinds:
        plot = win.addPlot(title=f"<span style='color:#000'>{metric} {TITLES[kind]}</span>")
        plot.showGrid(x=True, y=True, alpha=0.25)
        plot.setLabel("left", f"{metric} (%)", color="k")
        plot.setLabel("bottom", TITLES[kind].split("against ")[1], color="k")
        # bottom left where accuracy falls to the right (sparsity, parameters kept), bottom right for bits
        corner = (-10, -10) if kind == "bits" else (10, -10)
        legend = plot.addLegend(offset=corner, labelTextColor="k", brush=pg.mkBrush(255, 255, 255, 220))
        scale = 1 if kind == "bits" else 100
        for i, name in enumerate(layers):
            pts = [p for p in points if p.layer == name and p.kind == kind and p.metric is not None]
            if not pts:
                continue
            colour = COLOURS[i % len(COLOURS)]
            curve(plot, [p.value * scale for p in pts], [100 * p.metric for p in pts], name=name,
                  pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=6, symbolBrush=colour, symbolPen=colour)
        if kind == "rank":
            plot.invertX(True)  # from everything kept to little kept, like the other two: more compression right
        legend.setParentItem(plot.getViewBox())
    app.processEvents()
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    win.grab().save(buf, "PNG")
    atomic_write_bytes(path, bytes(buf.data()))

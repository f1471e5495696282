"""Centroid comparison (Deep Compression's Figure 4): for the selected layer, the Forgy, density-based and
linear initialisations drawn over the weights' histogram and over their CDF, before (dashed) and after
(solid) k-means, each with its quantization error."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

COLOURS = {"forgy": (200, 60, 60), "density": (60, 140, 60), "linear": (50, 90, 200), "kmeans++": (170, 110, 20)}
OFFSETS = {"forgy": 0.0, "density": 1.0, "linear": 2.0, "kmeans++": 3.0}


class CentroidView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("k-means initialisations")
        self.title.setWordWrap(True)
        self.hist = pg.PlotWidget(background="w", title="histogram and centroids")
        self.cdf = pg.PlotWidget(background="w", title="CDF and centroids")
        for p in (self.hist, self.cdf):
            p.showGrid(x=True, y=True, alpha=0.2)
        self.cdf.addLegend(offset=(5, 5))
        self.hist.setLabel("bottom", "weight value")
        self.cdf.setLabel("bottom", "weight value")
        self.cdf.setLabel("left", "cumulative fraction")
        self.errors = {}
        plots = QHBoxLayout()
        plots.addWidget(self.hist)
        plots.addWidget(self.cdf)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addLayout(plots)
        # the plot items are made once and updated (making pyqtgraph scatter items costs several ms each)
        grey = pg.mkPen((120, 120, 120))
        self.hist_curve = self.hist.plot([0, 1], [0], stepMode="center", fillLevel=0, brush=(150, 150, 150, 120),
                                         pen=grey)
        self.cdf_curve = self.cdf.plot([], [], pen=pg.mkPen((90, 90, 90), width=2))
        self.markers = {}  # init -> (hist initial, hist final, cdf initial, cdf final)
        for init, colour in COLOURS.items():
            self.markers[init] = (
                self.hist.plot([], [], pen=None, symbol="t", symbolBrush=colour, symbolPen=None, symbolSize=7),
                self.hist.plot([], [], pen=None, symbol="o", symbolBrush=colour, symbolPen=None, symbolSize=6),
                self.cdf.plot([], [], pen=None, symbol="t", symbolBrush=None, symbolPen=colour, symbolSize=9),
                self.cdf.plot([], [], pen=None, symbol="o", symbolBrush=colour, symbolPen=None, symbolSize=6))

    def _clear(self) -> None:
        self.errors = {}
        self.hist_curve.setData([0, 1], [0])
        self.cdf_curve.setData([], [])
        for items in self.markers.values():
            for item in items:
                item.setData([], [])
        legend = self.cdf.plotItem.legend
        if legend is not None:
            legend.clear()

    def show_comparison(self, comp) -> None:
        """Draw an :class:`explorer.engine.layerview.InitComparison`."""
        self._clear()
        v = comp.values
        if v.size == 0:
            self.title.setText(f"{comp.name}: no surviving weights to cluster")
            return
        # v is sorted: count the bins by bisection rather than a pass over millions of weights on the GUI thread
        lo, hi = float(v[0]), float(v[-1])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 101)
        cuts = np.searchsorted(v, edges, side="left")
        cuts[-1] = v.size
        counts = np.diff(cuts)
        self.hist_curve.setData(edges, counts)
        top = float(counts.max()) if counts.size else 1.0
        step = max(1, v.size // 4000)
        picks = np.arange(0, v.size, step)
        self.cdf_curve.setData(v[picks], (picks + 1) / v.size)
        legend = self.cdf.plotItem.legend
        legend.addItem(self.cdf_curve, "weights CDF")
        parts = []
        for init, r in comp.results.items():
            colour = COLOURS.get(init, (0, 0, 0))
            final = np.asarray(r["final"])
            initial = np.asarray(r["initial"])
            band = top * (1.02 + 0.06 * OFFSETS.get(init, 0))
            label = f"{init}: MSE {r['mse_initial']:.3g} → {r['mse_final']:.3g}"
            h_initial, h_final, c_initial, c_final = self.markers[init]
            h_initial.setData(initial, np.full(initial.size, band + top * 0.03))
            h_final.setData(final, np.full(final.size, band))
            c_initial.setData(initial, np.searchsorted(v, initial, side="right") / v.size)
            c_final.setData(final, np.searchsorted(v, final, side="right") / v.size)
            legend.addItem(c_final, f"{init} (MSE {r['mse_final']:.3g})")
            parts.append(f"<span style='color: rgb{colour}'>{label}</span>")
            self.errors[init] = (r["mse_initial"], r["mse_final"])
        self.title.setText(f"<b>{comp.name}</b> at {comp.bits} bits ({2 ** comp.bits} codes): "
                           "▲ initial centroids, ● after k-means — " + "; ".join(parts))

"""Centroid comparison (Deep Compression's Figure 4): for the selected layer, the Forgy, density-based and
linear initialisations drawn over the weights' histogram and over their CDF, before (dashed) and after
(solid) k-means, each with its quantization error; a line below says which init has the lowest MSE and
which keeps the largest weights best, and, with labelled eval data, the accuracy of the model with the layer
quantized by each (Deep Compression's Figure 8), all as the engine measured them."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from explorer.engine.measure.layerview import init_comparison
from explorer.engine.plan import LayerSettings
from explorer.gui.qt_plot import curve, plot_widget

COLOURS = {"forgy": (200, 60, 60), "density": (60, 140, 60), "linear": (50, 90, 200), "kmeans++": (170, 110, 20)}
CDF_DELAY_MS = 5  # the CDF is drawn this long after the histogram (after its repaint)
OFFSETS = {"forgy": 0.0, "density": 1.0, "linear": 2.0, "kmeans++": 3.0}


class CentroidView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("k-means initialisations")
        self.title.setWordWrap(True)
        # room for three lines from the start: a title that grew when the first comparison arrived moved
        # both plots, and each was then re-laid out and repainted whole (20 ms apiece)
        self.title.setMinimumHeight(3 * self.title.fontMetrics().lineSpacing() + 4)
        # what the numbers say, and the accuracy per init: room for its lines from the start too
        self.explain = QLabel("")
        self.explain.setWordWrap(True)
        self.explain.setMinimumHeight(4 * self.explain.fontMetrics().lineSpacing() + 4)
        self.accuracies = {}  # init -> accuracy shown (tests read it)
        self._comp = None  # the comparison shown
        self._accuracy_line = ""
        self.hist = plot_widget(title="histogram and centroids")
        self.cdf = plot_widget(label_room="0.00", title="CDF and centroids")  # a fraction: short labels
        for p in (self.hist, self.cdf):
            # The ranges are set from the data on each draw: auto-ranging re-measured every item's bounds
            # on each paint and, as the range settled, asked for two or three more repaints (35 ms each,
            # one after another on the GUI thread). No grid: pyqtgraph's axes draw it, into their cached
            # pixmaps, across the whole plot (a plot's repaint 26 ms, 7 without, in software rendering);
            # the centroid markers and the axes' ticks carry the values.
            p.disableAutoRange()
        # top left: a CDF is near 0 on the left, so that corner is clear of the curve; short entries (the
        # title has the errors in full), so the legend stays clear of it on a narrow plot
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
        layout.addWidget(self.explain)
        layout.addLayout(plots)
        # the plot items are made once and updated (making pyqtgraph scatter items costs several ms each)
        grey = pg.mkPen((120, 120, 120))
        self.hist_curve = curve(self.hist, [0, 1], [0], stepMode="center", fillLevel=0, brush=(150, 150, 150, 120),
                                pen=grey)
        self.cdf_curve = curve(self.cdf, [], [], pen=pg.mkPen((90, 90, 90), width=2))
        self.markers = {}  # init -> (hist initial, hist final, cdf initial, cdf final)
        self._pending = None  # the comparison whose CDF is still to be drawn
        for init, colour in COLOURS.items():
            self.markers[init] = (
                curve(self.hist, [], [], pen=None, symbol="t", symbolBrush=colour, symbolPen=None, symbolSize=7),
                curve(self.hist, [], [], pen=None, symbol="o", symbolBrush=colour, symbolPen=None, symbolSize=6),
                curve(self.cdf, [], [], pen=None, symbol="t", symbolBrush=None, symbolPen=colour, symbolSize=9),
                curve(self.cdf, [], [], pen=None, symbol="o", symbolBrush=colour, symbolPen=None, symbolSize=6))

    def warm_up(self) -> None:
        """Draw and paint a small comparison once, then clear: the first drawing of markers, legend and text
        (symbol atlases, fonts, layouts) costs ~70 ms on the GUI thread, which must not fall on the first
        real use."""
        torch.manual_seed(0)
        # weights of a typical scale, so that the axes draw the kind of tick labels (glyphs) real layers get
        comp = init_comparison("warm-up", torch.randn(64, 64) * 0.05, LayerSettings(), bits=5)
        self.show_comparison(comp)
        self._draw_pending_cdf()
        self.grab()
        self._clear()
        self.title.setText("k-means initialisations")
        self.explain.setText("")

    def _clear(self) -> None:
        self.errors = {}
        self.accuracies = {}
        self.hist_curve.setData([0, 1], [0])
        self.cdf_curve.setData([], [])
        for items in self.markers.values():
            for item in items:
                item.setData([], [])
        self._legend(self.cdf_curve, None)
        for items in self.markers.values():
            self._legend(items[3], None)

    def _legend(self, item, text) -> None:
        """Show ``item`` in the CDF's legend with ``text`` (None: not at all); an entry is made once and its
        text updated after (re-making the legend's items on every draw cost several ms)."""
        legend = self.cdf.plotItem.legend
        label = legend.getLabel(item)
        if text is None:
            if label is not None:
                legend.removeItem(item)
        elif label is None:
            legend.addItem(item, text)
        elif label.text != text:
            label.setText(text)

    def show_comparison(self, comp) -> None:
        """Draw an :class:`explorer.engine.measure.layerview.InitComparison`: the histogram now, the CDF in the next
        turn of the event loop, so that each plot's update and repaint is one short stop of the GUI
        thread rather than one long one (a newer comparison arriving in between replaces the pending one)."""
        v = comp.values
        self._pending = comp
        if v.size == 0:
            self._clear()
            self.title.setText(f"{comp.name}: no surviving weights to cluster")
            self.explain.setText("")
            return
        self.errors = {}
        self._comp = comp  # the accuracy line is the window's to set (show_accuracy_state, show_accuracies)
        self._draw_histogram(comp)
        self._explain()
        # a timer, not a zero-delay call: that ran before the histogram's repaint, in the same stop
        QTimer.singleShot(CDF_DELAY_MS, self._draw_pending_cdf)

    def _draw_pending_cdf(self) -> None:
        comp, self._pending = self._pending, None
        if comp is not None and comp.values.size:
            self._draw_cdf(comp)

    def _draw_histogram(self, comp) -> None:
        v = comp.values
        # v is sorted: count the bins by bisection rather than a pass over millions of weights on the GUI thread
        lo, hi = float(v[0]), float(v[-1])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 101)
        cuts = np.searchsorted(v, edges, side="left")
        cuts[-1] = v.size
        counts = np.diff(cuts)
        top = float(counts.max()) if counts.size else 1.0
        pad = 0.03 * (hi - lo)
        self.hist.setRange(xRange=(lo - pad, hi + pad), yRange=(0, top * (1.08 + 0.06 * max(OFFSETS.values()))),
                           padding=0)
        self.hist_curve.setData(edges, counts)
        parts = []
        for init, items in self.markers.items():
            r = comp.results.get(init)
            if r is None:
                for item in items[:2]:
                    item.setData([], [])
                continue
            colour = COLOURS.get(init, (0, 0, 0))
            band = top * (1.02 + 0.06 * OFFSETS.get(init, 0))
            items[0].setData(np.asarray(r["initial"]), np.full(len(r["initial"]), band + top * 0.03))
            items[1].setData(np.asarray(r["final"]), np.full(len(r["final"]), band))
            label = f"{init}: MSE {r['mse_initial']:.3g} → {r['mse_final']:.3g}"
            parts.append(f"<span style='color: rgb{colour}'>{label}</span>")
            self.errors[init] = (r["mse_initial"], r["mse_final"])
        sample = f", on every {comp.stride}th weight" if comp.stride > 1 else ""
        self.title.setText(f"<b>{comp.name}</b> at {comp.bits} bits ({2 ** comp.bits} codes{sample}): "
                           "▲ initial centroids, ● after k-means — " + "; ".join(parts))

    def _draw_cdf(self, comp) -> None:
        v = comp.values
        step = max(1, v.size // 4000)
        picks = np.arange(0, v.size, step)
        lo, hi = float(v[0]), float(v[-1])
        pad = 0.03 * (hi - lo) if hi > lo else 0.5
        self.cdf.setRange(xRange=(lo - pad, hi + pad), yRange=(0, 1.03), padding=0)
        self.cdf_curve.setData(v[picks], (picks + 1) / v.size)
        self._legend(self.cdf_curve, "CDF")
        for init, items in self.markers.items():
            r = comp.results.get(init)
            if r is None:
                for item in items[2:]:
                    item.setData([], [])
                self._legend(items[3], None)
                continue
            final, initial = np.asarray(r["final"]), np.asarray(r["initial"])
            items[2].setData(initial, np.searchsorted(v, initial, side="right") / v.size)
            items[3].setData(final, np.searchsorted(v, final, side="right") / v.size)
            self._legend(items[3], f"{init} MSE {r['mse_final']:.3g}")

    def show_accuracy_state(self, text: str) -> None:
        """The accuracy line while there are no accuracies: being measured, or why not."""
        self.accuracies, self._accuracy_line = {}, text
        self._explain()

    def show_accuracies(self, acc) -> None:
        """Show an :class:`explorer.engine.measure.layerview.InitAccuracies` below the comparison."""
        self.accuracies = dict(acc.accuracies)
        self._accuracy_line = accuracy_line(acc)
        self._explain()

    def _explain(self) -> None:
        comp = self._comp
        lines = [explanation(comp)] if comp is not None and comp.results else []
        if self._accuracy_line:
            lines.append(self._accuracy_line)
        self.explain.setText("<br>".join(lines))


def _tied(values: dict) -> list:
    """The keys whose value equals the lowest, in ``values``' order."""
    low = min(values.values())
    return [k for k, v in values.items() if v <= low + 1e-9 * abs(low)]


def explanation(comp) -> str:
    """What the comparison's numbers say: the init with the lowest MSE, the one that keeps the largest weights
    best (the largest error over the top 1% |w|), and, when they differ, why the MSE is not the whole story."""
    mse = {i: r["mse_final"] for i, r in comp.results.items()}
    top = {i: r["top_error"] for i, r in comp.results.items()}
    lowest, kept = _tied(mse), _tied(top)
    pct = f"{100 * comp.top_fraction:g}%"
    if len(lowest) == len(mse) and len(kept) == len(top):
        return (f"All inits reach MSE {mse[lowest[0]]:.3g} and the same largest error on the top {pct} |w| "
                f"({top[kept[0]]:.3g}): {2 ** comp.bits} codes are enough for these weights.")
    worst = max(mse, key=mse.get)
    errors = ", ".join(f"{i} {e:.3g}" for i, e in top.items())
    text = (f"Lowest MSE: <b>{'/'.join(lowest)}</b> ({mse[lowest[0]]:.3g}; {worst} {mse[worst]:.3g} is the worst "
            f"here). Largest weights kept best: <b>{'/'.join(kept)}</b> (largest error on the top {pct} |w|, "
            f"{comp.top_count:,} weights: {errors}).")
    if not set(kept) & set(lowest):
        text += (f" The MSE is dominated by the many small weights; {'/'.join(kept)} keeps the few large ones, "
                 "which Deep Compression found matter more for accuracy (its Fig. 8 compares the inits by "
                 "accuracy, as the line below does here).")
    return text


def accuracy_line(acc) -> str:
    """The accuracy of the model with the layer quantized by each init, the best named."""
    values = acc.accuracies
    best = _tied({i: -a for i, a in values.items()})
    each = ", ".join(f"{i} {100 * a:.2f}%" for i, a in values.items())
    verdict = ("the same for every init" if len(best) == len(values) else
               f"best: <b>{'/'.join(best)}</b>")
    data = html.escape(acc.data if str(acc.samples) in acc.data else f"{acc.data} ({acc.samples:,} samples)")
    return (f"Accuracy with only {acc.name} quantized ({acc.bits} bits; the other layers dense), on {data}: "
            f"{each} — {verdict}; dense {100 * acc.before:.2f}%.")

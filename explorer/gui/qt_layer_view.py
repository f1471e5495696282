"""The selected layer's weight histogram: kept and pruned weights in two colours, the pruning threshold
as two draggable lines at ±t, and the quantization levels as thin markers (a rug of short ticks along the
axis when there are more than :data:`LEVEL_LINES_MAX` of them). A layer pruned by whole filters or channels
shows instead its channels' norms, sorted, the ones that go in the pruned colour, and the cut."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QSizePolicy, QStackedWidget, QVBoxLayout, QWidget

from explorer.gui.qt_plot import curve, data_item, plot_widget

KEPT = (70, 130, 200, 200)
PRUNED = (220, 120, 60, 170)
LEVEL = (40, 160, 80, 200)
CUT = (200, 40, 40)
LEVEL_LINES_MAX = 16  # more levels than this are drawn as a rug: full-height lines would hide the histogram
RUG_HEIGHT = 0.04  # of the count axis
UNITS = {"filter": "filters (output channels)", "channel": "input channels", "merge": "neurons"}


class LayerView(QWidget):
    """Emits ``threshold_dragged(t)`` while a threshold line moves (cheap) and ``threshold_released(t)``
    when the drag ends (the window turns it into a sparsity)."""

    threshold_dragged = Signal(float)
    threshold_released = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("no layer")
        self.title.setWordWrap(True)  # between phrases only: each phrase's spaces are non-breaking
        self.title.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)  # its wrapped lines all shown
        self.plot = plot_widget()
        self.plot.setLabel("bottom", "weight value")
        self.plot.setLabel("left", "count")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setYRange(0, 1, padding=0)  # until a layer is drawn: counts, not pyqtgraph's range of no data
        self.kept = curve(self.plot, [0, 1], [0], stepMode="center", fillLevel=0, brush=KEPT, pen=pg.mkPen(KEPT),
                          name="kept")
        self.pruned = curve(self.plot, [0, 1], [0], stepMode="center", fillLevel=0, brush=PRUNED,
                            pen=pg.mkPen(PRUNED), name="pruned")
        self.levels = data_item([], [], connect="pairs", pen=pg.mkPen(LEVEL, width=1))
        self.plot.addItem(self.levels)
        self.rug = data_item([], [], connect="pairs", pen=pg.mkPen(LEVEL, width=1))
        self.plot.addItem(self.rug)
        self.lines = [pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen((200, 40, 40), width=2)) for _ in (0, 1)]
        for line in self.lines:
            line.setVisible(False)
            self.plot.addItem(line)
            line.sigPositionChanged.connect(self._moved)
            line.sigPositionChangeFinished.connect(self._released)
        self._syncing = False
        self.ranking_plot = plot_widget()
        self.ranking_plot.setLabel("left", "norm")
        self.ranking_plot.showGrid(x=False, y=True, alpha=0.2)
        self.ranking_plot.addLegend(offset=(10, 10))
        self.going = pg.BarGraphItem(x=[], height=[], width=0.8, brush=PRUNED, pen=pg.mkPen(PRUNED), name="removed")
        self.staying = pg.BarGraphItem(x=[], height=[], width=0.8, brush=KEPT, pen=pg.mkPen(KEPT), name="kept")
        self.cut = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(CUT, width=2, style=pg.QtCore.Qt.DashLine),
                                   label="cut", labelOpts={"position": 0.05, "color": CUT})
        for item in (self.going, self.staying, self.cut):
            self.ranking_plot.addItem(item)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.plot)
        self.stack.addWidget(self.ranking_plot)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.stack, 1)

    def show_preview(self, preview) -> None:
        """Draw a :class:`explorer.engine.measure.layerview.LayerPreview` (no engine work here)."""
        if preview.ranking is not None:
            return self._show_ranking(preview)
        self.stack.setCurrentWidget(self.plot)
        # each factor has its own threshold, and saliency has none: no ±t lines
        self._factored = bool(preview.info.get("factors")) or bool(preview.info.get("criterion"))
        self.kept.setData(preview.edges, preview.kept)
        self.pruned.setData(preview.edges, preview.pruned)
        n_pruned = preview.pruned_count
        parts = [f"<b>{preview.name}</b>:&nbsp;{preview.numel:,}&nbsp;weights"]
        factors = preview.info.get("factors")
        if factors:  # a factorised layer: what the file stores are its factors
            parts[0] += (f" in {len(factors)} {preview.info['lowrank']} factors (the layer had "
                         f"{preview.info['layer_weights']:,}; reconstruction error "
                         f"{preview.info['lowrank_error']:.1%})")
        if preview.stride > 1:
            parts[0] += f" (histogram of every {preview.stride}th)"
        if n_pruned:
            parts.append(f"{n_pruned:,} pruned ({n_pruned / max(preview.numel, 1):.0%}) "
                         + ("below |w|&nbsp;=&nbsp;" f"{preview.threshold:.4g}" if preview.threshold is not None
                            else f"of least {preview.info['criterion']} saliency (no |w| threshold)"
                            if preview.info.get("criterion") else "each factor below its own threshold"))
        if preview.levels is not None:
            quant = f"{preview.levels.size} distinct values after quantization"
            if preview.quant_mse is not None:
                quant += f" (MSE&nbsp;{mse_text(preview.quant_mse)})"
            parts.append(quant)
        kept_top = float(preview.kept.max(initial=0))
        pruned_top = float(preview.pruned.max(initial=0))
        top = max(kept_top, pruned_top, 1.0)
        if kept_top and pruned_top > 4 * kept_top:
            # the pruned weights pile up near zero and would flatten the survivors: clip the axis to show them
            top = kept_top * 2.5
            parts.append(f"count axis clipped; the pruned peak reaches {int(pruned_top):,}")
        text = _phrases(parts)
        if preview.ranking_error:  # a reason, free to wrap
            text += f"; not drawn by channel: {preview.ranking_error}"
        self.title.setText(text)
        self.plot.setYRange(0, top * 1.08, padding=0)
        levels = preview.levels if preview.levels is not None else np.zeros(0)
        lines = levels.size <= LEVEL_LINES_MAX
        height = top * 1.05 if lines else top * RUG_HEIGHT
        xs, ys = np.repeat(levels, 2), np.tile([0.0, height], levels.size)
        (self.levels if lines else self.rug).setData(xs, ys)
        (self.rug if lines else self.levels).setData([], [])
        self.set_threshold(preview.threshold)

    def _show_ranking(self, preview) -> None:
        """Filter or channel pruning: the channels' norms, ascending, the removed ones in the pruned colour."""
        r = preview.ranking
        self.stack.setCurrentWidget(self.ranking_plot)
        self.set_threshold(None)
        sorted_norms = r.norms[r.order]
        going = r.removed[r.order]
        xs = np.arange(sorted_norms.size)
        self.going.setOpts(x=xs[going], height=sorted_norms[going])
        self.staying.setOpts(x=xs[~going], height=sorted_norms[~going])
        cut = r.cut
        self.cut.setVisible(cut is not None)
        if cut is not None:
            self.cut.setValue(cut)
        unit = UNITS.get(r.granularity, r.granularity)
        merge = r.granularity == "merge"  # ranked by the saliency of merging each into its twin, not a norm
        what = "saliency ‖a_j‖²·‖W_i − W_j‖²" if merge else f"{r.criterion.upper()} norm"
        self.ranking_plot.setLabel("bottom", f"{unit}, sorted by {'saliency' if merge else what}")
        self.ranking_plot.setLabel("left", what)
        n, gone = sorted_norms.size, int(r.removed.sum())
        if merge:
            said = (f"{gone} merged into their nearest twins ({gone / max(n, 1):.0%}), e.g. " +
                    ", ".join(f"{j}→{i}" for j, i in r.merges[:3]) if gone else "none merged")
        else:
            said = (f"{gone} removed ({gone / max(n, 1):.0%}) with {what} below {cut:.4g}" if cut is not None
                    else "none removed")
        parts = [f"<b>{preview.name}</b>:&nbsp;{n}&nbsp;{unit}", said]
        if preview.levels is not None and preview.quant_mse is not None:
            parts.append(f"quantized weights MSE&nbsp;{mse_text(preview.quant_mse)}")
        self.title.setText(_phrases(parts))
        self.ranking_plot.setXRange(-1, n, padding=0)
        self.ranking_plot.setYRange(0, float(sorted_norms.max(initial=1.0)) * 1.08, padding=0)

    def set_threshold(self, t) -> None:
        if getattr(self, "_factored", False):
            t = None
        self._syncing = True
        try:
            for line, sign in zip(self.lines, (-1, 1)):
                line.setVisible(t is not None and t > 0)
                if t:
                    line.setValue(sign * t)
        finally:
            self._syncing = False

    def _moved(self, line) -> None:
        if self._syncing:
            return
        t = abs(float(line.value()))
        other = self.lines[1] if line is self.lines[0] else self.lines[0]
        self._syncing = True
        other.setValue(-float(line.value()))
        self._syncing = False
        self.threshold_dragged.emit(t)

    def _released(self, line) -> None:
        if not self._syncing:
            self.threshold_released.emit(abs(float(line.value())))

    def show_threshold_lines(self, t: float) -> None:
        """Show ±t lines (e.g. for a layer with no pruning yet, so they can be dragged); not over a
        channel ranking (whole channels go: there is no weight threshold)."""
        if self.stack.currentWidget() is not self.ranking_plot:
            self.set_threshold(t)


def mse_text(mse: float) -> str:
    """A quantization error, compactly: ``0`` when exact, else three significant digits."""
    return "0" if mse == 0 else f"{mse:.3g}"


def _phrases(parts) -> str:
    """The title's phrases joined: it wraps between phrases, never inside one (their spaces non-breaking)."""
    return "; ".join(p.replace(" ", "&nbsp;") for p in parts)

"""The selected layer's weight histogram: kept and pruned weights in two colours, the pruning threshold
as two draggable lines at ±t, and the quantization levels as thin markers."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from explorer.gui.qt_plot import curve, data_item, plot_widget

KEPT = (70, 130, 200, 200)
PRUNED = (220, 120, 60, 170)
LEVEL = (40, 160, 80, 200)


class LayerView(QWidget):
    """Emits ``threshold_dragged(t)`` while a threshold line moves (cheap) and ``threshold_released(t)``
    when the drag ends (the window turns it into a sparsity)."""

    threshold_dragged = Signal(float)
    threshold_released = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("no layer")
        self.title.setWordWrap(True)
        self.plot = plot_widget()
        self.plot.setLabel("bottom", "weight value")
        self.plot.setLabel("left", "count")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.kept = curve(self.plot, [0, 1], [0], stepMode="center", fillLevel=0, brush=KEPT, pen=pg.mkPen(KEPT),
                          name="kept")
        self.pruned = curve(self.plot, [0, 1], [0], stepMode="center", fillLevel=0, brush=PRUNED,
                            pen=pg.mkPen(PRUNED), name="pruned")
        self.levels = data_item([], [], connect="pairs", pen=pg.mkPen(LEVEL, width=1))
        self.plot.addItem(self.levels)
        self.lines = [pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen((200, 40, 40), width=2)) for _ in (0, 1)]
        for line in self.lines:
            line.setVisible(False)
            self.plot.addItem(line)
            line.sigPositionChanged.connect(self._moved)
            line.sigPositionChangeFinished.connect(self._released)
        self._syncing = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.plot)

    def show_preview(self, preview) -> None:
        """Draw a :class:`explorer.engine.measure.layerview.LayerPreview` (no engine work here)."""
        self.kept.setData(preview.edges, preview.kept)
        self.pruned.setData(preview.edges, preview.pruned)
        n_pruned = preview.pruned_count
        text = f"<b>{preview.name}</b>: {preview.numel:,} weights"
        if preview.stride > 1:
            text += f" (histogram of every {preview.stride}th)"
        if n_pruned:
            text += f", {n_pruned:,} pruned ({n_pruned / max(preview.numel, 1):.0%}) below |w| = {preview.threshold:.4g}"
        if preview.levels is not None:
            text += f"; {preview.levels.size} distinct values after quantization"
            if preview.quant_mse is not None:
                text += f" (MSE {preview.quant_mse:.3g})"
        self.title.setText(text)
        kept_top = float(preview.kept.max(initial=0))
        pruned_top = float(preview.pruned.max(initial=0))
        top = max(kept_top, pruned_top, 1.0)
        if kept_top and pruned_top > 4 * kept_top:
            # the pruned weights pile up near zero and would flatten the survivors: clip the axis to show them
            top = kept_top * 2.5
            text += f" — count axis clipped; the pruned peak reaches {int(pruned_top):,}"
            self.title.setText(text)
        self.plot.setYRange(0, top * 1.08, padding=0)
        if preview.levels is not None and preview.levels.size:
            xs = np.repeat(preview.levels, 2)
            ys = np.tile([0.0, top * 1.05], preview.levels.size)
            self.levels.setData(xs, ys)
        else:
            self.levels.setData([], [])
        self.set_threshold(preview.threshold)

    def set_threshold(self, t) -> None:
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
        """Show ±t lines (e.g. for a layer with no pruning yet, so they can be dragged)."""
        self.set_threshold(t)

"""The preview panel: size at each stage as a bar chart with its numbers, compression ratio, MACs and
accuracy before/after, a progress bar while measuring and a "stale" mark while a new measurement runs.
Every number shown here is one the engine measured (evaluate_plan / accuracy); none is computed here."""

from __future__ import annotations

import html

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QGridLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from explorer.gui.qt_plot import plot_widget
from explorer.units import human_bytes

STAGES = [("dense", "dense"), ("pruned", "pruned"), ("quantized", "quantized"), ("coded", "entropy-coded"),
          ("file", ".cexp file")]
BLUE, GREY = (70, 130, 200), (170, 170, 170)
GREY_AFTER_MS = 40  # see PreviewPanel.set_stale
TOP_ROOM = 8  # pixels above the bytes axis: half a tick label's height, for a tick at the top of the range


class PreviewPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = plot_widget()
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.plot.setLabel("left", "bytes")
        self.plot.setYRange(0, 1, padding=0)  # until sizes are measured: not the range pyqtgraph gives zero bars
        self.plot.getPlotItem().layout.setContentsMargins(1, TOP_ROOM, 1, 1)  # a tick label at the top is whole
        self.bars = pg.BarGraphItem(x=list(range(len(STAGES))), height=[0] * len(STAGES), width=0.6, brush=BLUE)
        self._colour = BLUE
        self._sizes_stale = False
        self.plot.addItem(self.bars)
        self.plot.getAxis("bottom").setTicks([[(i, label) for i, (_, label) in enumerate(STAGES)]])
        self.texts = []
        for i in range(len(STAGES)):
            t = pg.TextItem("", anchor=(0.5, 1.0), color=(20, 20, 20))
            self.plot.addItem(t)
            self.texts.append(t)
        self.status = QLabel("")
        self.ratio = QLabel("ratio: –")
        self.macs = QLabel("MACs: –")
        self.acc = QLabel("accuracy: –")
        for lab in (self.ratio, self.macs, self.acc):
            lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        keep = self.progress.sizePolicy()
        keep.setRetainSizeWhenHidden(True)  # showing it must not re-lay out the plot (a resize of every axis)
        self.progress.setSizePolicy(keep)
        self.progress.setVisible(False)
        grid = QGridLayout()
        grid.addWidget(self.ratio, 0, 0)
        grid.addWidget(self.macs, 1, 0)
        grid.addWidget(self.acc, 2, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)
        layout.addLayout(grid)
        layout.addWidget(self.progress)
        self.values = {}

    def set_stale(self, stale: bool, what: str = "measuring…", sizes: bool = True,
                  measured: str = "measured") -> None:
        """Mark the panel stale (``what`` is being measured) or ``measured`` (what was: the plan, or a
        fine-tuned model). ``sizes``: the sizes are stale too (greyed bars); while only the accuracy is
        measured the bars keep their colour.

        The text says so at once; the bars turn grey only if the sizes are still being measured after
        :data:`GREY_AFTER_MS`: re-colouring them repaints the plot (5-10 ms of Python on the GUI thread),
        which ran beside the measurement itself and slowed it, and a grey flash shorter than that is not
        seen."""
        self.status.setText(f"<span style='color:#c60'>⟳ stale — {what}</span>" if stale else
                            f"<span style='color:#080'>✓ {html.escape(measured)}</span>")
        self._sizes_stale = stale and sizes
        if self._sizes_stale:
            QTimer.singleShot(GREY_AFTER_MS, self._grey_if_stale)
        else:
            self._colour_bars(BLUE)

    def _grey_if_stale(self) -> None:
        if self._sizes_stale:
            self._colour_bars(GREY)

    def _colour_bars(self, colour) -> None:
        if colour != self._colour:
            self._colour = colour
            self.bars.setOpts(brush=colour)

    def set_progress(self, fraction) -> None:
        if fraction is None:
            self.progress.setVisible(False)
        else:
            # the value first: QProgressBar.setValue repaints synchronously (the whole dirty window) when the
            # bar is visible
            self.progress.setValue(int(round(fraction * 100)))
            self.progress.setVisible(True)

    def show_results(self, results: dict) -> None:
        size = results["size"]
        heights = [size.get(k) or 0 for k, _ in STAGES]
        self.values = dict(size)
        self.bars.setOpts(height=heights)
        top = max(heights) or 1
        for i, (t, h) in enumerate(zip(self.texts, heights)):
            t.setText(f"{h:,}\n{human_bytes(h)}" if h else "–")
            t.setPos(i, h + top * 0.02)
        self.plot.setYRange(0, top * 1.25, padding=0)  # bytes: the axis starts at 0, not below
        file_bytes = size.get("file") or size["coded"]
        self.ratio.setText(f"<b>ratio</b>: {size['dense'] / max(file_bytes, 1):.1f}× "
                           f"({size['dense']:,} → {file_bytes:,} bytes as written)")
        m = results["macs"]
        if m.get("before") is not None:
            eff = f", effective {m['effective']:,}" if m.get("effective") is not None else ""
            self.macs.setText(f"<b>MACs</b>: {m['before']:,} → {m['after']:,}{eff}")

    def show_accuracy(self, acc, model: str = "") -> None:
        """``acc`` as the engine measured it; ``model``: what was measured, when it is not the plan's own
        compressed model (e.g. "fine-tuned")."""
        of = f" — {model}" if model else ""
        if acc is None:
            self.acc.setText("accuracy: – (no eval data)")
        elif "cosine" in acc:
            self.acc.setText(f"<b>fidelity</b> vs original: cosine {acc['cosine']:.4f}, "
                             f"rel. error {acc['rel_error']:.4f}{of}")
        else:
            self.acc.setText(f"<b>accuracy</b> ({acc['data']}): {acc['before']:.2%} → {acc['after']:.2%}{of}")

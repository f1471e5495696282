"""The preview panel: size at each stage as a bar chart with its numbers and each stage's ratio to dense (on a
linear or, remembered in the window's settings, a log axis: on a linear one every stage after dense is a
sliver), compression ratio, MACs and accuracy before/after, a progress bar while measuring and a "stale"
mark while a new measurement runs. Every number shown here is one the engine measured (evaluate_plan /
accuracy); only the file's ratio to dense is divided here, as the ratio line does."""

from __future__ import annotations

import html
import math

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QCheckBox, QGridLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from explorer.gui.qt_plot import plot_widget
from explorer.units import human_bytes

STAGES = [("dense", "dense"), ("pruned", "pruned"), ("quantized", "quantized"), ("coded", "entropy-coded"),
          ("file", ".cexp file")]
BLUE, GREY = (70, 130, 200), (170, 170, 170)
GREY_AFTER_MS = 40  # see PreviewPanel.set_stale
TOP_ROOM = 8  # pixels above the bytes axis: half a tick label's height, for a tick at the top of the range
LOG_KEY = "preview/log_axis"  # the window's QSettings: the size bars on a log axis


class PreviewPanel(QWidget):
    def __init__(self, parent=None, settings=None):
        super().__init__(parent)
        self.settings = settings  # the window's QSettings (None: the choice is not remembered)
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
        self.latency = QLabel("latency (measured): –")
        self.latency.setToolTip("the original model and the plan's compressed model run on the example input (batch "
                                "1), the latter as decoded to dense tensors (structured and low-rank layers are "
                                "smaller dense layers) and under the compressed runtime (sparse rows and shared-weight codes "
                                "where they are faster, each layer timed); measured in the background")
        self.latency.setWordWrap(True)  # never wider than the panel
        for lab in (self.ratio, self.macs, self.acc, self.latency):
            lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        keep = self.progress.sizePolicy()
        keep.setRetainSizeWhenHidden(True)  # showing it must not re-lay out the plot (a resize of every axis)
        self.progress.setSizePolicy(keep)
        self.progress.setVisible(False)
        self.log_axis = QCheckBox("log axis")
        self.log_axis.setToolTip("sizes on a logarithmic axis: every stage after dense visible beside it")
        self.log_axis.setChecked(bool(settings is not None and settings.value(LOG_KEY, False, type=bool)))
        self.log_axis.toggled.connect(self._log_toggled)
        self.plot.setLogMode(False, self.log_axis.isChecked())
        grid = QGridLayout()
        grid.addWidget(self.log_axis, 0, 1, Qt.AlignRight)
        grid.addWidget(self.ratio, 0, 0)
        grid.addWidget(self.macs, 1, 0)
        grid.addWidget(self.acc, 2, 0)
        grid.addWidget(self.latency, 3, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)
        layout.addLayout(grid)
        layout.addWidget(self.progress)
        self.values = {}
        self.last_latency = None  # what the latency line shows (the engine's numbers)
        self.ratios = {}  # stage -> its ratio to dense, as labelled on its bar
        self._results = None

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

    def _log_toggled(self, on: bool) -> None:
        if self.settings is not None:
            self.settings.setValue(LOG_KEY, on)
        self.plot.setLogMode(False, on)
        if self._results is not None:
            self.show_results(self._results)

    def show_results(self, results: dict) -> None:
        self._results = results
        size = results["size"]
        heights = [size.get(k) or 0 for k, _ in STAGES]
        self.values = dict(size)
        self.ratios = {k: (results["ratio"].get(k) if k in results.get("ratio", {}) else
                           size["dense"] / h if h else None) for (k, _), h in zip(STAGES, heights)}
        top = max(heights) or 1
        if self.log_axis.isChecked():  # bars drawn in log10 units from a decade below the smallest stage
            floor = math.floor(math.log10(min(h for h in heights if h > 0) if any(heights) else 1)) - 1
            tops = [math.log10(h) if h > 0 else floor for h in heights]
            self.bars.setOpts(y0=floor, height=[t - floor for t in tops])
            room = math.log10(top) - floor
            for i, (t, y) in enumerate(zip(self.texts, tops)):
                t.setPos(i, y + 0.02 * room)
            self.plot.setYRange(floor, math.log10(top) + 0.45 * room, padding=0)
        else:
            self.bars.setOpts(y0=0, height=heights)
            for i, (t, h) in enumerate(zip(self.texts, heights)):
                t.setPos(i, h + top * 0.02)
            self.plot.setYRange(0, top * 1.4, padding=0)
        for (key, _), t, h in zip(STAGES, self.texts, heights):
            ratio = self.ratios[key]
            times = f"\n{ratio:.1f}×" if (key != "dense" and ratio) else ""
            t.setText(f"{h:,}\n{human_bytes(h)}{times}" if h else "–")
        file_bytes = size.get("file") or size["coded"]
        self.ratio.setText(f"<b>ratio</b>: {size['dense'] / max(file_bytes, 1):.1f}× "
                           f"({size['dense']:,} → {file_bytes:,} bytes as written)")
        m = results["macs"]
        if m.get("before") is not None:
            eff = f", effective {m['effective']:,}" if m.get("effective") is not None else ""
            self.macs.setText(f"<b>MACs</b>: {m['before']:,} → {m['after']:,}{eff}")

    def show_latency(self, lat, why: str = "") -> None:
        """``lat`` as :func:`explorer.engine.measure.bench.runtime_latency` measured it (None: not measured)."""
        self.last_latency = lat
        if lat is None:
            self.latency.setText("latency (measured): –" + (f" ({why})" if why else ""))
            return
        kept = (f"{lat['replaced']} of {lat['layers']} layers on their stored form" if lat["replaced"]
                else f"{lat['layers']} layers kept dense: faster" if lat["layers"] else "no layer to run compressed")
        before = (f"{lat['original_ms']:.3f} ms original → ", f"{human_bytes(lat['resident_original'])} → ") \
            if "original_ms" in lat else ("", "")
        self.latency.setText(
            f"<b>latency</b> (batch {lat['batch']}): {before[0]}{lat['dense_ms']:.3f} ms compressed, dense layers → "
            f"{lat['compressed_ms']:.3f} ms compressed runtime; weights {before[1]}"
            f"{human_bytes(lat['resident_dense'])} → {human_bytes(lat['resident_compressed'])} ({kept})")

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

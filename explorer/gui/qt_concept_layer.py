"""The teaching views of one layer, drawing what :mod:`explorer.engine.teach.layer` computed (no engine work
here): pruning granularity, sparse storage, quantization error against bits, entropy coding, the low-rank
spectrum. Each ``show(view)`` redraws from a dataclass; the window and the handout use the same classes."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout,
                               QWidget)

from explorer.engine.methods.granularities import GRANULARITIES
from explorer.gui.qt_plot import curve, plot_widget

REMOVED = np.array([250, 205, 165], np.float32)  # the pruned colour, pale: the survivors stand out
KEPT = np.array([10, 40, 150], np.float32)
FAINT = np.array([175, 200, 240], np.float32)  # the smallest kept |w|
INIT_COLOURS = {"k-means (forgy)": (200, 60, 60), "k-means (density)": (60, 140, 60),
                "k-means (linear)": (50, 90, 200), "k-means (kmeans++)": (170, 110, 20), "uniform": (110, 110, 110)}
FILLER = QColor(250, 215, 160)


def weight_rgb(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """|w| as pale → dark blue, blended to pale orange by the share of each block removed: (rows, cols, 3)."""
    top = float(image.max()) or 1.0
    t = np.sqrt(np.clip(image / top, 0, 1))[..., None]
    base = FAINT * (1 - t) + KEPT * t
    r = np.clip(removed, 0, 1)[..., None]
    return (base * (1 - r) + REMOVED * r).astype(np.uint8)


def caption(text: str) -> QLabel:
    """A line saying what the colours and lines mean (a plot's title must stay short: pyqtgraph widens the
    plot to its title and cuts off the right-hand side)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #555")
    return label


def _image_plot(title: str) -> tuple:
    plot = plot_widget(title=title)
    plot.invertY(True)
    plot.setAspectLocked(False)
    item = pg.ImageItem(axisOrder="row-major")
    plot.addItem(item)
    plot.setLabel("left", "output channel (row)")
    return plot, item


def _set_image(plot, item, rgb: np.ndarray, shape: tuple, weight_shape: tuple) -> None:
    """Draw ``rgb`` (block means) over the matrix's real extent ``shape`` (rows, columns) of a weight of
    ``weight_shape`` (a convolution's columns are its input channels' kernels)."""
    plot.setLabel("bottom", "input × kernel (column)" if len(weight_shape) > 2 else "input (column)")
    item.setImage(rgb, autoLevels=False, levels=(0, 255))
    item.setRect(0, 0, shape[1], shape[0])
    plot.setXRange(0, shape[1], padding=0.01)
    plot.setYRange(0, shape[0], padding=0.01)


class GranularityPlot(QWidget):
    """The layer's matrix with what pruning removes; beside it the first other layer that loses weights."""
    granularity_chosen = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.choice = QComboBox()
        self.choice.addItems(list(GRANULARITIES))  # the registry's
        self.choice.setToolTip("Which granularity to draw, at the plan's amount (50% where the plan prunes none)")
        self.choice.activated.connect(lambda i: self.granularity_chosen.emit(self.choice.itemText(i)))
        self.plot, self.item = _image_plot("this layer")
        self.other_plot, self.other_item = _image_plot("what goes with it")
        row = QHBoxLayout()
        row.addWidget(QLabel("granularity:"))
        row.addWidget(self.choice)
        row.addStretch(1)
        row.addWidget(caption("|w| pale to dark blue; removed weights orange"))
        plots = QHBoxLayout()
        plots.addWidget(self.plot, 3)
        plots.addWidget(self.other_plot, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addLayout(plots, 1)

    def draw(self, view) -> None:
        self.choice.setCurrentText(view.granularity)
        self.plot.setVisible(view.refused is None)  # refused: the chooser stays, the text says why
        if view.refused is not None:
            self.other_plot.setVisible(False)
            return
        self.plot.setTitle(f"{view.name} {_dims(view.shape)}")
        _set_image(self.plot, self.item, weight_rgb(view.image, view.removed_image), view.matrix_shape,
                   view.shape)
        other = next((a for a in view.affected if a.image is not None), None)
        self.other_plot.setVisible(other is not None)
        if other is not None:
            what = "input columns" if other.kind == "columns" else "filters"
            self.other_plot.setTitle(f"{other.name}: {what}")
            _set_image(self.other_plot, self.other_item, weight_rgb(other.image, other.removed_image),
                       other.matrix_shape, other.shape)


def _dims(shape) -> str:
    return "(" + "×".join(str(s) for s in shape) + ")"


class StoragePlot(QWidget):
    """One row's (gap, value) entries, fillers marked, and bits per survivor against the gap width."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.view = None
        self.width_choice = QComboBox()
        self.width_choice.activated.connect(lambda _: self._draw_row())
        self.table = QTableWidget(3, 0)
        self.table.setVerticalHeaderLabels(["position", "gap", "value"])
        self.table.horizontalHeader().setVisible(False)
        self.table.setMaximumHeight(3 * 30 + 28)
        self.bits = plot_widget(label_room="888.8", title="bits per survivor by gap width")
        self.bits.setLabel("bottom", "gap width b (bits)")
        self.bits.setLabel("left", "bits per survivor")
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.6, brush=(40, 90, 200))
        self.chosen = pg.BarGraphItem(x=[], height=[], width=0.6, brush=(235, 120, 30))
        self.bits.addItem(self.bars)
        self.bits.addItem(self.chosen)
        self.mask_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((60, 140, 60), width=2, style=Qt.DashLine),
                                         label="bitmask", labelOpts={"position": 0.97, "color": (60, 140, 60),
                                                                     "anchors": [(1, 1), (1, 1)]})
        self.bits.addItem(self.mask_line)
        self.bits.getAxis("bottom").setTicks([[(b, str(b)) for b in range(3, 9)]])  # widths are whole bits
        row = QHBoxLayout()
        row.addWidget(QLabel("the first entries, with gaps of"))
        row.addWidget(self.width_choice)
        row.addWidget(QLabel("bits (fillers shaded)"))
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.table)
        lay.addWidget(caption("(gap, value) entries, gaps + values + codebook; orange: the width the file stores "
                              "(after entropy coding); dashed green: a bitmask"))
        lay.addWidget(self.bits, 1)

    def draw(self, view) -> None:
        self.view = view
        self.width_choice.clear()
        self.width_choice.addItems([str(b) for b in view.rows])
        if view.rows:
            self.width_choice.setCurrentText(str(view.row_gap_bits))
        self._draw_row()
        bs = sorted(view.per_gap)
        heights = [view.per_survivor(view.per_gap[b]["bits"]) for b in bs]
        chosen = view.chosen.get("gap_bits") if view.chosen.get("format") == "gaps" else None
        self.bars.setOpts(x=[b for b in bs if b != chosen], height=[h for b, h in zip(bs, heights) if b != chosen])
        self.chosen.setOpts(x=[chosen] if chosen in bs else [], height=[heights[bs.index(chosen)]] if chosen in bs else [])
        mask = view.per_survivor(view.bitmask_bits)
        self.mask_line.setVisible(bool(bs))
        self.mask_line.setValue(mask)
        top = max(heights + [mask]) if bs else 1.0
        self.bits.setXRange(2.4, 8.6, padding=0)
        self.bits.setYRange(0, top * 1.3, padding=0)  # room above the bitmask line for its label

    def _draw_row(self) -> None:
        v = self.view
        if v is None:
            return
        b = int(self.width_choice.currentText()) if self.width_choice.count() else None
        entries = v.rows.get(b, []) if b is not None else []
        self.table.setColumnCount(len(entries))
        for j, (pos, gap, value, filler) in enumerate(entries):
            for i, text in enumerate((str(pos), str(gap), "0 (filler)" if filler else f"{value:.3g}")):
                cell = QTableWidgetItem(text)
                cell.setTextAlignment(Qt.AlignCenter)
                if filler:
                    cell.setBackground(FILLER)
                self.table.setItem(i, j, cell)
        self.table.resizeColumnsToContents()


def _dot(colour, text: str) -> str:
    return f"<span style='color: rgb{colour}'>●</span>&nbsp;{text}"


def _quant_key() -> str:
    """The error curves' colours, as one line of text."""
    inits = [k for k in INIT_COLOURS if k.startswith("k-means (")]
    return ("k&#8209;means: " + " ".join(_dot(INIT_COLOURS[k], k[len("k-means ("):-1]) for k in inits) + "; "
            + _dot(INIT_COLOURS["uniform"], "uniform") + " <b>■</b>&nbsp;binary "
            "<span style='color: rgb(150, 0, 150)'>◆</span>&nbsp;ternary")


class QuantizationPlot(QWidget):
    """Relative error against bits per method; the levels of the chosen method over the histogram."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.view = None
        self.errors = plot_widget(label_room="0.000", title="relative error of the survivors")
        self.errors.setLabel("bottom", "bits per weight")
        self.errors.setLabel("left", "‖w − q‖ / ‖w‖")
        self.errors.setLogMode(False, True)
        self.errors.getAxis("left").enableAutoSIPrefix(False)  # a log axis scaled "(x0.001)" misreads
        self.curves = {k: curve(self.errors, [], [], pen=pg.mkPen(c, width=2), symbol="o", symbolSize=5,
                                symbolBrush=c, name=k) for k, c in INIT_COLOURS.items()}
        self.marks = {k: curve(self.errors, [], [], pen=None, symbol=s, symbolSize=11, symbolBrush=c, name=k)
                      for k, s, c in (("binary", "s", (0, 0, 0)), ("ternary", "d", (150, 0, 150)))}
        self.method = QComboBox()
        self.method.activated.connect(lambda _: self._draw_levels())
        self.hist = plot_widget(title="levels over the weights")
        self.hist.setLabel("bottom", "weight value")
        self.hist.setLabel("left", "count")
        self.hist_curve = curve(self.hist, [0, 1], [0], stepMode="center", fillLevel=0, brush=(150, 150, 150, 120),
                                pen=pg.mkPen((120, 120, 120)))
        self.level_lines = curve(self.hist, [], [], pen=pg.mkPen((200, 60, 60), width=1), connect="pairs")
        top = QHBoxLayout()  # the curves' key (a legend inside the small plot would cover them), the levels' method
        top.addWidget(caption(_quant_key()), 3)
        top.addWidget(QLabel("levels of"))
        top.addWidget(self.method, 1)
        plots = QHBoxLayout()
        plots.addWidget(self.errors, 1)
        plots.addWidget(self.hist, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addLayout(plots, 1)

    def draw(self, view) -> None:
        self.view = view
        bits = np.array(view.bits, float)
        for k, c in self.curves.items():
            ys = view.errors.get(k)
            ok = [i for i, y in enumerate(ys or []) if y is not None and y > 0]
            c.setData(bits[ok], np.array([ys[i] for i in ok]))
        self.marks["binary"].setData([1.0], [max(view.binary, 1e-6)])
        self.marks["ternary"].setData([np.log2(3)], [max(view.ternary, 1e-6)])
        self.errors.setXRange(0.7, bits.max() + 0.3, padding=0)
        self.errors.setYRange(*_decades([y for v in view.errors.values() for y in v] + [view.binary, view.ternary]),
                              padding=0.02)
        self.hist.setTitle(f"levels at {view.at_bits} bits")
        current = self.method.currentText()
        self.method.clear()
        self.method.addItems(list(view.levels))
        if current in view.levels:
            self.method.setCurrentText(current)
        self.hist_curve.setData(view.edges, view.counts)
        self.hist.setXRange(float(view.edges[0]), float(view.edges[-1]), padding=0.02)
        self.hist.setYRange(0, float(view.counts.max(initial=1)) * 1.08, padding=0)
        self._draw_levels()

    def _draw_levels(self) -> None:
        v = self.view
        if v is None or not self.method.count():
            return
        levels = v.levels.get(self.method.currentText(), np.zeros(0))
        top = float(v.counts.max(initial=1)) * 1.05
        self.level_lines.setData(np.repeat(levels, 2), np.tile([0.0, top], levels.size))


def _decades(values, least: int = 3) -> tuple:
    """The log10 range of a log-scale plot of the positive ``values``: whole decades around them, at least
    ``least`` of them (over fewer, pyqtgraph labels every minor tick and the labels run together)."""
    ys = [y for y in values if y is not None and y > 0] or [1.0]
    hi = int(np.ceil(np.log10(max(ys))))
    lo = min(int(np.floor(np.log10(min(ys)))), hi - least)
    return lo, hi


class EntropyPlot(QWidget):
    """Per stream: symbol counts, and Huffman code lengths against the entropy and the raw width."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plots = {}
        grid = QHBoxLayout()
        for kind in ("index", "gap"):
            col = QVBoxLayout()
            counts = plot_widget(title=f"{kind} stream")
            counts.setLabel("bottom", "symbol (code)" if kind == "index" else "gap")
            counts.setLabel("left", "count")
            lengths = plot_widget(label_room="88", title="code lengths")
            lengths.setLabel("bottom", "symbol (code)" if kind == "index" else "gap")
            lengths.setLabel("left", "bits")
            bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=(40, 90, 200))
            counts.addItem(bars)
            code = pg.BarGraphItem(x=[], height=[], width=0.8, brush=(60, 140, 60), pen=pg.mkPen((60, 140, 60)))
            lengths.addItem(code)
            entropy = curve(lengths, [], [], pen=pg.mkPen((200, 60, 60), width=2), name="entropy H")
            raw = curve(lengths, [], [], pen=pg.mkPen((0, 0, 0), width=1, style=Qt.DashLine), name="raw width")
            col.addWidget(counts, 3)
            col.addWidget(lengths, 2)
            grid.addLayout(col)
            self.plots[kind] = (counts, lengths, bars, code, entropy, raw)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(grid, 1)
        lay.addWidget(caption("top: how often each symbol occurs; below: its Huffman code length in bits (green), "
                              "the entropy H (red) and the raw width (dashed)"))

    def draw(self, view) -> None:
        streams = {s.kind: s for s in view.streams}
        for kind, (counts, lengths, bars, code, entropy, raw) in self.plots.items():
            s = streams.get(kind)
            if s is None:  # emptied, never hidden: hiding re-lays the page out at every other layer (2x the draw)
                bars.setOpts(x=[], height=[])
                code.setOpts(x=[], height=[])
                entropy.setData([], [])
                raw.setData([], [])
                counts.setTitle(f"no {kind} stream here")
                for plot in (counts, lengths):  # not the last layer's axes
                    plot.setXRange(0, 1, padding=0)
                    plot.setYRange(0, 1, padding=0)
                continue
            present = np.flatnonzero(s.counts)
            xs = present  # a gap histogram is indexed by the gap (its entry 0 is never used)
            bars.setOpts(x=xs, height=s.counts[present])
            code.setOpts(x=xs, height=s.lengths[present])
            lo, hi = (float(xs.min()) - 1, float(xs.max()) + 1) if xs.size else (0.0, 1.0)
            entropy.setData([lo, hi], [s.entropy, s.entropy])
            raw.setData([lo, hi], [s.width, s.width])
            counts.setTitle(f"{kind} stream ({s.bits.coder})")
            for p in (counts, lengths):
                p.setXRange(lo, hi, padding=0)
            counts.setYRange(0, float(s.counts.max(initial=1)) * 1.08, padding=0)
            lengths.setYRange(0, float(max(s.lengths.max(initial=1), s.width)) * 1.15, padding=0)


class SpectrumPlot(QWidget):
    """Singular values (log scale) with the plan's cut and the break-even ranks; energy kept by rank."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.values = plot_widget(label_room="1e-00", title="singular values")
        self.values.setLogMode(False, True)
        self.values.setLabel("bottom", "index i (rank)")
        self.values.setLabel("left", "σ_i")
        self.values.addLegend(offset=(-5, 5))
        self.energy = plot_widget(label_room="0.00", title="energy kept up to rank r")
        self.energy.setLabel("bottom", "rank r")
        self.energy.setLabel("left", "share of the energy")
        # no legend here: the modes' colours are the singular values' (whose legend names them)
        colours = ((50, 90, 200), (200, 60, 60))
        self.value_curves = [curve(self.values, [], [], pen=pg.mkPen(c, width=2), name=f"mode {i}")
                             for i, c in enumerate(colours)]
        self.energy_curves = [curve(self.energy, [], [], pen=pg.mkPen(c, width=2), name=f"mode {i}")
                              for i, c in enumerate(colours)]
        self.cuts = [pg.InfiniteLine(angle=90, pen=pg.mkPen(c, width=2, style=Qt.DashLine), label="cut",
                                     labelOpts={"position": 0.55 - 0.1 * i, "color": c})
                     for i, c in enumerate(colours)]
        self.even = pg.InfiniteLine(angle=90, pen=pg.mkPen((0, 0, 0), width=1, style=Qt.DotLine),
                                    label="break-even (weights)", labelOpts={"position": 0.3, "color": (0, 0, 0)})
        self.mac_even = pg.InfiniteLine(angle=90, pen=pg.mkPen((120, 0, 120), width=1, style=Qt.DotLine),
                                        label="break-even (MACs)", labelOpts={"position": 0.12, "color": (120, 0, 120)})
        for line in self.cuts:
            self.energy.addItem(line)
        self.energy.addItem(self.even)
        self.energy.addItem(self.mac_even)
        plots = QHBoxLayout()
        plots.addWidget(self.values, 1)
        plots.addWidget(self.energy, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(plots, 1)
        lay.addWidget(caption("dashed: the plan's rank; dotted: up to which rank the factors hold fewer weights "
                              "(black) or need fewer MACs (purple) than the layer"))

    def draw(self, view) -> None:
        modes = list(view.spectra)
        ranks = view.mode_ranks() if view.ranks else [None] * len(modes)
        longest = 1
        for i, (c, e) in enumerate(zip(self.value_curves, self.energy_curves)):
            if i >= len(modes):
                c.setData([], [])
                e.setData([], [])
                self.cuts[i].setVisible(False)
                continue
            s = np.asarray(view.spectra[modes[i]], float)
            longest = max(longest, s.size)
            idx = np.arange(1, s.size + 1)
            ok = s > 0
            c.setData(idx[ok], s[ok])
            c.opts["name"] = modes[i]
            sq = s ** 2
            e.setData(np.concatenate([[0], idx]), np.concatenate([[0], np.cumsum(sq) / max(sq.sum(), 1e-300)]))
            self.cuts[i].setVisible(ranks[i] is not None)
            if ranks[i] is not None:
                self.cuts[i].setValue(ranks[i])
                self.cuts[i].label.setFormat(f"plan: {ranks[i]}")
        _rename_legend(self.values, modes)
        self.even.setValue(view.break_even)
        self.even.label.setFormat(f"weights even: {view.break_even}")
        self.mac_even.setVisible(view.mac_break_even is not None)
        if view.mac_break_even is not None:
            self.mac_even.setValue(view.mac_break_even)
            self.mac_even.label.setFormat(f"MACs even: {view.mac_break_even}")
        for p in (self.values, self.energy):
            p.setXRange(0, longest + 1, padding=0)
        self.values.setYRange(*_decades(np.concatenate([np.asarray(v, float) for v in view.spectra.values()])),
                              padding=0.02)
        self.energy.setYRange(0, 1.02, padding=0)


def _rename_legend(plot, names) -> None:
    """The legend names the modes drawn; with one mode there is nothing to tell apart, and it is hidden."""
    legend = plot.plotItem.legend
    legend.setVisible(len(names) > 1)
    for (_, label), name in zip(legend.items, names):
        label.setText(name)
    for i, (sample, label) in enumerate(legend.items):
        sample.setVisible(i < len(names))
        label.setVisible(i < len(names))

"""The teaching views of the whole model, drawing what :mod:`explorer.engine.teach.model` computed: the
pipeline's waterfall, the model graph coloured by a measure, teacher and student outputs."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from explorer.engine.teach.model import MEASURE_TEXT, MEASURES, PIPELINE, STAGE_TEXT
from explorer.gui.qt_plot import plot_widget
from explorer.units import human_bytes

PALETTE = [(50, 90, 200), (235, 120, 30), (60, 140, 60), (200, 60, 60), (130, 80, 170), (140, 100, 60),
           (220, 110, 180), (110, 110, 110), (180, 180, 40), (40, 180, 190)]
OTHER = (190, 190, 190)
HEADER = (80, 80, 80)
MODEL_COLOURS = [(110, 110, 110), (235, 120, 30), (50, 90, 200), (60, 140, 60)]
MAX_STACKED = 9  # layers stacked by name at most; the rest as one "other layers" block


def _colour_map():
    return pg.ColorMap([0.0, 0.5, 1.0], [(250, 240, 200), (240, 140, 40), (150, 20, 20)])


class PipelinePlot(QWidget):
    """Bars of bytes per stage, stacked by layer, with the ratio to dense above each."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = plot_widget(label_room="888.8", title="bytes after each stage")
        self.plot.setLabel("left", "kilobytes")
        self.plot.addLegend(offset=(-5, 5))
        self.plot.getAxis("bottom").setTicks([[(i, STAGE_TEXT[s]) for i, s in enumerate(PIPELINE)]])
        # items made once and changed in place (a new item per block, label and legend entry at every draw
        # took half of a ResNet-sized draw): the stacked blocks, the file's bar, a label per stage
        self.bars = []
        self.file_bar = pg.BarGraphItem(x=[], height=[], width=0.6, brush=HEADER)
        self.plot.addItem(self.file_bar)
        self.labels = [pg.TextItem("", color=(0, 0, 0), anchor=(0.5, 1.0)) for _ in PIPELINE]
        for t in self.labels:
            self.plot.addItem(t)
        self._legend = None  # the (name, colour) entries the legend lists
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.plot)

    def draw(self, view) -> None:
        stages = [s for s in PIPELINE if view.totals.get(s) is not None]
        xs = [PIPELINE.index(s) for s in stages if s != "file"]
        bottom = np.zeros(len(xs))
        blocks = _blocks(view)
        while len(self.bars) < len(blocks):
            self.bars.append(pg.BarGraphItem(x=[], height=[], width=0.6, pen=pg.mkPen("w")))
            self.plot.addItem(self.bars[-1])
        for bar, (_, bits, colour) in zip(self.bars, blocks):
            h = np.array([bits[s] / 8 / 1000 for s in stages if s != "file"])
            bar.setOpts(x=xs, height=h, y0=bottom, brush=colour)
            bottom = bottom + h
        for bar in self.bars[len(blocks):]:
            bar.setOpts(x=[], height=[], y0=[])
        entries = [(bar, name, colour) for bar, (name, _, colour) in zip(self.bars, blocks)]
        if "file" in stages:
            coded_kb, file_kb = view.totals["coded"] / 1000, view.totals["file"] / 1000
            self.file_bar.setOpts(x=[PIPELINE.index("file")], height=[file_kb])
            bottom = np.append(bottom, max(file_kb, coded_kb))
            xs = xs + [PIPELINE.index("file")]
            entries.append((self.file_bar, "the file (headers included)", HEADER))
        else:
            self.file_bar.setOpts(x=[], height=[])
        self._set_legend(entries)
        top = float(bottom.max(initial=1.0))
        for i, t in enumerate(self.labels):
            if i < len(xs):
                s = stages[i]
                t.setText(human_bytes(view.totals[s]) + ("" if s == "dense" else f"\n{view.ratio(s):.1f}×"))
                t.setPos(xs[i], view.totals[s] / 1000 + 0.02 * top)
            t.setVisible(i < len(xs))
        self.plot.setXRange(-0.6, len(PIPELINE) - 0.4, padding=0)
        self.plot.setYRange(0, top * 1.18, padding=0)

    def _set_legend(self, entries: list) -> None:
        """The legend lists ``entries`` (item, name, colour), rebuilt only when the names or colours change."""
        key = [(name, colour) for _, name, colour in entries]
        if key == self._legend:
            return
        self._legend = key
        legend = self.plot.plotItem.legend
        legend.clear()
        for item, name, _ in entries:
            legend.addItem(item, name)


def _blocks(view) -> list:
    """(name, bits per stage, colour) of each stacked block: the largest layers by name, the rest together,
    then what stays float."""
    layers = sorted(view.layers, key=lambda t: -t[1]["dense"])
    named, rest = layers[:MAX_STACKED], layers[MAX_STACKED:]
    blocks = [(n, b, PALETTE[i % len(PALETTE)]) for i, (n, b) in enumerate(named)]
    if rest:
        blocks.append(("other layers", {s: sum(b[s] for _, b in rest) for s in PIPELINE[:-1]}, (160, 160, 200)))
    blocks.append(("biases, norms", view.other, OTHER))
    return blocks


class GraphPlot(QWidget):
    """The model's graph, compressible layers coloured by a measure; a click selects the layer."""
    layer_clicked = Signal(str)
    measure_chosen = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.graph = None
        self.measure = QComboBox()
        for m in MEASURES:
            self.measure.addItem(MEASURE_TEXT[m], m)
        self.measure.activated.connect(lambda i: self.measure_chosen.emit(self.measure.itemData(i)))
        self.plot = plot_widget(title="")
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.invertY(True)
        self.edges = pg.PlotDataItem([], [], pen=pg.mkPen((150, 150, 150), width=1), connect="pairs")
        self.plot.addItem(self.edges)
        self.others = pg.ScatterPlotItem(size=8, brush=(210, 210, 210), pen=pg.mkPen((150, 150, 150)))
        self.layers = pg.ScatterPlotItem(size=18, hoverable=True)
        self.layers.sigClicked.connect(self._clicked)
        self.plot.addItem(self.others)
        self.plot.addItem(self.layers)
        self.texts = []  # (TextItem, (label, colour, position)) per node label, reused from draw to draw
        self._used = 0
        self.scale = QLabel("")
        row = QHBoxLayout()
        row.addWidget(QLabel("colour by:"))
        row.addWidget(self.measure)
        row.addWidget(self.scale, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.plot, 1)

    def current_measure(self) -> str:
        return self.measure.currentData()

    def draw(self, graph, values: dict, selected=None) -> None:
        self.graph = graph
        pos = {n.id: (n.lane * 3.0, float(n.depth)) for n in graph.nodes}
        segs = []
        for a, b in graph.edges:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            if y1 - y0 > 1.5 and x0 == x1:  # a skip connection along the lane: bowed out to the right
                segs += [(x0, y0), (x0 + 1.2, y0 + 0.5), (x0 + 1.2, y0 + 0.5), (x1 + 1.2, y1 - 0.5),
                         (x1 + 1.2, y1 - 0.5), (x1, y1)]
            else:
                segs += [(x0, y0), (x1, y1)]
        arr = np.array(segs, float) if segs else np.zeros((0, 2))
        self.edges.setData(arr[:, 0], arr[:, 1])
        self._used = 0
        others = [n for n in graph.nodes if n.kind != "layer"]
        self.others.setData([{"pos": pos[n.id], "symbol": "s" if n.kind == "merge" else "o",
                              "brush": (255, 220, 120) if n.kind == "merge" else (210, 210, 210)} for n in others])
        shown = [v for v in values.values() if v is not None]
        lo, hi = (min(shown), max(shown)) if shown else (0.0, 1.0)
        cmap = _colour_map()
        spots = []
        for n in graph.nodes:
            if n.kind != "layer":
                if n.kind in ("merge", "input", "output"):
                    self._text(n.label, pos[n.id], (120, 90, 0) if n.kind == "merge" else (90, 90, 90))
                continue
            v = values.get(n.layer)
            colour = (230, 230, 230) if v is None else cmap.map((v - lo) / (hi - lo) if hi > lo else 0.5, "qcolor")
            pen = pg.mkPen((200, 0, 0), width=3) if n.fixed else pg.mkPen((40, 40, 40), width=1)
            spots.append({"pos": pos[n.id], "brush": colour, "pen": pen, "data": n.layer,
                          "size": 24 if n.layer == selected else 18})
            self._text(f"{n.label}  {'' if v is None else _fmt(self.current_measure(), v)}", pos[n.id], (0, 0, 0))
        self.layers.setData(spots)
        for t, _ in self.texts[self._used:]:  # labels of a larger graph drawn before
            self.plot.removeItem(t)
        del self.texts[self._used:]
        self.scale.setText(f"pale {_fmt(self.current_measure(), lo)} → dark {_fmt(self.current_measure(), hi)}"
                           if shown else "no values measured yet")
        depth = max((n.depth for n in graph.nodes), default=1)
        lanes = [n.lane * 3.0 for n in graph.nodes] or [0.0]
        self.plot.setXRange(min(lanes) - 2, max(lanes) + 9, padding=0)
        self.plot.setYRange(-0.8, min(depth, 24) + 0.8, padding=0)

    def _text(self, label: str, at, colour) -> None:
        """The next node label: the item drawn there before is kept and changed only where it differs (a new
        TextItem per node and draw costs more than the rest of the draw on a ResNet-sized graph)."""
        want = (label, colour, at)
        if self._used < len(self.texts):
            t, had = self.texts[self._used]
            if had != want:
                t.setText(label, color=colour)
                t.setPos(at[0] + 0.45, at[1])
                self.texts[self._used] = (t, want)
        else:
            t = pg.TextItem(label, color=colour, anchor=(0, 0.5))
            t.setPos(at[0] + 0.45, at[1])
            self.plot.addItem(t)
            self.texts.append((t, want))
        self._used += 1

    def _clicked(self, item, points, ev=None) -> None:
        if len(points):
            self.layer_clicked.emit(points[0].data())


def _fmt(measure: str, v: float) -> str:
    return f"{v:.1f}×" if measure == "ratio" else f"{v:.2f} b" if measure == "bits" else f"{v:.0%}"


class OutputsPlot(QWidget):
    """Per sample input: the teacher's top classes, and each model's probability for them."""

    def __init__(self, parent=None, samples: int = 4):
        super().__init__(parent)
        self.plots = []
        grid = QGridLayout()
        for i in range(samples):
            p = plot_widget(label_room="0.00", title=f"input {i}")
            p.setLabel("left", "probability")
            p.setLabel("bottom", "class (the teacher's top 5)")
            grid.addWidget(p, i // 2, i % 2)
            self.plots.append(p)
        self.key = QLabel()  # the models' colours: a legend inside a plot would cover its bars
        self.key.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.key)
        lay.addLayout(grid, 1)

    def draw(self, view) -> None:
        width = 0.8 / max(len(view.models), 1)
        self.key.setText("&nbsp;&nbsp;&nbsp;".join(
            f"<span style='color: rgb{MODEL_COLOURS[j % len(MODEL_COLOURS)]}'>■</span> {m}"
            for j, m in enumerate(view.models)))
        for i, p in enumerate(self.plots):
            p.clear()
            if i >= len(view.samples):
                p.setTitle("")
                continue
            s = view.samples[i]
            if not view.classifier:
                self._values(p, view, s, width)
                continue
            classes = [c for c, _ in s["outputs"][view.models[0]]]
            for j, m in enumerate(view.models):
                probs = dict(s["outputs"][m])
                xs = np.arange(len(classes)) + (j - (len(view.models) - 1) / 2) * width
                p.addItem(pg.BarGraphItem(x=xs, height=[probs.get(c, 0.0) for c in classes], width=width,
                                          brush=MODEL_COLOURS[j % len(MODEL_COLOURS)], name=m))
            p.getAxis("bottom").setTicks([[(k, str(c)) for k, c in enumerate(classes)]])
            p.setTitle(f"input {s['index']}" + (f" (label {s['label']})" if s["label"] is not None else ""))
            p.setXRange(-0.6, len(classes) - 0.4, padding=0)
            p.setYRange(0, 1.05, padding=0)

    def _values(self, p, view, s, width) -> None:
        p.setLabel("bottom", "output index")
        p.setLabel("left", "value")
        for j, m in enumerate(view.models):
            vals = s["outputs"][m]
            xs = np.arange(len(vals)) + (j - (len(view.models) - 1) / 2) * width
            p.addItem(pg.BarGraphItem(x=xs, height=vals, width=width, brush=MODEL_COLOURS[j % len(MODEL_COLOURS)],
                                      name=m))
        p.setTitle(f"input {s['index']}: the first outputs")


__all__ = ["PipelinePlot", "GraphPlot", "OutputsPlot"]

"""The Sensitivity tab (issue 15): for the kind chosen (sparsity, bits or parameters kept), the accuracy
(agreement with the original model, for data without labels) of each layer alone against its setting, one
curve per layer, with the whole file's bytes at each point below it. The selected layer's curve is drawn in
colour, thick and in front, the others in grey, each labelled at its most compressed end and every point
named by its tooltip; each layer's current setting is marked on its curve (the selected one's also by a
dashed line). Clicking a point sets that layer's setting for that kind through the session: one undo step,
like every edit, and the layer becomes the selected one.

The scan is :func:`explorer.engine.sensitivity.scan.sensitivity`, run on the workers' ``sensitivity``
channel (a thread of its own) one (layer, kind) piece at a time, the kind shown and the selected layer
first: each piece's points are drawn as they arrive (redrawn at most every :data:`REDRAW_MS`), a newer scan
supersedes the old one's pieces (whatever they still return is dropped: see
:class:`~explorer.gui.workers.Workers`), and the engine's cache of points makes a scan measured before
instant. It starts when the tab is shown (or by Compute) and again, while it is shown, after a new model,
new eval data or a changed plan.

The base plan of the scan is the **current plan**: each curve says what changing that one layer would do to
the model as the plan has it now, the other layers compressed as they are, and its bytes are those of the
file this plan would write. That is the question of a user tuning a plan layer by layer (which layer can
give more, given the rest); against an uncompressed base a curve hides how the layers' errors add up, and
its bytes belong to a file nobody writes. The price is a new scan after each edit, started once the plan
has stood for :data:`PLAN_SETTLE` and only while the tab is shown; Undo returns to a plan whose points are
cached. A point changes only its kind's section of the layer (a sparsity point of a quantized layer is
quantized as the plan has it), so the point at the plan's own setting is the plan, and a click does what
the point measured.
"""

from __future__ import annotations

import glob
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QSpinBox,
                               QVBoxLayout, QWidget)

from explorer.engine.errors import ExplorerError
from explorer.engine.plan import LayerSettings, validate_settings
from explorer.engine.sensitivity.scan import DEFAULT_LIMIT, KINDS, Point, sensitivity
from explorer.gui.qt_plot import curve, plot_widget
from explorer.units import human_bytes

CHANNEL = "sensitivity"
PLAN_SETTLE = 0.3  # seconds a changed plan stands before its scan starts (a run of edits starts one)
REDRAW_MS = 100  # the curves are redrawn at most this often while points arrive
ACCENT, GREY, LIGHT = (40, 100, 190), (140, 140, 140), (180, 180, 180)
# x label, scale, range (room beyond the most compressed end for the curves' names), names' offset from it
AXES = {"sparsity": ("sparsity (%)", 100.0, (-2.0, 109.0), 1.5), "bits": ("bits", 1.0, (0.0, 8.3), -0.12),
        "rank": ("parameters kept (%)", 100.0, (-8.0, 102.0), -1.5)}
TICKS = {"sparsity": [(v, f"{v}") for v in range(0, 100, 10)], "bits": [(v, f"{v}") for v in range(1, 9)],
         "rank": [(v, f"{v}") for v in (100, 75, 50, 25, 10)]}  # none beyond the axis' end (the names' room)
LABEL_GAP = 4.5  # accuracy points between two curve labels at least (they are pushed apart)


def setting_of(kind: str, settings: LayerSettings) -> Optional[float]:
    """A layer's current setting on ``kind``'s axis (a fraction, or bits), or None where it has none there
    (not quantized, binary or ternary, a count of channels, a Tucker-2 pair of ranks)."""
    if kind == "sparsity":
        p = settings.prune
        amount = 0.0 if p is None else p.amount
        return float(amount) if isinstance(amount, float) or amount == 0 else None
    if kind == "bits":
        q = settings.quantize
        return None if q is None or q.method in ("binary", "ternary") else float(q.bits)
    r = settings.lowrank
    return 1.0 if r is None else float(r.rank) if isinstance(r.rank, float) else None


def patch_for(kind: str, value: float) -> dict:
    """The edit a click on a point of ``kind`` at ``value`` makes: that section only, the layer's other
    settings (its granularity, its quantization method, ...) left as they are."""
    if kind == "sparsity":
        return {"prune": {"amount": float(value)} if value else None}
    if kind == "bits":
        return {"quantize": {"bits": int(value)}}
    return {"lowrank": None if value >= 1.0 else {"rank": float(value)}}


def _tip(x, y, data) -> str:
    p = data
    if p is None:
        return ""
    scale = AXES[p.kind][1]
    where = f"{p.value * scale:g}{'' if p.kind == 'bits' else '%'} {AXES[p.kind][0].split(' (')[0]}"
    try:
        measured = validate_settings(p.layer, p.settings).describe() or "uncompressed"
    except ExplorerError:
        measured = str(p.settings)
    return (f"{p.layer} at {where}: {100 * p.metric:.1f}%\n"
            f"layer {human_bytes(p.layer_bytes)}, file {human_bytes(p.file_bytes)}\n"
            f"measured as: {measured}\nclick to set it")


def _spread(labels: list) -> list:
    """(y, text) pairs pushed apart downwards so that no two are closer than :data:`LABEL_GAP`."""
    out, last = [], None
    for y, text in sorted(labels, reverse=True):
        y = y if last is None else min(y, last - LABEL_GAP)
        out.append((y, text))
        last = y
    return out


class SensitivityView(QWidget):
    """The tab's widgets and plots. Emits ``compute_requested``, ``cancel_requested`` and ``point_clicked``
    (a :class:`~explorer.engine.sensitivity.scan.Point`); draws what it is given."""

    compute_requested = Signal()
    cancel_requested = Signal()
    point_clicked = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.kind = QComboBox()
        self.kind.addItems(list(KINDS))
        self.kind.setToolTip("the setting the curves are drawn against")
        self.limit = QSpinBox()
        self.limit.setRange(10, 1_000_000)
        self.limit.setSingleStep(100)
        self.limit.setValue(DEFAULT_LIMIT)
        self.limit.setMaximumWidth(90)
        self.limit.setToolTip("the scan measures the first this many samples of the eval data")
        self.compute = QPushButton("Compute")
        self.cancel = QPushButton("Cancel")
        self.bar = QProgressBar()
        # a QProgressBar repaints at once (not at the next paint) when its value moves a visible step, and
        # that repaint paints whatever else of the window is due: steps of 1% (not 0.1%), and room kept
        # while hidden (showing it moved the row's widgets, and repainted them all)
        self.bar.setRange(0, 100)
        self.bar.setTextVisible(False)
        self.bar.setMaximumWidth(90)
        policy = self.bar.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.bar.setSizePolicy(policy)
        self.title = QLabel("Sensitivity: open a model")
        self.title.setWordWrap(True)
        self.title.setMinimumHeight(2 * self.title.fontMetrics().lineSpacing() + 4)
        self.status = QLabel("")
        self.status.setStyleSheet("color: #555")
        # its text changes with every piece of a scan: were its width its text's, each change would lay the
        # window out again (the splitter's panes resized, the preview's plot repainted each time)
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.acc_plot = plot_widget(label_room="100")
        self.file_plot = plot_widget(label_room="888.8")
        self.file_plot.setXLink(self.acc_plot)
        for p in (self.acc_plot, self.file_plot):
            p.disableAutoRange()  # the ranges are set on each draw (see qt_centroids)
            p.setMenuEnabled(False)
        self.file_plot.setLabel("left", "file (KB)")
        self._lay_out()
        self.items = {p: self._make_items(p) for p in (self.acc_plot, self.file_plot)}
        self.labels: dict = {}  # layer -> (its name's label on the accuracy plot, the label's html)
        self._shown_kind = None  # the kind the axes are set up for
        self.points: dict = {}  # (layer, kind, value) -> Point
        self.layers: list = []
        self.selected: Optional[str] = None
        self.marks: dict = {}  # layer -> {kind: its current setting or None}
        self.metric_name = "accuracy"
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(REDRAW_MS)
        self._redraw.timeout.connect(self.redraw)
        self.kind.currentTextChanged.connect(lambda *_: self.redraw())
        self.compute.clicked.connect(self.compute_requested)
        self.cancel.clicked.connect(self.cancel_requested)
        self.set_running(False)

    def _lay_out(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        layout.addLayout(row)  # first, so the widgets added to it are the view's children at once
        for w in (QLabel("against"), self.kind, QLabel("on the first"), self.limit, QLabel("samples"), self.compute,
                  self.cancel):
            row.addWidget(w)
        row.addStretch(1)
        below = QHBoxLayout()
        layout.addLayout(below)
        below.addWidget(self.bar)
        below.addWidget(self.status, 1)
        layout.addWidget(self.title)
        layout.addWidget(self.acc_plot, 3)
        layout.addWidget(self.file_plot, 2)

    def _make_items(self, plot) -> dict:
        """The items of one plot, made once and updated: the other layers' curves (one item, broken between
        layers) and the selected one's, their points (clickable, with a tooltip) and current settings (★),
        each group one item of one brush (a brush per spot made a redraw several times slower)."""
        items = {"others": curve(plot, [], [], pen=pg.mkPen(LIGHT, width=1.5), connect="finite"),
                 "chosen": curve(plot, [], [], pen=pg.mkPen(ACCENT, width=3))}
        for key, colour, size in (("other_dots", GREY, 6), ("chosen_dots", ACCENT, 8)):
            dots = pg.ScatterPlotItem(size=size, pen=None, brush=pg.mkBrush(colour), hoverable=True, tip=_tip,
                                      hoverSize=size + 4, hoverBrush=pg.mkBrush(ACCENT))
            dots.sigClicked.connect(self._clicked)
            plot.addItem(dots)
            items[key] = dots
        for key, brush, pen, size in (("other_marks", (255, 255, 255), pg.mkPen(GREY, width=1.2), 11),
                                      ("chosen_mark", ACCENT, pg.mkPen((255, 255, 255), width=1.2), 18)):
            marks = pg.ScatterPlotItem(symbol="star", size=size, brush=pg.mkBrush(brush), pen=pen)
            plot.addItem(marks)
            items[key] = marks
        line = pg.InfiniteLine(angle=90, pen=pg.mkPen(ACCENT, width=1.5, style=Qt.DashLine),
                               label="", labelOpts={"position": 0.05, "color": ACCENT, "fill": (255, 255, 255, 200)})
        line.setVisible(False)
        plot.addItem(line)
        items["line"] = line
        return items

    # ------------------------------------------------------------------------------------- state
    def set_layers(self, layers: list, metric: str = "accuracy") -> None:
        """A new model (or new data): its layers, no points yet."""
        self.layers, self.metric_name, self.points = list(layers), metric, {}
        self.acc_plot.setLabel("left", f"{metric} (%)")
        for item, _ in self.labels.values():
            self.acc_plot.removeItem(item)
        self.labels = {name: (pg.TextItem(), None) for name in self.layers}  # name -> (item, its html)
        for item, _ in self.labels.values():
            item.setVisible(False)
            self.acc_plot.addItem(item)
        self._shown_kind = None
        self.redraw()

    def set_selected(self, name: Optional[str]) -> None:
        if name != self.selected:
            self.selected = name
            self.redraw()

    def set_marks(self, marks: dict) -> None:
        if marks != self.marks:
            self.marks = marks
            self.redraw()

    def add_points(self, points: list) -> None:
        """Points measured (replacing those of the same layer, kind and value); drawn within REDRAW_MS."""
        for p in points:
            self.points[(p.layer, p.kind, p.value)] = p
        shown = self.kind.currentText()
        if any(p.kind == shown for p in points) and not self._redraw.isActive():
            self._redraw.start()  # points of another kind are drawn when it is chosen

    def set_running(self, running: bool) -> None:
        self.cancel.setEnabled(running)
        self.bar.setVisible(running)
        if running:
            self.bar.setValue(0)

    def set_progress(self, fraction: float) -> None:
        """The scan's progress (the status line says which piece: see :meth:`say`, once a piece)."""
        self.bar.setValue(int(100 * min(max(fraction, 0.0), 1.0)))

    def say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        style = "color: #a00" if error else "color: #555"
        if style != self.status.styleSheet():  # a new style sheet polishes the label again: only on a change
            self.status.setStyleSheet(style)

    def curve_of(self, layer: str, kind: Optional[str] = None) -> list:
        """The measured points of ``layer`` on ``kind`` (default: the one shown), in the order of the axis."""
        kind = kind or self.kind.currentText()
        pts = [p for (name, k, _), p in self.points.items() if name == layer and k == kind and p.metric is not None]
        return sorted(pts, key=lambda p: p.value)

    # ------------------------------------------------------------------------------------- drawing
    def redraw(self) -> None:
        self._redraw.stop()
        kind = self.kind.currentText()
        label, scale, x_range, _ = AXES[kind]
        curves = {name: self.curve_of(name, kind) for name in self.layers}
        for plot, value_of, y_range in ((self.acc_plot, lambda p: 100 * p.metric, (0.0, 102.0)),
                                        (self.file_plot, lambda p: p.file_bytes / 1000, None)):
            xy = {n: (np.array([p.value * scale for p in c]), np.array([value_of(p) for p in c], dtype=float))
                  for n, c in curves.items()}
            self._draw_plot(plot, kind, curves, xy, scale, y_range)
            if kind != self._shown_kind:  # the axes: only when the kind changes
                plot.invertX(kind == "rank")  # from everything kept to little kept: more compression right
                plot.setRange(xRange=x_range, padding=0)
                plot.getAxis("bottom").setTicks([TICKS[kind]])
        if kind != self._shown_kind:
            self.file_plot.setLabel("bottom", label)
            self._shown_kind = kind
        self._draw_labels(kind, curves, scale)
        self._say_title(kind)

    def _draw_plot(self, plot, kind: str, curves: dict, xy: dict, scale: float, y_range) -> None:
        items = self.items[plot]
        empty = (np.zeros(0), np.zeros(0))
        others = [n for n in self.layers if n != self.selected and len(xy[n][0])]
        gx = np.concatenate([np.append(xy[n][0], np.nan) for n in others] + [np.zeros(0)])
        gy = np.concatenate([np.append(xy[n][1], np.nan) for n in others] + [np.zeros(0)])
        items["others"].setData(gx, gy)
        items["chosen"].setData(*xy.get(self.selected, empty))
        ok = np.isfinite(gx)
        items["other_dots"].setData(gx[ok], gy[ok], data=[p for n in others for p in curves[n]])
        x, y = xy.get(self.selected, empty)
        items["chosen_dots"].setData(x, y, data=curves.get(self.selected, []))
        marks = {n: self.marks.get(n, {}).get(kind) for n in self.layers if len(xy[n][0])}
        at = {n: (v * scale, float(np.interp(v * scale, *xy[n]))) for n, v in marks.items() if v is not None}
        items["other_marks"].setData([at[n][0] for n in others if n in at], [at[n][1] for n in others if n in at])
        mine = [at[self.selected]] if self.selected in at else []
        items["chosen_mark"].setData([m[0] for m in mine], [m[1] for m in mine])
        value = self.marks.get(self.selected, {}).get(kind)
        items["line"].setVisible(value is not None)
        if value is not None:
            items["line"].setValue(value * scale)
            if plot is self.acc_plot:
                shown = f"{int(value)} bits" if kind == "bits" else f"{value:.0%}"
                items["line"].label.setFormat(f"{self.selected}: {shown} in the plan")
        if y_range is None:  # the file's bytes: from the smallest to the largest measured
            lo, hi = (float(np.nanmin(gy)), float(np.nanmax(gy))) if ok.any() else (np.inf, -np.inf)
            if len(y):
                lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
            lo, hi = (lo, hi) if hi >= lo else (0.0, 1.0)
            pad = max(0.06 * (hi - lo), 0.5)
            y_range = (max(0.0, lo - pad), hi + pad)
        plot.setRange(yRange=y_range, padding=0)

    def _draw_labels(self, kind: str, curves: dict, scale: float) -> None:
        """Each curve's layer name at its most compressed end (where the curves part); the labels are made
        once per model and moved (making and adding one costs a millisecond)."""
        ends = {}
        for name, pts in curves.items():
            if pts:
                end = pts[0] if kind in ("bits", "rank") else pts[-1]
                ends[name] = (100 * end.metric, end.value * scale)
        placed = dict((name, y) for y, name in _spread([(y, name) for name, (y, _) in ends.items()]))
        for name, (item, html) in self.labels.items():
            item.setVisible(name in ends)
            if name not in ends:
                continue
            on = name == self.selected
            colour = ACCENT if on else (110, 110, 110)
            text = f"<span style='color: rgb{colour}'>{f'<b>{name}</b>' if on else name}</span>"
            if text != html:
                item.setHtml(text)
                self.labels[name] = (item, text)
            item.setAnchor((1, 0.5) if kind == "bits" else (0, 0.5))  # beyond the end, outwards
            item.setPos(ends[name][1] + AXES[kind][3], placed[name])

    def _say_title(self, kind: str) -> None:
        """The title says what is drawn; set only when that changes (a wrapped label that is given text is laid
        out again, and with it the plots below)."""
        name = self.selected or "–"
        value = self.marks.get(self.selected, {}).get(kind)
        now = "not set on this axis" if value is None else (f"{int(value)} bits" if kind == "bits" else f"{value:.0%}")
        text = (f"<b>{name}</b> (in colour; {now} in the plan, ★) — {self.metric_name} of each layer alone "
                f"against its {AXES[kind][0].split(' (')[0]}, the others as the plan has them. Click a point to "
                "set that layer to it.")
        if text != self.title.text():
            self.title.setText(text)

    def warm_up(self) -> None:
        """Draw and paint a few points once, then clear (the first paint of a plot costs ~100 ms)."""
        self.set_layers(["a", "b"])
        self.add_points([Point(n, "sparsity", v, {}, 0.9 - v / 2, 1000, 2000 + 1000 * v, "")
                         for n in ("a", "b") for v in (0.0, 0.5)])
        self.set_selected("a")
        self.redraw()
        self.grab()
        self.selected = None
        self.set_layers([])
        self.title.setText("Sensitivity: open a model")

    def _clicked(self, item, spots, ev=None) -> None:
        if len(spots) and spots[0].data() is not None:
            self.point_clicked.emit(spots[0].data())


class Sensitivity:
    """The tab's scans: started on the workers' :data:`CHANNEL` when the tab is shown (or by Compute) and
    whenever what the curves were measured for changes while it is shown; clicks become plan edits."""

    def __init__(self, window):
        self.window = window
        self.view = SensitivityView()
        self.serial = 0  # bumped by a new model or new eval data: part of what a scan is measured for
        self.measured_for = None  # what the scan whose points are shown was started for (done or under way)
        self.stopped_for = None  # a scan the user cancelled: not restarted until something changes
        self.pending: list = []  # the (layer, kind) pieces of the current scan not measured yet
        self.kinds = KINDS  # what a scan measures (the kind shown first)
        self.total = 0
        session = window.session
        session.on("model", self._on_model)
        session.on("data", self._on_model)
        session.on("plan", self._on_plan)
        session.on("selection", lambda: self.view.set_selected(session.current))
        window.workers.progress.connect(self._on_progress)
        self.view.compute_requested.connect(self.compute)
        self.view.cancel_requested.connect(self.cancel)
        self.view.point_clicked.connect(self.apply_point)

    def visible(self) -> bool:
        return self.window.tabs.currentWidget() is self.view

    def wanted(self) -> Optional[tuple]:
        """What the curves must be measured for now: the model and data, the base plan, the limit."""
        s = self.window.session
        return None if s.loaded is None else (self.serial, s.plan.to_json(), self.view.limit.value())

    def running(self) -> bool:
        return self.window.workers.busy(CHANNEL)

    def shown(self) -> None:
        """The tab was shown (or another tab): scan if the curves are not those of the model and plan now."""
        if self.visible():
            self._refresh()

    def _refresh(self, delay: float = 0.0) -> None:
        want = self.wanted()
        if want is not None and want not in (self.measured_for, self.stopped_for):
            self.start(delay)

    def compute(self) -> None:
        """Compute: scan now (what is cached is found at once)."""
        self.start()

    def start(self, delay: float = 0.0) -> None:
        s = self.window.session
        if s.loaded is None:
            return
        data = s.loaded.eval_data
        if data is None or not len(data):
            self.view.say("a sensitivity scan needs eval data: File → Open eval data", error=True)
            return
        self.measured_for, self.stopped_for = self.wanted(), None
        shown = self.view.kind.currentText()
        kinds = [k for k in self.kinds if k == shown] + [k for k in self.kinds if k != shown]
        names = sorted(s.layer_names, key=lambda n: n != s.current)  # the selected layer first
        self.pending = [(name, kind) for kind in kinds for name in names]
        self.total = len(self.pending)
        self.view.set_running(True)
        self._next(delay)

    def _next(self, delay: float = 0.0) -> None:
        if not self.pending:
            self.view.set_running(False)
            self.view.say(f"{len(self.view.points)} points")
            return
        layer, kind = self.pending[0]
        self.view.say(f"measuring {layer} against {kind} ({self.total - len(self.pending) + 1} of {self.total})")
        s = self.window.session
        loaded, previewer, base, limit = s.loaded, s.previewer, s.plan, self.view.limit.value()

        def job(progress):
            return sensitivity(loaded, base, layers=glob.escape(layer), kinds=(kind,), limit=limit,
                               progress=progress, previewer=previewer)

        self.window.workers.submit(CHANNEL, job, self._piece_done, self._failed, delay=delay)

    def _piece_done(self, points: list) -> None:
        self.pending.pop(0)
        self.view.add_points(points)
        self._next()

    def _failed(self, message: str) -> None:
        self.pending, self.measured_for = [], None
        self.view.set_running(False)
        self.view.say(f"the scan failed: {message}", error=True)

    def cancel(self) -> None:
        """Cancel: the running piece stops at its next step and is dropped; what was measured stays shown
        (and cached), and Compute goes on from there."""
        self.window.workers.cancel(CHANNEL)
        done = self.total - len(self.pending)
        self.stopped_for, self.measured_for, self.pending = self.measured_for, None, []
        self.view.set_running(False)
        self.view.say(f"cancelled after {done} of {self.total} curves; Compute goes on")

    def _on_progress(self, channel: str, fraction: float, message: str) -> None:
        if channel == CHANNEL and self.total:
            self.view.set_progress((self.total - len(self.pending) + fraction) / self.total)

    def _on_model(self) -> None:
        """A new model or new eval data: the old curves go (a piece still running is dropped)."""
        self.window.workers.cancel(CHANNEL)
        self.serial += 1
        self.pending, self.measured_for, self.stopped_for = [], None, None
        s = self.window.session
        data = s.loaded.eval_data if s.loaded is not None else None
        labelled = data is None or data.labels is not None
        self.view.set_running(False)
        self.view.say("")
        self.view.set_layers(s.layer_names, "accuracy" if labelled else "agreement")
        self.view.set_selected(s.current)
        self._on_plan()

    def _on_plan(self) -> None:
        s = self.window.session
        self.view.set_marks({n: {k: setting_of(k, s.settings(n)) for k in KINDS} for n in s.layer_names})
        if self.visible():
            self._refresh(PLAN_SETTLE)

    def apply_point(self, point: Point) -> None:
        """A click on ``point``: its layer becomes the selected one and gets the point's setting for its kind
        (one undo step)."""
        s = self.window.session
        s.select([point.layer])
        try:
            s.update_layers([point.layer], patch_for(point.kind, point.value))
            self.window.clear_error()
        except ExplorerError as exc:
            self.window.show_error(str(exc))

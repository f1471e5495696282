"""The Compare tab: every plan measured in this session — by hand, by Plan → Auto…, fine-tuned (the session's
:class:`~explorer.session.MeasuredPlans`) — as a point of accuracy against file bytes (log scale; the symbol
says where it came from), the Pareto front as a step line, the current plan ringed, and two of them, A and B,
side by side layer by layer. Clicking a point makes its plan current again (one undo step); a fine-tuned
point brings its trained model back while the session holds it, else its plan only, and the status bar says
so. Every number is one the window measured; the front is :func:`~explorer.engine.measure.compare.pareto_front`.
"""

from __future__ import annotations

import math
from typing import Callable

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QHeaderView, QLabel, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from explorer.engine.measure.compare import NONE, pareto_front, settings_cells, staircase
from explorer.gui.qt_plot import curve, data_item, plot_widget
from explorer.session import FINETUNED_KEPT, ORIGINS
from explorer.units import human_bytes

#: origin -> (symbol, colour, what the legend says)
STYLE = {"hand": ("o", (40, 100, 190), "by hand"), "auto": ("t", (230, 130, 20), "Plan → Auto…"),
         "fine-tuned": ("star", (30, 150, 60), "fine-tuned")}
RED, GREY = (210, 40, 40), (90, 90, 90)
SIDES = ("A", "B")
CELLS = ("pruned", "quantized", "low rank", "bytes")


LABELLED = (1, 2, 5)  # of each decade's ticks, these are labelled (the others crowd the axis)
LEAST_DECADES = 1.0  # the narrowest bytes axis (log10): one plan, or plans of one size, are not a pinpoint
LEAST_QUALITY = {"accuracy": 2.0, "fidelity": 0.02}  # the narrowest quality axis (percentage points, cosine)
PAD = 0.15  # of each axis's span, beyond the outermost points (room for a point's symbol and its A/B mark)
EMPTY_RANGE = ((3.0, 6.0), (0.0, 100.0))  # no plan measured yet: 1 KB..1 MB, 0..100%


def fit_span(values, least: float) -> tuple:
    """The axis range that shows ``values``: their extent padded by :data:`PAD`, widened about its middle to
    at least ``least`` (pyqtgraph's own range of equal values is a sliver, labelled 98.0555555555556)."""
    lo, hi = min(values), max(values)
    middle, half = (lo + hi) / 2, max(hi - lo, least) / 2
    return middle - half * (1 + PAD), middle + half * (1 + PAD)


class BytesAxis(pg.AxisItem):
    """A log-scale axis of bytes, its ticks said as sizes (``20.0 KB``) rather than powers of ten, at 1, 2
    and 5 of each decade."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph's name)
        if not self.logMode:
            return super().tickStrings(values, scale, spacing)
        out = []
        for v in values:
            lead = 10 ** (v - math.floor(v + 1e-9))
            out.append(human_bytes(10 ** v) if any(abs(lead - m) < 1e-6 * m for m in LABELLED) else "")
        return out


def _percent(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _quality(point) -> str:
    return f"{100 * point.quality:.2f}%" if point.metric == "accuracy" else f"cosine {point.quality:.4f}"


class CompareView(QWidget):
    """The plot of measured plans and the A/B table. ``say(text)`` shows a line in the status bar."""

    def __init__(self, session, say: Callable[[str], None], parent=None):
        super().__init__(parent)
        self.session, self.say = session, say
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #444")
        self.plot = plot_widget(label_room="100.0", axisItems={"bottom": BytesAxis("bottom")})
        self.plot.setLogMode(x=True, y=False)
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        self.plot.setLabel("bottom", "file size (log scale)")
        self.legend = self.plot.addLegend(offset=(-10, -10), labelTextColor="k", brush=pg.mkBrush(255, 255, 255, 220))
        self.front = curve(self.plot, [], [], pen=pg.mkPen(GREY, width=1.5, style=Qt.DashLine),
                           name="Pareto front")
        self.scatter = {}
        for origin in ORIGINS:
            symbol, colour, said = STYLE[origin]
            item = curve(self.plot, [], [], pen=None, symbol=symbol, symbolSize=13 if symbol == "star" else 10,
                         symbolBrush=colour, symbolPen=pg.mkPen("w", width=1), name=said)
            item.sigPointsClicked.connect(self._clicked)
            self.scatter[origin] = item
        self.ring = data_item([], [], pen=None, symbol="o", symbolSize=22, symbolBrush=None,
                              symbolPen=pg.mkPen(RED, width=2), name="current plan")
        self.plot.addItem(self.ring)
        self.marks = {side: pg.TextItem(side, color=(0, 0, 0), anchor=(-0.6, 0.5)) for side in SIDES}
        for mark in self.marks.values():
            mark.setFont(QFont(mark.textItem.font().family(), 11, QFont.Bold))
            self.plot.addItem(mark)
        self.combos = {side: QComboBox() for side in SIDES}
        self._chosen = {side: None for side in SIDES}  # the key the user picked, if any
        picks = QHBoxLayout()
        for side, combo in self.combos.items():
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(24)
            combo.activated.connect(lambda _i, s=side: self._pick(s))
            picks.addWidget(QLabel(f"<b>{side}</b>"))
            picks.addWidget(combo, 1)
        self.table = QTableWidget(0, 1 + len(SIDES) * len(CELLS))
        self.table.setHorizontalHeaderLabels(["layer"] + [f"{s}: {c}" for s in SIDES for c in CELLS])
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        below = QWidget()
        lay = QVBoxLayout(below)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(picks)
        lay.addWidget(self.table, 1)
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.plot)
        split.addWidget(below)
        split.setSizes([290, 200])
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.hint)
        outer.addWidget(split, 1)
        self._dirty = True
        self._by_hand = False  # the plot was zoomed or panned: its range stays (see _fit)
        self.plot.getViewBox().sigRangeChangedManually.connect(lambda *_: setattr(self, "_by_hand", True))
        session.on("measured", lambda point: self.refresh())
        session.on("plan", self.refresh)
        self.refresh()

    # ------------------------------------------------------------------------------ drawing
    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self._dirty:
            self.refresh()

    def refresh(self) -> None:
        """Redraw from the session's measured plans; while the tab is hidden, only once it is shown."""
        if not self.isVisible():
            self._dirty = True
            return
        self._dirty = False
        points = self.session.measured.points
        metric = points[-1].metric if points else "accuracy"
        scale = _percent(metric)
        for origin, item in self.scatter.items():
            mine = [p for p in points if p.origin == origin]
            item.setData([p.file_bytes for p in mine], [scale * p.quality for p in mine], data=[p.key for p in mine])
        front = pareto_front(points, lambda p: p.file_bytes, lambda p: p.quality)
        xs, ys = staircase(front, lambda p: p.file_bytes, lambda p: scale * p.quality)
        self.front.setData(xs, ys)
        current = self.session.measured.get(self.session.current_key)
        self.ring.setData(*(([current.file_bytes], [scale * current.quality]) if current else ([], [])))
        self.plot.setLabel("left", "accuracy (%)" if metric == "accuracy" else "fidelity (cosine)")
        self._fit(points, scale, metric)
        chosen = self._sides(points, current)
        for side, point in chosen.items():
            self.marks[side].setVisible(point is not None)
            if point is not None:
                self.marks[side].setPos(math.log10(max(point.file_bytes, 1)), scale * point.quality)
        self._fill_combos(points, chosen)
        self._fill_table(chosen)
        self.hint.setText(self._hint(points, front, current))

    def _fit(self, points, scale: float, metric: str) -> None:
        """Both axes on the measured points (:func:`fit_span`), or on :data:`EMPTY_RANGE` before any; not
        once the user has zoomed or panned (until pyqtgraph's auto-range button gives the fitting back)."""
        box = self.plot.getViewBox()
        if self._by_hand and not any(box.autoRangeEnabled()):
            return
        self._by_hand = False
        if points:
            x = fit_span([math.log10(max(p.file_bytes, 1)) for p in points], LEAST_DECADES)
            y = fit_span([scale * p.quality for p in points], LEAST_QUALITY.get(metric, LEAST_QUALITY["fidelity"]))
        else:
            x, y = EMPTY_RANGE
        self.plot.setRange(xRange=x, yRange=y, padding=0)

    def _hint(self, points, front, current) -> str:
        if not points:
            return ("Each plan appears here once the preview has measured its accuracy (it needs eval data): by "
                    "hand, from Plan → Auto…, or fine-tuned.")
        now = f"; the current plan is {current.title}" if current else "; the current plan is not measured yet"
        return (f"{len(points)} plan{'s' if len(points) != 1 else ''} measured, {len(front)} on the Pareto front "
                f"(none smaller and more accurate){now}. Click a point to make its plan current (Edit → Undo "
                "goes back).")

    def _sides(self, points, current) -> dict:
        """A and B: the ones picked while they are kept; else A the current plan (or the latest) and B the
        latest other one."""
        by_key = {p.key: p for p in points}
        a = by_key.get(self._chosen["A"]) or current or (points[-1] if points else None)
        b = by_key.get(self._chosen["B"])
        if b is None:
            others = [p for p in points if p is not a]
            b = max(others, key=lambda p: p.number) if others else None
        return {"A": a, "B": b}

    def _fill_combos(self, points, chosen) -> None:
        for side, combo in self.combos.items():
            combo.blockSignals(True)
            combo.clear()
            for p in reversed(points):
                combo.addItem(f"{p.title} — {human_bytes(p.file_bytes)}, {_quality(p)}", p.key)
            if chosen[side] is not None:
                combo.setCurrentIndex(combo.findData(chosen[side].key))
            combo.blockSignals(False)

    def _fill_table(self, chosen) -> None:
        names = self.session.layer_names
        self.table.setRowCount(len(names) + 2)
        rows = {side: self._cells(p, names) for side, p in chosen.items()}
        lowrank = any(row[2] not in (NONE, "") for side in SIDES for row in rows[side])
        for i in range(len(SIDES)):  # the low-rank columns only where A or B factorises a layer
            self.table.setColumnHidden(1 + i * len(CELLS) + 2, not lowrank)
        for r, name in enumerate(names + ["file (total)", "accuracy"]):
            self._set(r, 0, name, bold=r >= len(names))
            for i, side in enumerate(SIDES):
                for j, text in enumerate(rows[side][r]):
                    other = rows[SIDES[1 - i]][r][j]
                    self._set(r, 1 + i * len(CELLS) + j, text, bold=text != other, right=j == len(CELLS) - 1)

    @staticmethod
    def _cells(point, names) -> list:
        """One row a layer (pruned, quantized, low rank, bytes), then the file's bytes, then the accuracy."""
        if point is None:
            return [("",) * len(CELLS)] * (len(names) + 2)
        rows = []
        for name in names:
            nbytes = point.layer_bytes.get(name)
            rows.append(settings_cells(point.plan.settings_for(name)) + (NONE if nbytes is None else f"{nbytes:,}",))
        rows.append(("", "", "", f"{point.file_bytes:,}"))
        rows.append(("", "", "", _quality(point)))
        return rows

    def _set(self, row: int, column: int, text: str, bold: bool = False, right: bool = False) -> None:
        item = QTableWidgetItem(text)
        if bold:
            font = item.font()
            font.setBold(True)
            item.setFont(font)
        if right:
            item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
        self.table.setItem(row, column, item)

    # ------------------------------------------------------------------------------ the user
    def _pick(self, side: str) -> None:
        self._chosen[side] = self.combos[side].currentData()
        self.refresh()

    def _clicked(self, item, points, event=None) -> None:
        """A point was clicked: its plan (or fine-tuned model) becomes current, one undo step."""
        keys = [p.data() for p in points] if points is not None else []
        point = self.session.measured.get(keys[0]) if keys else None
        if point is not None:
            self.restore(point)

    def restore(self, point) -> bool:
        """Make ``point``'s plan (or fine-tuned model) current; False when only its plan could be."""
        restored = self.session.restore_measured(point)
        if restored:
            self.say(f"{point.title} is the current plan again ({point.file_bytes:,} bytes measured); Edit → Undo "
                     "goes back")
        else:
            self.say(f"{point.title}: its fine-tuned model is no longer kept (the last {FINETUNED_KEPT} are), so its "
                     "plan is restored and measured on the original weights; fine-tune it again for the model")
        return restored

"""The layer table: one row per compressible layer (Qt model/view), sortable, multi-select."""

from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, QSortFilterProxyModel, Qt
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from explorer.units import human_bytes, human_count

COLUMNS = ["layer", "type", "shape", "params", "MACs", "settings", "weight bytes", "ratio"]
SETTINGS, WEIGHTS, RATIO = (COLUMNS.index(c) for c in ("settings", "weight bytes", "ratio"))
# the header's tooltips: which of inspect's two sizes (the engine's LayerInfo.weight_bytes, layer_bytes) a
# column is; a row's "weight bytes" cell names both of that layer in its own tooltip
HEADER_TIPS = {
    "params": "parameters of the layer: its weight tensor, bias and any other parameter of its module",
    "weight bytes": "the weight tensor alone, as inspect's \"weight bytes\": fp32 before → as the plan stores "
                    "it after (pruned, quantized, coded). The bias and any other parameter of the module are "
                    "stored as they are (inspect's \"layer bytes\" counts them too)",
    "ratio": "weight bytes before / after",
}


_RIGHT = int(Qt.AlignRight | Qt.AlignVCenter)


class LayerTableModel(QStandardItemModel):
    """One row per layer, held in Qt's own items: painting and sorting read them without calling into
    Python (every such call would first have to take the GIL back from a busy worker). The rows are
    rebuilt for a new model (:meth:`refresh`) and their settings and sizes updated when the plan or the
    results change (:meth:`refresh_values`). ``Qt.UserRole`` holds each cell's sort key."""

    def __init__(self, session, parent=None):
        super().__init__(0, len(COLUMNS), parent)
        self.session = session
        self.setHorizontalHeaderLabels(COLUMNS)
        for column, name in enumerate(COLUMNS):
            if name in HEADER_TIPS:
                self.horizontalHeaderItem(column).setToolTip(HEADER_TIPS[name])
        self._described = (None, None, {})  # (plan, model info, layer -> its settings described)

    @staticmethod
    def _item(text: str, key, align: bool = False) -> QStandardItem:
        item = QStandardItem(text)
        item.setData(key, Qt.UserRole)
        item.setEditable(False)
        if align:
            item.setData(_RIGHT, Qt.TextAlignmentRole)
        return item

    def refresh(self) -> None:
        self.setRowCount(0)
        info = self.session.info
        if info is None:
            return
        for layer in info.layers:
            first = self._item(layer.name, layer.name)
            tips = []
            if not layer.filter_ok and layer.filter_reason:
                tips.append(f"output channels cannot be removed: {layer.filter_reason}")
            if len(layer.producers) > 1:
                others = ", ".join(p for p in layer.producers if p != layer.name)
                tips.append(f"removing its filters removes the same channels from {others} (their outputs are "
                            f"added: one coupled group)")
            if layer.lowrank_reason:
                tips.append(f"cannot be factorised (low-rank): {layer.lowrank_reason}")
            if tips:
                first.setToolTip("\n".join(tips))
            self.appendRow([first, self._item(layer.type, layer.type),
                            self._item("×".join(map(str, layer.shape)), layer.weight_params),
                            self._item(f"{layer.params:,}", layer.params, True),
                            self._item(human_count(layer.macs), layer.macs or 0, True),
                            self._item("", ""), self._item("…", 0, True), self._item("", 0, True)])
            self.item(self.rowCount() - 1, WEIGHTS).setToolTip(size_tip(layer))
        self.refresh_values()

    def refresh_values(self) -> None:
        info, res = self.session.info, self.session.results
        if info is None:
            return
        measured = {layer["name"]: layer for layer in res.get("layers", [])} if res else {}
        plan = self.session.plan
        if self._described[0] is not plan or self._described[1] is not info:  # plans never change in place
            self._described = (plan, info, _with_groups(info, {layer.name: self.session.settings(layer.name)
                                                               for layer in info.layers}))
        described = self._described[2]
        for row, layer in enumerate(info.layers):
            settings = described[layer.name]
            m = measured.get(layer.name)
            if m is None or not self.session.measured_as_set(layer.name):  # not yet, or not as set now
                cells = ((settings, settings), ("…", 0), ("", 0))
            elif layer.shared_with:  # its weight is stored once, with the layer it is tied to
                cells = ((settings, settings), (f"tied to {layer.shared_with}", 0), ("", 0))
            else:
                coded = m["bits"]["coded"]
                ratio = 8 * layer.weight_bytes / max(coded, 1)
                cells = ((settings, settings),
                         (f"{human_bytes(layer.weight_bytes)} → {human_bytes(coded / 8)}", coded),
                         (f"{ratio:.1f}×", ratio))
            for column, (text, key) in zip((SETTINGS, WEIGHTS, RATIO), cells):
                item = self.item(row, column)
                if item.text() != text:
                    item.setText(text)
                if item.data(Qt.UserRole) != key:
                    item.setData(key, Qt.UserRole)


def _with_groups(info, settings: dict) -> dict:
    """Each layer's settings described; a coupled group's producer without a request of its own that loses
    the filters another producer's request removes says so ("50% filters, with conv1")."""
    described = {name: s.describe() for name, s in settings.items()}
    for layer in info.layers:
        p = settings[layer.name].prune
        if len(layer.producers) < 2 or p is None or p.granularity != "filter" or not p.amount:
            continue
        for other in layer.producers:
            own = settings[other].prune if other in settings else None
            if other != layer.name and (own is None or own.granularity == "element") and other in described:
                extra = f"{p.amount_text()} filters, with {layer.name}"
                described[other] = extra if described[other] == "-" else f"{described[other]}; {extra}"
    return described


def size_tip(layer) -> str:
    """Both sizes of a layer (an :class:`explorer.engine.inspect.LayerInfo`), named as inspect names them."""
    rest = layer.layer_bytes - layer.weight_bytes
    return (f"weight bytes {human_bytes(layer.weight_bytes)}: the weight tensor alone\n"
            f"layer bytes {human_bytes(layer.layer_bytes)}: the weights + {human_bytes(rest)} of bias and other "
            "parameters of the module, stored as they are")


class LayerTable(QTableView):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.model_ = LayerTableModel(session, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model_)
        self.proxy.setSortRole(Qt.UserRole)
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(-1, Qt.AscendingOrder)  # model order until the user sorts
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.verticalHeader().setVisible(False)
        # Interactive, not ResizeToContents: that re-measures every cell on each change of the plan or the
        # results (~20 ms of GUI thread per slider release on a 21-layer model); the window sizes them once
        # per model with resizeColumnsToContents()
        self.horizontalHeader().setSectionResizeMode(QHeaderView.Interactive)
        self.horizontalHeader().setStretchLastSection(True)
        self.setAlternatingRowColors(True)

    def resizeColumnsToContents(self) -> None:  # noqa: N802 (Qt's name)
        """Size the columns to their contents, leaving room for the measured values still to come."""
        super().resizeColumnsToContents()
        fm = self.fontMetrics()
        for column, sample in ((SETTINGS, "prune 95%, 8b kmeans/density"), (WEIGHTS, "999.9 KB → 999.9 KB"),
                               (RATIO, "999.9×")):
            self.setColumnWidth(column, max(self.columnWidth(column), fm.horizontalAdvance(sample) + 16))

    def needed_width(self) -> int:
        """Pixels the table needs to show every column without a horizontal scroll bar."""
        columns = sum(self.columnWidth(c) for c in range(self.model().columnCount()))
        return columns + 2 * self.frameWidth() + self.verticalScrollBar().sizeHint().width()

    def selected_names(self) -> list:
        rows = sorted({self.proxy.mapToSource(i).row() for i in self.selectionModel().selectedRows()})
        layers = self.model_.session.info.layers if self.model_.session.info else []
        return [layers[r].name for r in rows if r < len(layers)]

    def select_names(self, names) -> None:
        sel = self.selectionModel()
        sel.clearSelection()
        layers = self.model_.session.info.layers if self.model_.session.info else []
        for r, layer in enumerate(layers):
            if layer.name in names:
                idx = self.proxy.mapFromSource(self.model_.index(r, 0))
                sel.select(idx, QItemSelectionModel.Select | QItemSelectionModel.Rows)

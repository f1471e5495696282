"""The layer table: one row per compressible layer (Qt model/view), sortable, multi-select."""

from __future__ import annotations

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from explorer.cli import human_bytes, human_count

COLUMNS = ["layer", "type", "shape", "params", "MACs", "settings", "size before → after", "ratio"]


class LayerTableModel(QAbstractTableModel):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() or self.session.info is None else len(self.session.info.layers)

    def columnCount(self, parent=QModelIndex()) -> int:
        return len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        return None

    def _measured(self, name):
        res = self.session.results
        if not res:
            return None
        for layer in res.get("layers", []):
            if layer["name"] == name:
                return layer
        return None

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        layer = self.session.info.layers[index.row()]
        col = index.column()
        measured = self._measured(layer.name)
        if role == Qt.UserRole:  # sort keys
            bits = measured["bits"] if measured else None
            return [layer.name, layer.type, layer.weight_params, layer.params, layer.macs or 0,
                    self.session.settings(layer.name).describe(), bits["coded"] if bits else 0,
                    (bits["dense"] / max(bits["coded"], 1)) if bits else 0][col]
        if role == Qt.TextAlignmentRole and col in (3, 4, 6, 7):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        if role == Qt.ToolTipRole and col == 0 and not layer.filter_ok and layer.filter_reason:
            return f"output channels cannot be removed: {layer.filter_reason}"
        if role != Qt.DisplayRole:
            return None
        if col == 0:
            return layer.name
        if col == 1:
            return layer.type
        if col == 2:
            return "×".join(map(str, layer.shape))
        if col == 3:
            return f"{layer.params:,}"
        if col == 4:
            return human_count(layer.macs)
        if col == 5:
            return self.session.settings(layer.name).describe()
        if measured is None:
            return "…" if col == 6 else ""
        bits = measured["bits"]
        if col == 6:
            return f"{human_bytes(bits['dense'] / 8)} → {human_bytes(bits['coded'] / 8)}"
        return f"{bits['dense'] / max(bits['coded'], 1):.1f}×"

    def refresh(self) -> None:
        self.beginResetModel()
        self.endResetModel()

    def refresh_values(self) -> None:
        if self.rowCount():
            self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, len(COLUMNS) - 1))


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
        for column, sample in ((5, "prune 95%, 8b kmeans/density"), (6, "999.9 KB → 999.9 KB"), (7, "999.9×")):
            self.setColumnWidth(column, max(self.columnWidth(column), fm.horizontalAdvance(sample) + 16))

    def selected_names(self) -> list:
        rows = sorted({self.proxy.mapToSource(i).row() for i in self.selectionModel().selectedRows()})
        layers = self.model_.session.info.layers if self.model_.session.info else []
        return [layers[r].name for r in rows if r < len(layers)]

    def select_names(self, names) -> None:
        sel = self.selectionModel()
        sel.clearSelection()
        layers = self.model_.session.info.layers if self.model_.session.info else []
        from PySide6.QtCore import QItemSelectionModel

        for r, layer in enumerate(layers):
            if layer.name in names:
                idx = self.proxy.mapFromSource(self.model_.index(r, 0))
                sel.select(idx, QItemSelectionModel.Select | QItemSelectionModel.Rows)

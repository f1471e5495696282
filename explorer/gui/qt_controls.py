"""Per-layer controls: sparsity, bit-width and rank sliders with their methods. Values can be dragged or
typed; the settings are applied to the selected layers when a slider is released (or a value typed),
not on every intermediate value."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout,
                               QWidget)
from superqt import QLabeledSlider

from explorer.engine.methods.kmeans import INITS
from explorer.engine.methods.factorisations import FACTORISATIONS
from explorer.engine.methods.factorisations import METHODS as LOWRANK_METHODS
from explorer.engine.methods.granularities import CRITERIA
from explorer.engine.methods.prune import GRANULARITIES
from explorer.engine.methods.quantize import QUANTIZERS


def _slider(lo, hi, suffix=""):
    s = QLabeledSlider(Qt.Horizontal)
    s.setRange(lo, hi)
    return s


class Controls(QWidget):
    """Emits ``changed(patch)`` where patch is a plan entry for the selected layers, e.g.
    ``{"prune": {"amount": 0.5, "granularity": "element"}, "quantize": None}``."""

    changed = Signal(object)  # a dict (object: Qt would hand back a copy with its keys sorted)
    apply_all = Signal(object)
    sparsity_moved = Signal(int)  # the sparsity slider's value while it is dragged (cheap redraws only)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._loading = False
        self._lowrank_refused = None  # why the selected layers cannot be factorised (see allow_lowrank)
        self._timer = QTimer(self, singleShot=True, interval=250)
        self._timer.timeout.connect(self._emit)

        self.sparsity = _slider(0, 99)
        self.granularity = QComboBox()
        self.granularity.addItems(list(GRANULARITIES))
        self.criterion = QComboBox()
        self.criterion.addItems(list(CRITERIA))  # the registry: magnitude, and saliency from calibration data
        for i, c in enumerate(CRITERIA.values()):
            self.criterion.setItemData(i, c.description, Qt.ToolTipRole)
        prune = QGroupBox("Pruning")
        f = QFormLayout(prune)
        f.addRow("sparsity %", self.sparsity)
        f.addRow("granularity", self.granularity)
        f.addRow("criterion", self.criterion)

        self.quant_on = QCheckBox("quantize")
        self.bits = _slider(1, 8)
        self.method = QComboBox()
        self.method.addItems(list(QUANTIZERS))  # the registry: a method registered before the window is built
        for i, q in enumerate(QUANTIZERS.values()):
            self.method.setItemData(i, q.summary, Qt.ToolTipRole)
        self.init = QComboBox()
        self.init.addItems(list(INITS))
        quant = QGroupBox("Quantization")
        f = QFormLayout(quant)
        f.addRow(self.quant_on)
        f.addRow("bits", self.bits)
        f.addRow("method", self.method)
        f.addRow("k-means init", self.init)

        self.rank_on = QCheckBox("factorise")
        self.rank = _slider(1, 100)
        self.rank_method = QComboBox()
        self.rank_method.addItems(["auto", *LOWRANK_METHODS])
        self.rank_method.setItemData(0, "svd for Linear and Embedding, tucker2 for convolutions", Qt.ToolTipRole)
        for i, f in enumerate(FACTORISATIONS.values(), start=1):
            self.rank_method.setItemData(i, f"{f.applies}: {f.summary}", Qt.ToolTipRole)
        lowrank = QGroupBox("Low rank")
        f = QFormLayout(lowrank)
        f.addRow(self.rank_on)
        f.addRow("params kept %", self.rank)
        f.addRow("method", self.rank_method)

        self.apply_button = QPushButton("Apply to all layers")
        self.apply_button.setToolTip("Set these values on every layer (the selection gets them as you move them)")
        self.apply_button.clicked.connect(lambda: self.apply_all.emit(self.patch()))

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        for box in (prune, quant, lowrank):
            row.addWidget(box)
        layout.addLayout(row)
        layout.addWidget(self.apply_button)

        self.sparsity.valueChanged.connect(self._sparsity_moved)
        for s in (self.sparsity, self.bits, self.rank):
            s.valueChanged.connect(self._soon)
            s._slider.sliderReleased.connect(self._now)
        for c in (self.granularity, self.criterion, self.method, self.init, self.rank_method):
            c.currentIndexChanged.connect(self._now)
        for c in (self.quant_on, self.rank_on):
            c.toggled.connect(self._now)

    # -- model -> view
    def load(self, settings) -> None:
        self._loading = True
        try:
            p, q, r = settings.prune, settings.quantize, settings.lowrank
            amount = p.amount if (p is not None and isinstance(p.amount, float)) else 0.0
            self.sparsity.setValue(int(round(amount * 100)))
            self.granularity.setCurrentText(p.granularity if p is not None else "element")
            self.criterion.setCurrentText(p.criterion if p is not None else "l1")
            self.quant_on.setChecked(q is not None)
            if q is not None:
                self.bits.setValue(q.bits)
                self.method.setCurrentText(q.method)
                self.init.setCurrentText(q.init)
            self.rank_on.setChecked(r is not None)
            if r is not None:
                self.rank.setValue(int(round(r.rank * 100)) if isinstance(r.rank, float) else 50)
                self.rank_method.setCurrentText(r.method)
            self._enable()
        finally:
            self._loading = False

    def allow_granularities(self, refused: dict) -> None:
        """Grey out the granularities the selected layers cannot take (``refused``: granularity -> why), the
        reason as the item's tooltip; a plan that already holds one still shows it (the engine says why)."""
        model = self.granularity.model()
        for i in range(self.granularity.count()):
            name = self.granularity.itemText(i)
            why = refused.get(name)
            item = model.item(i)
            item.setEnabled(why is None)
            item.setToolTip(why or GRANULARITIES[name].description)
        said = [f"{name}: not offered, {why}" for name, why in refused.items()]
        self.granularity.setToolTip("\n".join(said))

    def allow_lowrank(self, refused) -> None:
        """Grey out factorising when one of the selected layers cannot take it (``refused``: why, or None)."""
        self._lowrank_refused = refused
        self.rank_on.setToolTip(f"not offered: {refused}" if refused else "")
        self._enable()

    def _enable(self) -> None:
        q = self.quant_on.isChecked()
        self.method.setEnabled(q)
        fields = QUANTIZERS[self.method.currentText()].fields  # what the method reads of its settings
        self.init.setEnabled(q and "init" in fields)
        self.bits.setEnabled(q and "bits" in fields)
        r = self.rank_on.isChecked()
        # a plan that already factorises such a layer still shows it, and can turn it off
        self.rank_on.setEnabled(self._lowrank_refused is None or r)
        self.rank.setEnabled(r)
        self.rank_method.setEnabled(r)

    # -- view -> model
    def patch(self) -> dict:
        """The plan entry the controls stand for."""
        amount = self.sparsity.value() / 100.0
        out = {"prune": {"amount": amount, "granularity": self.granularity.currentText(),
                         "criterion": self.criterion.currentText()} if amount else None}
        if self.quant_on.isChecked():
            bits = self.bits.value()
            method = self.method.currentText()
            if method == "uniform" and bits < 2:
                bits = 2
            out["quantize"] = {"bits": bits, "method": method, "init": self.init.currentText()}
        else:
            out["quantize"] = None
        if self.rank_on.isChecked():
            out["lowrank"] = {"rank": self.rank.value() / 100.0, "method": self.rank_method.currentText()}
        else:
            out["lowrank"] = None
        return out

    def _sparsity_moved(self, value) -> None:
        # only while dragged: a value typed or set (e.g. by the threshold line's release) has no drag to
        # follow, and a repaint of the plot then would share the GUI thread with the measurement it starts
        if not self._loading and self.sparsity.isSliderDown():
            self.sparsity_moved.emit(int(value))

    def _soon(self, *_):
        if not self._loading:
            self._timer.start()

    def _now(self, *_):
        if not self._loading:
            self._enable()
            self._timer.stop()
            self._emit()

    def _emit(self):
        self.changed.emit(self.patch())

    def set_sparsity(self, percent: int) -> None:
        """Set the slider from outside (the threshold line) and apply at once."""
        self.sparsity.setValue(int(percent))
        self._now()

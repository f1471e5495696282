"""The window on a model with an LSTM (issue 16): its gate matrices are rows of the layer table, each with
why channels and low-rank do not apply, and a release prunes the selected one."""

import pytest
from PySide6.QtCore import Qt

WORK_TIMEOUT_MS = 30_000


def test_lstm_weight_matrices_are_rows_that_say_what_does_not_apply(make_window, qtbot):
    win = make_window("zoo:lstm_example")
    names = win.session.layer_names
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0"} <= set(names)
    model = win.table.model_
    row = names.index("lstm.weight_hh_l0")
    assert model.data(model.index(row, 1), Qt.DisplayRole) == "LSTM"
    tip = model.data(model.index(row, 0), Qt.ToolTipRole)
    assert "gates" in tip and "fused kernel" in tip
    win.table.select_names(["lstm.weight_hh_l0"])
    qtbot.waitUntil(lambda: win.session.current == "lstm.weight_hh_l0", timeout=WORK_TIMEOUT_MS)
    before = dict(win.preview.values)
    win.controls.sparsity.setValue(60)
    win.controls.sparsity._slider.sliderReleased.emit()
    assert win.session.settings("lstm.weight_hh_l0").prune.amount == pytest.approx(0.60)
    qtbot.waitUntil(lambda: win.idle() and win.preview.values != before, timeout=WORK_TIMEOUT_MS)
    assert win.preview.values["pruned"] < before["pruned"]
    assert win.layer_view.pruned.getData()[1].sum() > 0  # its histogram shows the pruned weights

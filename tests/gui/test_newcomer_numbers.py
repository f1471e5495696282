"""What a newcomer meets (issue 17), the numbers: the layer table's sizes are inspect's (weights vs layer, both
named), the centroid comparison explains its MSEs and shows each init's accuracy, the size bars can be read on
a log axis, and ``gui --layer`` starts on a layer."""

import json
import os
import subprocess
import sys

from PySide6.QtCore import Qt

from explorer.gui.qt_layer_table import COLUMNS, HEADER_TIPS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TIMEOUT_MS = 30_000


def cell(win, row, column):
    model = win.table.model_
    return model.data(model.index(row, COLUMNS.index(column)), Qt.DisplayRole)


# -- 1. one definition of a layer's size
def test_the_layer_table_shows_the_sizes_inspect_prints(make_window, settle):
    from explorer.units import human_bytes

    win = make_window("digits-cnn")
    settle(win)
    out = subprocess.run([sys.executable, "-m", "explorer", "inspect", "digits-cnn", "--json"], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    data = json.loads(out.stdout)
    model = win.table.model_
    for row, layer in enumerate(data["layers"]):
        assert cell(win, row, "layer") == layer["name"]
        assert cell(win, row, "weight bytes").startswith(human_bytes(layer["weight_bytes"]) + " → ")
        tip = model.data(model.index(row, COLUMNS.index("weight bytes")), Qt.ToolTipRole)
        assert f"weight bytes {human_bytes(layer['weight_bytes'])}: " in tip
        assert f"layer bytes {human_bytes(layer['layer_bytes'])}: " in tip
    assert cell(win, 0, "weight bytes").split(" → ")[0] == "720 B"  # conv1: its bias (80 B) is not compressed
    assert "layer bytes 800 B: the weights + 80 B of bias" in model.data(model.index(0, COLUMNS.index(
        "weight bytes")), Qt.ToolTipRole)
    tip = model.headerData(COLUMNS.index("weight bytes"), Qt.Horizontal, Qt.ToolTipRole)  # the header explains
    assert tip == HEADER_TIPS["weight bytes"] and "alone" in tip and "layer bytes" in tip

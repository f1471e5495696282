"""What a newcomer meets (issue 17), the numbers: the layer table's sizes are inspect's (weights vs layer, both
named), the centroid comparison explains its MSEs and shows each init's accuracy, the size bars can be read on
a log axis, and ``gui --layer`` starts on a layer."""

import json
import os
import subprocess
import sys

import pytest

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


# -- 2. the centroid comparison explains its numbers and shows each init's accuracy
def test_the_centroid_tab_explains_the_errors_and_shows_the_accuracy_of_each_init(make_window, qtbot, settle):
    from explorer.engine.measure.layerview import init_accuracies, init_comparison
    from explorer.engine.plan import Plan

    win = make_window("digits-mlp")
    settle(win)
    win.session.set_plan(Plan.from_dict({"layers": {"fc1": {
        "prune": {"amount": 0.92}, "quantize": {"bits": 2, "method": "kmeans", "init": "linear"}}}}))
    win.table.select_names(["fc1"])
    qtbot.waitUntil(lambda: win.session.current == "fc1", timeout=TIMEOUT_MS)
    win.tabs.setCurrentWidget(win.centroids)
    qtbot.waitUntil(lambda: len(win.centroids.accuracies) == 3 and "fc1" in win.centroids.title.text(),
                    timeout=60_000)
    settings = win.session.settings("fc1")
    acc = init_accuracies(win.session.loaded, "fc1", settings)
    assert win.centroids.accuracies == acc.accuracies  # what the engine measured
    comp = init_comparison("fc1", win.session.loaded.model.fc1, settings)
    text = win.centroids.explain.text()
    low, top = comp.lowest_mse(), comp.best_top()
    assert f"Lowest MSE: <b>{low}</b> ({comp.results[low]['mse_final']:.3g}" in text
    assert f"Largest weights kept best: <b>{top}</b>" in text
    assert f"{top} {comp.results[top]['top_error']:.3g}" in text
    for init, a in acc.accuracies.items():
        assert f"{init} {100 * a:.2f}%" in text
    assert f"dense {100 * acc.before:.2f}%" in text



def test_without_labelled_eval_data_the_centroid_tab_says_what_the_accuracies_need(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    settle(win)
    win.session.set_eval_data(None)
    win.tabs.setCurrentWidget(win.centroids)
    qtbot.waitUntil(lambda: "needs eval data with labels" in win.centroids.explain.text(), timeout=TIMEOUT_MS)
    settle(win)
    assert win.centroids.accuracies == {} and "Lowest MSE" in win.centroids.explain.text()

# -- 3. the size bars on a linear or a log axis, each labelled with its ratio to dense
def _bar_tops(panel):
    opts = panel.bars.opts
    y0 = opts.get("y0") or 0
    return [y0 + h for h in opts["height"]]


def test_the_size_bars_on_either_axis_carry_their_ratio_to_dense_and_the_choice_is_remembered(
        make_window, qtbot, settle, tmp_path):
    import math

    from PySide6.QtCore import QSettings

    from explorer.engine.plan import Plan
    from explorer.engine.samples import SAMPLES_DIR
    from explorer.gui.qt_preview import LOG_KEY, STAGES, PreviewPanel

    win = make_window("digits-cnn")
    settle(win)
    win.session.set_plan(Plan.load(str(SAMPLES_DIR / "digits-cnn.plan.json")))
    settle(win)
    panel, results = win.preview, win.session.results
    size = results["size"]
    sizes = [size[k] for k, _ in STAGES]
    assert not panel.log_axis.isChecked()  # linear by default: the bars are the bytes
    assert _bar_tops(panel) == sizes
    for (key, _), text in zip(STAGES[1:], panel.texts[1:]):
        ratio = results["ratio"].get(key) or size["dense"] / size[key]
        assert text.toPlainText().endswith(f"\n{ratio:.1f}×")
    assert "×" not in panel.texts[0].toPlainText()  # dense is the 1× everything is measured against
    assert results["ratio"]["coded"] > 20  # the bars after dense are slivers on a linear axis

    panel.log_axis.setChecked(True)
    assert panel.plot.getAxis("left").logMode and win.settings.value(LOG_KEY, type=bool)
    assert _bar_tops(panel) == pytest.approx([math.log10(v) for v in sizes])
    lo, hi = panel.plot.viewRange()[1]
    assert lo < math.log10(min(sizes)) and hi > math.log10(max(sizes))
    assert all("×" in t.toPlainText() for t in panel.texts[1:])  # the labels stay

    settings = QSettings(str(tmp_path / "remembered.ini"), QSettings.IniFormat)
    settings.setValue(LOG_KEY, True)
    again = PreviewPanel(settings=settings)
    qtbot.addWidget(again)
    assert again.log_axis.isChecked() and again.plot.getAxis("left").logMode
    again.log_axis.setChecked(False)
    assert settings.value(LOG_KEY, type=bool) is False and not again.plot.getAxis("left").logMode


# -- 4. gui --layer NAME
def test_gui_layer_starts_on_that_layer_and_an_unknown_name_is_one_error_naming_the_layers(make_window, qtbot,
                                                                                           tmp_path):
    from explorer.gui.app import choose_layer

    win = make_window("digits-cnn")
    assert win.session.current != "conv2"
    assert choose_layer(win, "conv2") is None
    qtbot.waitUntil(lambda: win.table.selected_names() == ["conv2"], timeout=TIMEOUT_MS)
    assert win.session.current == "conv2"
    said = choose_layer(win, "fc9")
    assert said == "--layer 'fc9': the model has no such layer (its layers: conv1, conv2, fc1, fc2)"
    assert win.session.current == "conv2"

    env = dict(os.environ, PYTHONPATH=ROOT, QT_QPA_PLATFORM="offscreen")
    png = tmp_path / "shot.png"
    out = subprocess.run([sys.executable, "-m", "explorer", "gui", "digits-cnn", "--layer", "fc9", "--screenshot",
                          str(png)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 2 and out.stderr.strip() == f"error: {said}" and not png.exists()
    out = subprocess.run([sys.executable, "-m", "explorer", "gui", "--layer", "fc1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "give the MODEL whose layer it is" in out.stderr
    out = subprocess.run([sys.executable, "-m", "explorer", "gui", "digits-cnn", "--layer", "conv2",
                          "--screenshot", str(png)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and png.exists(), out.stderr

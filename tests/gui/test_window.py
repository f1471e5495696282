"""The explorer window, driven offscreen with pytest-qt: every wait is a ``qtbot.waitUntil`` or
``waitSignal`` on state the window exposes, never a sleep.

What the issue asks the window to show: a slider release reaches the plan, the table and the preview; a
dragged threshold line becomes a sparsity; the three k-means initialisations are drawn with their
errors; stale results are dropped; a bad file leaves the window working; an export can be read back.
"""

import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QFileDialog, QMessageBox

from explorer.engine.compress import compress
from explorer.engine.errors import Cancelled, PlanError
from explorer.engine.measure.evaluate import preview_plan
from explorer.engine.measure.layerview import init_comparison, layer_preview
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.samples import SAMPLES_DIR
from explorer.engine.storage import fileformat
from explorer.gui.qt_layer_table import COLUMNS
from explorer.gui.workers import Workers

WORK_TIMEOUT_MS = 30_000
SETTINGS = COLUMNS.index("settings")
SIZE = COLUMNS.index("weight bytes")


# ------------------------------------------------------------------------------------------- helpers


def cell(win, name, column):
    """What the layer table shows for layer ``name`` in ``column``."""
    model = win.table.model_
    row = win.session.layer_names.index(name)
    return model.data(model.index(row, column), Qt.DisplayRole)


def module(win, name):
    return dict(win.session.loaded.model.named_modules())[name]


def drawn(item):
    """The y values a pyqtgraph PlotDataItem draws."""
    y = item.getData()[1]
    return np.zeros(0) if y is None else np.asarray(y)


def expected_sizes(win, plan=None):
    """Sizes of ``plan`` (default: the session's) measured directly with the engine."""
    summary, _ = preview_plan(win.session.loaded, plan or win.session.plan)
    return summary["size"]


def button(dialog):
    """The push button of a QProgressDialog (Cancel, or Close once it is done)."""
    from PySide6.QtWidgets import QPushButton

    return dialog.findChild(QPushButton)


def message_boxes(win):
    return [b for b in win.findChildren(QMessageBox) if b.isVisible()]


# ------------------------------------------------------------------------- slider -> plan -> preview


def test_slider_release_updates_plan_table_histogram_and_preview(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    name = win.session.current
    assert name == "fc1"  # the window starts on the largest layer
    before = dict(win.preview.values)
    assert before["pruned"] == before["dense"]  # nothing compressed yet

    win.controls.sparsity.setValue(70)  # dragging: only a debounced change, no work yet
    assert win.session.settings(name).prune is None
    win.controls.sparsity._slider.sliderReleased.emit()  # release: the plan changes at once
    assert win.session.settings(name).prune.amount == pytest.approx(0.70)
    assert "stale" in win.preview.status.text()

    qtbot.waitUntil(lambda: win.idle() and win.preview.values != before, timeout=WORK_TIMEOUT_MS)
    assert win.preview.values == expected_sizes(win)
    assert win.preview.values["pruned"] < before["pruned"]
    assert win.session.results["size"] == win.preview.values
    assert "stale" not in win.preview.status.text()
    assert "prune 70%" in cell(win, name, SETTINGS)
    assert "→" in cell(win, name, SIZE)

    # the histogram redrawn for the new settings: the engine's own counts, 70% of fc1 in the pruned colour
    ref = layer_preview(name, module(win, name), win.session.settings(name))
    np.testing.assert_array_equal(drawn(win.layer_view.pruned), ref.pruned)
    np.testing.assert_array_equal(drawn(win.layer_view.kept), ref.kept)
    assert int(ref.pruned.sum()) == ref.numel - math.ceil(0.3 * ref.numel)
    assert [line.value() for line in win.layer_view.lines] == pytest.approx([-ref.threshold, ref.threshold])
    assert all(line.isVisible() for line in win.layer_view.lines)


def test_a_release_finds_the_layer_measured_ahead(make_window, qtbot, monkeypatch):
    import explorer.engine.measure.sweep as sweep_mod

    win = make_window("digits-cnn")  # settled: the layer's histogram and its preparation have run
    swept = []
    real = sweep_mod.TensorSweep.measure
    monkeypatch.setattr(sweep_mod.TensorSweep, "measure", lambda self, s: swept.append(s) or real(self, s))
    win.controls.sparsity.setValue(37)
    win.controls.sparsity._slider.sliderReleased.emit()
    qtbot.waitUntil(lambda: win.idle() and win.preview.values == expected_sizes(win), timeout=WORK_TIMEOUT_MS)
    assert not [s for s in swept if s.prune is not None and s.prune.amount == pytest.approx(0.37)]  # found
    assert win.session.results == preview_plan(win.session.loaded, win.session.plan)[0]


def test_a_typed_value_applies_after_the_debounce(make_window, qtbot):
    win = make_window("digits-mlp")
    name = win.session.current
    win.controls.sparsity.setValue(40)  # no release: the debounce timer applies it
    qtbot.waitUntil(lambda: win.session.settings(name).prune is not None, timeout=5000)
    assert win.session.settings(name).prune.amount == pytest.approx(0.40)


def test_settings_apply_to_every_selected_layer_and_to_all(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    win.table.select_names(["conv2", "fc2"])
    assert win.session.selection == ["conv2", "fc2"]
    win.controls.quant_on.setChecked(True)  # toggling applies at once
    win.controls.set_sparsity(50)
    for name in ("conv2", "fc2"):
        s = win.session.settings(name)
        assert s.prune.amount == pytest.approx(0.5) and s.quantize is not None
    for name in ("conv1", "fc1"):
        assert win.session.settings(name).is_empty
    win.controls.apply_button.click()
    assert all(win.session.settings(n).prune.amount == pytest.approx(0.5) for n in win.session.layer_names)
    settle(win)
    assert win.preview.values == expected_sizes(win)


def test_an_invalid_combination_shows_an_error_and_leaves_the_plan(make_window, qtbot):
    win = make_window("digits-mlp")
    name = win.session.current
    win.controls.quant_on.setChecked(True)
    win.controls.method.setCurrentText("binary")
    before = win.session.plan.to_dict()
    win.controls.set_sparsity(50)  # binary weights have no zero level: pruning cannot be represented
    assert name in win.last_error and "binary" in win.last_error
    assert win.banner.isVisible()
    assert win.session.plan.to_dict() == before


def test_table_sorts_and_selection_follows_the_sorted_rows(make_window):
    win = make_window("digits-cnn")
    win.table.sortByColumn(COLUMNS.index("params"), Qt.DescendingOrder)
    top = win.table.proxy.index(0, 0).data()
    assert top == max(win.session.info.layers, key=lambda layer: layer.params).name
    win.table.selectRow(win.table.proxy.rowCount() - 1)
    smallest = min(win.session.info.layers, key=lambda layer: layer.params).name
    assert win.session.selection == [smallest]


# ------------------------------------------------------------------------------- threshold line drag


def test_dragging_the_threshold_line_sets_the_sparsity(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    name = win.session.current
    qtbot.waitUntil(lambda: name in win.session.magnitudes and win.layer_view.lines[1].isVisible(), timeout=5000)
    magnitudes = np.sort(np.abs(module(win, name).weight.detach().double().numpy().ravel()))
    n = magnitudes.size
    k = int(0.37 * n) + 3
    t = float((magnitudes[k - 1] + magnitudes[k]) / 2)  # between two weights: no tie at the line
    expected = round(100 * np.count_nonzero(magnitudes < t) / n)
    assert 30 < expected < 45

    line, mirror = win.layer_view.lines[1], win.layer_view.lines[0]
    with qtbot.waitSignal(win.layer_view.threshold_dragged) as dragged:
        line.setValue(t)  # a drag step: cheap, the plan does not change
    assert dragged.args == [pytest.approx(t)]
    assert mirror.value() == pytest.approx(-t)
    assert win.session.settings(name).prune is None
    with qtbot.waitSignal(win.layer_view.threshold_released):
        line.sigPositionChangeFinished.emit(line)  # the drag ends
    assert win.controls.sparsity.value() == expected
    assert win.session.settings(name).prune.amount == pytest.approx(expected / 100)
    assert win.session.settings(name).prune.granularity == "element"

    settle(win)
    assert win.preview.values == expected_sizes(win)
    assert drawn(win.layer_view.pruned).sum() == n - math.ceil(round((1 - expected / 100) * n, 9))

    # the negative line drives it too
    k2 = int(0.81 * n)
    t2 = float((magnitudes[k2 - 1] + magnitudes[k2]) / 2)
    mirror.setValue(-t2)
    mirror.sigPositionChangeFinished.emit(mirror)
    assert win.session.settings(name).prune.amount == pytest.approx(
        round(100 * np.count_nonzero(magnitudes < t2) / n) / 100)
    settle(win)


def test_the_threshold_lines_follow_the_sparsity_slider_while_it_moves(make_window, qtbot, settle):
    """Moving the slider (held down) moves the ±t lines at once, to the threshold the release will then
    measure and draw; the plan changes on the release (or once the slider has stood still for 250 ms)."""
    win = make_window("digits-cnn")
    name = win.session.current
    settle(win)
    qtbot.waitUntil(lambda: name in win.session.magnitudes, timeout=5000)
    magnitudes = np.sort(np.abs(module(win, name).weight.detach().double().numpy().ravel()))
    n = magnitudes.size
    line, mirror = win.layer_view.lines[1], win.layer_view.lines[0]
    for pct in (62, 88):
        win.controls.sparsity._slider.setSliderDown(True)  # a drag in progress
        win.controls.sparsity.setValue(pct)
        t = magnitudes[n - math.ceil(round((1 - pct / 100) * n, 9))]  # the smallest kept magnitude
        assert line.value() == pytest.approx(t, rel=1e-6) and mirror.value() == pytest.approx(-t, rel=1e-6)
        assert line.isVisible() and f"{pct}%" in win.statusBar().currentMessage()
        assert win.session.settings(name).prune is None  # nothing measured yet
        win.controls.sparsity._slider.setSliderDown(False)  # the release (emits sliderReleased)
        assert win.session.settings(name).prune.amount == pytest.approx(pct / 100)
        settle(win)
        assert line.value() == pytest.approx(t, rel=1e-6)  # the measured view agrees with the moving one
        win.controls.sparsity.setValue(0)
        win.controls.sparsity._slider.sliderReleased.emit()
        settle(win)


# --------------------------------------------------------------------------------- centroid comparison


def test_the_three_inits_are_drawn_with_their_errors(make_window, qtbot):
    win = make_window("digits-cnn")
    name = win.session.current
    win.tabs.setCurrentWidget(win.centroids)
    inits = {"forgy", "density", "linear"}
    qtbot.waitUntil(lambda: set(win.centroids.errors) == inits and name in win.centroids.title.text(),
                    timeout=WORK_TIMEOUT_MS)
    ref = init_comparison(name, module(win, name), win.session.settings(name))
    for init in inits:
        before, after = win.centroids.errors[init]
        assert math.isfinite(before) and math.isfinite(after) and after > 0
        assert after <= before * (1 + 1e-9)  # k-means never makes its initialisation worse
        assert (before, after) == pytest.approx((ref.results[init]["mse_initial"], ref.results[init]["mse_final"]))
        assert init in win.centroids.title.text()
    # histogram + (initial, final) markers per init; CDF likewise (drawn a turn later), with a legend
    # entry per init naming its error
    def legend():
        return [label.text for _, label in win.centroids.cdf.plotItem.legend.items]

    qtbot.waitUntil(lambda: all(any(init in t and "MSE" in t for t in legend()) for init in inits))
    for init in inits:
        h_initial, h_final, c_initial, c_final = win.centroids.markers[init]
        for item, key in ((h_initial, "initial"), (h_final, "final"), (c_initial, "initial"), (c_final, "final")):
            np.testing.assert_allclose(item.getData()[0], ref.results[init][key])
    assert win.centroids.cdf_curve.getData()[0].size > 100

    # another layer on the centroid tab: redrawn for it
    win.table.select_names(["conv2"])
    qtbot.waitUntil(lambda: "conv2" in win.centroids.title.text() and win.idle(), timeout=WORK_TIMEOUT_MS)



def test_stale_mark_text_at_once_bars_grey_only_while_sizes_are_measured(qtbot):
    from explorer.gui.qt_preview import BLUE, GREY, PreviewPanel

    panel = PreviewPanel()
    qtbot.addWidget(panel)
    panel.set_stale(True, "measuring size and MACs…")
    assert "stale" in panel.status.text() and panel._colour == BLUE  # the text at once
    qtbot.waitUntil(lambda: panel._colour == GREY, timeout=2000)  # the bars once it lasts
    panel.set_stale(True, "measuring accuracy…", sizes=False)  # new sizes shown, accuracy pending
    assert "stale" in panel.status.text() and panel._colour == BLUE
    panel.set_stale(True, "measuring size and MACs…")
    panel.set_stale(False)  # measured before the bars were greyed: they never are
    qtbot.wait(150)
    assert panel._colour == BLUE and "measured" in panel.status.text()

# ----------------------------------------------------------------------------------- stale results


def test_stale_results_are_dropped_when_settings_change_twice_quickly(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    name = win.session.current
    shown = []
    win.session.on("results", lambda: shown.append(dict(win.session.results["size"])))

    # a slow job holds the preview channel until released; whatever it returns must never be applied
    release, late_progress, applied = threading.Event(), [], []

    def slow(progress):
        release.wait(30)
        late_progress.append(progress(1.0, "late"))
        return "slow result"

    slow_gen = win.workers.submit("preview", slow, applied.append)
    try:
        win.controls.set_sparsity(30)
        first = win.session.plan
        win.controls.set_sparsity(80)  # back to back: supersedes the first measurement
        second = win.session.plan
    finally:
        release.set()
    assert win.workers._generation["preview"] >= slow_gen + 4  # each submit cancels the one before
    qtbot.waitUntil(lambda: bool(late_progress), timeout=WORK_TIMEOUT_MS)
    settle(win)

    assert late_progress == [False]  # the slow job was told to stop ...
    assert applied == []  # ... and its result never reached the window
    assert win.session.settings(name).prune.amount == pytest.approx(0.8)
    want, stale = expected_sizes(win, second), expected_sizes(win, first)
    assert want != stale
    assert win.session.results["size"] == want
    assert win.preview.values == want
    assert stale not in shown  # the first plan's measurement was never shown, not even briefly


def test_workers_drop_a_result_that_arrives_after_a_newer_submit(qtbot):
    workers = Workers(threads=1)
    got = []
    workers.submit("c", lambda progress: "old", got.append)
    assert workers.pool.waitForDone(5000)  # "old" is done; its result waits in the GUI thread's queue
    workers.submit("c", lambda progress: "new", got.append)
    qtbot.waitUntil(lambda: bool(got), timeout=5000)
    assert got == ["new"]
    assert workers.dropped == 1
    assert not workers.busy("c")
    workers.shutdown()


def test_a_delayed_job_superseded_while_it_waits_never_runs(qtbot):
    """``submit(..., delay=)``: the job waits on a worker before it starts; a newer submit wakes it at once
    and it returns without calling its function (the accuracy job's settle time)."""
    import time

    workers = Workers(threads=2)
    ran, got = [], []
    workers.submit("accuracy", lambda progress: ran.append("old") or "old", got.append, delay=30.0)
    t0 = time.perf_counter()
    workers.submit("accuracy", lambda progress: ran.append("new") or "new", got.append, delay=0.05)
    qtbot.waitUntil(lambda: got == ["new"], timeout=5000)
    assert workers.pool.waitForDone(5000)
    assert time.perf_counter() - t0 < 10  # the first job did not sit out its 30 s
    assert time.perf_counter() - t0 >= 0.05
    assert ran == ["new"]
    with pytest.raises(ValueError, match="no delay"):  # a release's jobs would hold background work back
        workers.submit("preview", lambda progress: None, got.append, delay=0.1)
    workers.shutdown()


def test_workers_deliver_errors_and_swallow_cancellation(qtbot, capsys):
    workers = Workers(threads=2)
    errors, done = [], []

    def bad_plan(progress):
        raise PlanError("layer 'fc1': prune.amount must be a fraction")

    def engine_bug(progress):
        raise ValueError("boom")

    def cancelled(progress):
        raise Cancelled("stop")

    workers.submit("a", bad_plan, done.append, errors.append)
    workers.submit("b", engine_bug, done.append, errors.append)
    workers.submit("c", cancelled, done.append, errors.append)
    qtbot.waitUntil(lambda: len(errors) == 2, timeout=5000)
    assert workers.pool.waitForDone(5000)
    qtbot.waitUntil(lambda: not workers.busy("a") and not workers.busy("b"), timeout=5000)
    assert sorted(errors) == ["ValueError: boom", "layer 'fc1': prune.amount must be a fraction"]
    assert done == []
    workers.shutdown()



def test_background_jobs_wait_at_their_reports_while_a_release_is_answered(qtbot):
    """An accuracy (or any background) job stops at its next progress report while a preview or histogram
    job is pending or running, and goes on once they are done."""
    import time

    workers = Workers(threads=2)
    returned = []  # (call started, call returned) of the background job's progress reports
    stop = threading.Event()

    def background(progress):
        while not stop.is_set():
            t0 = time.perf_counter()
            if progress(0.5, "working") is False:
                return None
            returned.append((t0, time.perf_counter()))
            time.sleep(0.002)
        return "done"

    span = {}

    def interactive(progress):
        span["start"] = time.perf_counter()
        time.sleep(0.3)  # an engine job the GUI is waiting for
        span["end"] = time.perf_counter()
        return "measured"

    got = []
    workers.submit("accuracy", background, got.append)
    qtbot.waitUntil(lambda: len(returned) > 5, timeout=5000)
    submitted = time.perf_counter()
    workers.submit("preview", interactive, got.append)
    qtbot.waitUntil(lambda: "measured" in got, timeout=5000)
    count = len(returned)
    qtbot.waitUntil(lambda: len(returned) > count + 5, timeout=5000)  # it went on afterwards
    stop.set()
    qtbot.waitUntil(lambda: "done" in got, timeout=5000)
    # no report that began after the submit came back before the interactive job had finished
    assert not [r for r in returned if r[0] > submitted + 0.001 and r[1] < span["end"]]
    assert span["end"] - span["start"] >= 0.3
    workers.shutdown()

# -------------------------------------------------------------------------------- bad files


def _truncated_cexp(tmp_path):
    loaded = load_model("digits-mlp")
    res = compress(loaded.model, Plan.load(SAMPLES_DIR / "digits-mlp.plan.json"), loaded.example_input)
    path = tmp_path / "truncated.cexp"
    fileformat.save(res, path, loaded)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def test_corrupt_or_unsupported_files_show_an_error_and_the_window_still_works(make_window, qtbot, tmp_path,
                                                                                 settle):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    weights_only = tmp_path / "weights-only.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), weights_only)
    truncated = _truncated_cexp(tmp_path)

    win = make_window()
    for path in (garbage, truncated, weights_only):
        win.open_model(str(path))
        qtbot.waitUntil(lambda: win.last_error is not None and path.name in win.last_error and win.idle(),
                        timeout=WORK_TIMEOUT_MS)
        assert len(win.last_error) > len(f"Could not open {path}: ")  # says what is wrong, not only where
        assert win.banner.isVisible() and path.name in win.banner.text()
        assert path.name in win.statusBar().currentMessage()
        boxes = message_boxes(win)
        assert boxes and path.name in boxes[-1].text()
        for box in boxes:
            box.close()
        assert win.session.loaded is None
    assert "factory" in win.last_error  # a state_dict alone: the message says what is missing

    # the window still works: a sample opens, measures and responds to the controls
    win.open_model("digits-mlp")
    qtbot.waitUntil(lambda: win.session.loaded is not None and win.session.results is not None and win.idle(),
                    timeout=WORK_TIMEOUT_MS)
    assert not win.banner.isVisible()
    win.controls.set_sparsity(60)
    settle(win)
    assert win.preview.values == expected_sizes(win)

    # a bad file while a model is open: an error, and the open model stays usable
    win.open_model(str(garbage))
    qtbot.waitUntil(lambda: win.idle() and win.banner.isVisible(), timeout=WORK_TIMEOUT_MS)
    for box in message_boxes(win):
        box.close()
    assert win.session.loaded.source == "digits-mlp"
    win.controls.set_sparsity(20)
    settle(win)
    assert win.preview.values == expected_sizes(win)


# ------------------------------------------------------------------------------------------ export


def test_export_writes_a_file_that_load_reads_back(make_window, qtbot, tmp_path, settle):
    win = make_window("digits-cnn")
    win.load_plan(str(SAMPLES_DIR / "digits-cnn.plan.json"))
    settle(win)
    assert win.preview.values == expected_sizes(win)

    path = tmp_path / "exported.cexp"
    written = []
    win.exports.export(str(path), on_done=written.append)
    qtbot.waitUntil(lambda: bool(written), timeout=WORK_TIMEOUT_MS)
    assert written[0] == os.path.getsize(path) > 0
    assert written[0] == win.session.results["size"]["file"]  # the preview predicted the bytes written
    assert f"{written[0]:,} bytes" in win.statusBar().currentMessage()
    dialog = win.exports.dialog  # the progress dialog ends with the size written, and its button closes it
    assert f"{written[0]:,} bytes" in dialog.labelText() and dialog.value() == 100 and dialog.isVisible()
    dense = win.session.results["size"]["dense"]
    assert f"{dense / written[0]:.1f}× smaller" in dialog.labelText()
    assert button(dialog).text() == "Close"
    button(dialog).click()
    assert not dialog.isVisible() and os.path.getsize(path) == written[0]

    model = fileformat.load(path)
    x = win.session.loaded.eval_data.inputs[:128]
    with torch.no_grad():
        torch.testing.assert_close(model(x), win.session.compressed_model(x), rtol=1e-5, atol=1e-5)
        direct = compress(win.session.loaded.model, win.session.plan, win.session.loaded.example_input).model
        torch.testing.assert_close(model(x), direct(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ undo, redo, plans


def test_undo_and_redo_through_the_edit_actions(make_window, qtbot, settle):
    win = make_window("digits-mlp")
    name = win.session.current
    undo, redo = win.menus.undo_action, win.menus.redo_action
    assert not undo.isEnabled() and not redo.isEnabled()
    win.controls.set_sparsity(50)
    win.controls.set_sparsity(80)
    assert undo.isEnabled() and not redo.isEnabled()

    undo.trigger()
    assert win.session.settings(name).prune.amount == pytest.approx(0.5)
    assert win.controls.sparsity.value() == 50 and redo.isEnabled()
    undo.trigger()
    assert win.session.settings(name).is_empty and not undo.isEnabled()
    assert win.controls.sparsity.value() == 0
    settle(win)
    assert win.preview.values["pruned"] == win.preview.values["dense"]

    redo.trigger()
    redo.trigger()
    assert win.session.settings(name).prune.amount == pytest.approx(0.8) and not redo.isEnabled()
    undo.trigger()
    win.controls.set_sparsity(10)  # a new change after undo: nothing left to redo
    assert not redo.isEnabled()
    settle(win)
    assert win.preview.values == expected_sizes(win)
    assert "prune 10%" in cell(win, name, SETTINGS)


def test_plan_save_and_load_round_trip(make_window, qtbot, settle, tmp_path, monkeypatch):
    win = make_window("digits-cnn")
    win.controls.quant_on.setChecked(True)
    win.controls.bits.setValue(4)
    win.controls.bits._slider.sliderReleased.emit()
    win.controls.set_sparsity(65)
    saved = win.session.plan.to_dict()
    path = tmp_path / "plan.json"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path), "")))
    win.save_plan_dialog()
    assert Plan.load(path).to_dict() == saved

    win.session.set_plan(Plan())
    assert win.session.plan.to_dict() != saved
    win.load_plan(str(path))
    assert win.session.plan.to_dict() == saved
    assert win.controls.bits.value() == 4 and win.controls.sparsity.value() == 65
    settle(win)
    assert win.preview.values == expected_sizes(win)

    # a plan naming a layer this model does not have: an error, the plan unchanged
    bad = tmp_path / "other.json"
    bad.write_text('{"layers": {"features.0": {"prune": {"amount": 0.5}}}}')
    win.load_plan(str(bad))
    assert "features.0" in win.last_error
    assert win.session.plan.to_dict() == saved
    for box in message_boxes(win):
        box.close()


# ------------------------------------------------------------------------------------- screenshot


def test_gui_screenshot_command_writes_a_png(tmp_path):
    out = tmp_path / "window.png"
    script = os.path.join(os.path.dirname(sys.executable), "compression-explorer")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "explorer"]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(cmd + ["gui", "digits-cnn", "--screenshot", str(out)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = QImage(str(out))
    assert image.width() >= 800 and image.height() >= 500


def test_plots_keep_room_for_seven_digit_labels_and_items_have_no_range_limit(qtbot):
    """qt_plot sets the left axis' text room through pyqtgraph's own resize call (no public one exists for
    an auto-expanding axis): a pyqtgraph release that changes it must fail here, not move the plots."""
    from PySide6.QtGui import QFontMetrics

    from explorer.gui.qt_plot import LABEL_ROOM, curve, data_item, plot_widget

    plot = plot_widget()
    qtbot.addWidget(plot)
    left = plot.getAxis("left")
    room = QFontMetrics(left.font()).horizontalAdvance(LABEL_ROOM)
    assert left.minimumWidth() >= room
    assert left.style["autoReduceTextSpace"] is False
    assert curve(plot, [0, 1], [2, 3]).opts["dynamicRangeLimit"] is None
    assert data_item([0, 1], [2, 3]).opts["dynamicRangeLimit"] is None


def test_eval_data_from_a_factory_is_what_the_accuracy_is_measured_on(make_window, qtbot, settle, monkeypatch):
    """File -> Eval data from a factory: the data the factory returns replaces the sample's, and the
    accuracy shown is measured on it (the same number the engine gives on those 100 images)."""
    from explorer.engine.measure.evaluate import quality

    win = make_window("digits-mlp")
    assert "360" in win.session.accuracy["data"]  # the sample's own test split
    monkeypatch.setattr("explorer.gui.main_window.QInputDialog.getText",
                        lambda *a, **k: ("zoo:digits_eval_tuple", True))
    win.open_data_factory_dialog()
    qtbot.waitUntil(lambda: win.session.accuracy is not None
                    and win.session.accuracy["data"] == "zoo:digits_eval_tuple (100)" and win.idle(),
                    timeout=WORK_TIMEOUT_MS)
    settle(win)
    want = quality(win.session.loaded, win.session.compressed_model)
    assert win.session.accuracy["samples"] == 100
    assert win.session.accuracy["before"] == pytest.approx(want["before"])
    assert win.session.accuracy["after"] == pytest.approx(want["after"])
    assert "zoo:digits_eval_tuple (100)" in win.preview.acc.text()

    # a factory that fails: one message naming it, the data already loaded stays
    monkeypatch.setattr("explorer.gui.main_window.QInputDialog.getText", lambda *a, **k: ("zoo:eval_raises", True))
    win.open_data_factory_dialog()
    qtbot.waitUntil(lambda: win.last_error is not None and "zoo:eval_raises" in win.last_error and win.idle(),
                    timeout=WORK_TIMEOUT_MS)
    assert "no data here" in win.last_error
    for box in message_boxes(win):
        box.close()
    assert win.session.loaded.eval_data.name == "zoo:digits_eval_tuple (100)"


def test_the_layer_table_shows_every_column_without_scrolling(make_window, qtbot):
    """The window gives the table the width its columns need (sizes and ratio in view at the default size)."""
    win = make_window("digits-cnn")
    qtbot.waitUntil(lambda: win.table.viewport().width() > 0)
    table, header = win.table, win.table.horizontalHeader()
    # what each column's contents need (the last one stretches to the viewport, so its width says nothing)
    need = sum(max(table.sizeHintForColumn(c), header.sectionSizeHint(c)) for c in range(table.model().columnCount()))
    assert need <= table.viewport().width()
    assert table.horizontalScrollBar().maximum() == 0
    assert win._split.sizes()[1] >= 0.45 * sum(win._split.sizes())  # the plots keep most of their room



def test_cancelling_an_export_writes_nothing_and_the_window_goes_on(make_window, qtbot, tmp_path, settle,
                                                                     monkeypatch):
    from explorer.engine.errors import Cancelled
    from explorer.engine.progress import report

    win = make_window("digits-mlp")
    started, stopped = threading.Event(), []
    real_save = fileformat.save

    def slow_save(res, path, loaded=None, half=False, progress=None):
        started.set()
        try:
            for _ in range(500):  # reports until cancelled (at most 5 s), then writes as usual
                report(progress, 0.0, "encoding")
                threading.Event().wait(0.01)
        except Cancelled:
            stopped.append(True)
            raise
        return real_save(res, path, loaded, half=half, progress=progress)

    monkeypatch.setattr(fileformat, "save", slow_save)
    path = tmp_path / "cancelled.cexp"
    done = []
    win.exports.export(str(path), on_done=done.append)
    qtbot.waitUntil(started.is_set, timeout=WORK_TIMEOUT_MS)
    win.exports.export(str(tmp_path / "second.cexp"))  # one export at a time
    assert "An export is running" in win.last_error
    assert button(win.exports.dialog).text() == "Cancel"
    button(win.exports.dialog).click()
    qtbot.waitUntil(lambda: bool(stopped) and win.idle(), timeout=WORK_TIMEOUT_MS)
    assert win.workers.pool.waitForDone(WORK_TIMEOUT_MS)
    assert not path.exists() and done == [] and not (tmp_path / "second.cexp").exists()
    assert "cancelled; nothing was written" in win.statusBar().currentMessage()
    assert not win.exports.dialog.isVisible()
    # the window goes on: a slider release is measured, and a new export writes its file
    monkeypatch.setattr(fileformat, "save", real_save)
    win.controls.set_sparsity(40)
    settle(win)
    assert win.preview.values == expected_sizes(win)
    win.exports.export(str(path), on_done=done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=WORK_TIMEOUT_MS)
    assert done[0] == os.path.getsize(path)


def test_a_cancel_too_late_to_stop_the_export_says_what_was_written(make_window, qtbot, tmp_path, monkeypatch):
    """Past its last report the job writes the file anyway: the dialog then says so, not "cancelled"."""
    win = make_window("digits-mlp")
    writing, clicked, real_save = threading.Event(), threading.Event(), fileformat.save

    def late_save(res, path, loaded=None, half=False, progress=None):
        writing.set()
        clicked.wait(10)  # the user clicks Cancel now ...
        return real_save(res, path, loaded, half=half)  # ... but there is no report left to stop at

    monkeypatch.setattr(fileformat, "save", late_save)
    path = tmp_path / "late.cexp"
    done = []
    win.exports.export(str(path), on_done=done.append)
    qtbot.waitUntil(writing.is_set, timeout=WORK_TIMEOUT_MS)
    button(win.exports.dialog).click()
    assert "cancelling" in win.statusBar().currentMessage()
    clicked.set()
    qtbot.waitUntil(lambda: bool(done), timeout=WORK_TIMEOUT_MS)
    assert done[0] == os.path.getsize(path)
    dialog = win.exports.dialog
    assert dialog.isVisible() and f"{done[0]:,} bytes" in dialog.labelText()
    assert "Wrote" in win.statusBar().currentMessage()


def test_a_standard_export_goes_through_the_progress_dialog(make_window, qtbot, tmp_path):
    from safetensors.torch import load_file

    win = make_window("digits-mlp")
    path = tmp_path / "dense.safetensors"
    out = []
    win.exports.export_standard(str(path), on_done=out.append)
    qtbot.waitUntil(lambda: bool(out), timeout=WORK_TIMEOUT_MS)
    assert out[0]["bytes"] == os.path.getsize(path)
    assert f"{out[0]['bytes']:,} bytes" in win.exports.dialog.labelText()
    assert set(load_file(str(path))) == set(win.session.loaded.model.state_dict())

    # the menu's format, whatever the file is called
    scripted = tmp_path / "scripted.pth"
    win.exports.export_standard(str(scripted), fmt="torchscript", on_done=out.append)
    qtbot.waitUntil(lambda: len(out) == 2, timeout=WORK_TIMEOUT_MS)
    assert isinstance(torch.jit.load(str(scripted)), torch.jit.ScriptModule)


def test_a_stopped_job_stays_current_and_says_it_stopped(qtbot):
    """Workers.stop (a user's Stop or Cancel): the job ends at its next report and its handler gets None;
    one past its last report delivers its result; cancel() still drops everything."""
    import time

    workers = Workers(threads=2)
    got = []

    def reporting(progress):
        for _ in range(1000):
            if progress(0.1, "working") is False:
                from explorer.engine.errors import Cancelled

                raise Cancelled("stopped")
            time.sleep(0.005)
        return "ran out"

    workers.submit("export", reporting, got.append)
    workers.stop("export")
    qtbot.waitUntil(lambda: got == [None], timeout=5000)
    assert not workers.busy("export")

    finishing = threading.Event()
    workers.submit("export", lambda progress: finishing.wait(5) and "written", got.append)
    workers.stop("export")  # no report left to stop at
    finishing.set()
    qtbot.waitUntil(lambda: got == [None, "written"], timeout=5000)
    workers.shutdown()


def test_the_latency_line_shows_what_the_engine_timed(make_window, qtbot, settle, monkeypatch):
    """After the accuracy, the plan's model is timed dense and under the compressed runtime in the
    background; the line quotes those numbers. With every form measured faster, the layers are replaced."""
    from explorer.engine import runtime
    from explorer.engine.runtime import CompressedLinear

    monkeypatch.setattr(runtime, "_time", lambda module, x: 0.1 if isinstance(module, CompressedLinear) else 1.0)
    win = make_window("digits-mlp")
    win.load_plan(str(SAMPLES_DIR / "digits-mlp.plan.json"))
    qtbot.waitUntil(lambda: win.preview.last_latency is not None and win.preview.last_latency["layers"]
                    and win.idle(), timeout=WORK_TIMEOUT_MS)
    settle(win)
    lat = win.preview.last_latency
    assert lat["batch"] == 1 and lat["layers"] == 3 and lat["replaced"] >= 1
    assert lat["resident_compressed"] < lat["resident_dense"]
    text = win.preview.latency.text()
    assert f"{lat['original_ms']:.3f} ms original → {lat['dense_ms']:.3f} ms compressed, dense layers" in text
    assert f"{lat['compressed_ms']:.3f} ms compressed runtime" in text
    from explorer.engine.measure.metrics import resident_bytes
    assert lat["resident_original"] == resident_bytes(win.session.loaded.model) >= lat["resident_dense"]
    assert f"{lat['replaced']} of 3 layers on their stored form" in text

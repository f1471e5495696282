"""Plan → Auto… and the Compare tab (issue 15), driven offscreen with pytest-qt; every wait is a
``qtbot.waitUntil`` on state the window exposes.

What the issue asks: the search runs in the background with progress and fills the plan as one undo step,
saying what it chose; every plan measured is kept once, with the bytes and accuracy the preview measured;
the Compare tab draws them with the Pareto front and the current plan, two of them side by side; clicking a
point restores its plan (undoable); a search's result for a model no longer open is dropped.
"""

import math
import threading

import pytest
from PySide6.QtCore import QPointF, Qt

from explorer.engine.measure.compare import pareto_front
from explorer.engine.plan import Plan
from explorer.engine.samples import SAMPLES_DIR
from explorer.engine.sensitivity.auto import AutoResult
from explorer.gui import qt_auto
from explorer.gui.qt_layer_table import COLUMNS

RUN_TIMEOUT_MS = 60_000
SETTINGS = COLUMNS.index("settings")


def cell(win, name, column):
    model = win.table.model_
    return model.data(model.index(win.session.layer_names.index(name), column), Qt.DisplayRole)


def test_auto_fills_the_plan_as_one_undo_step_and_says_what_it_chose(make_window, qtbot, settle):
    win = make_window("digits-mlp")
    win.load_plan(str(SAMPLES_DIR / "digits-mlp.plan.json"))
    settle(win)
    before = win.session.plan
    win.menus.auto_action.trigger()
    d = win.auto.dialog
    assert d.isVisible() and not d.isModal()
    d.form.ratio.setValue(8.0)
    d.form.limit.setValue(100)
    d.search_button.click()
    assert win.auto.running and d.cancel_button.isEnabled() and not d.search_button.isEnabled()
    qtbot.waitUntil(lambda: d.progress.value() > 0, timeout=RUN_TIMEOUT_MS)  # progress reaches the GUI thread
    qtbot.waitUntil(lambda: win.auto.result is not None, timeout=RUN_TIMEOUT_MS)
    r = win.auto.result
    assert win.session.plan.to_dict() == r.plan.to_dict() and r.file_bytes <= r.target_bytes
    assert r.dense_bytes // r.target_bytes == 8
    assert "Chose" in d.status.text() and f"{r.file_bytes:,} bytes" in d.status.text()
    assert f"{r.accuracy_after:.2%}" in d.status.text() and "Undo" in d.status.text()
    assert d.choices.rowCount() == len(r.choices) and not win.auto.running
    settle(win)
    for name, (_, bits, _, _) in r.choices.items():  # the layer table shows the plan
        assert f"{bits}b kmeans" in cell(win, name, SETTINGS)
    point = win.session.measured.get(win.session.current_key)  # the preview measured it: an "auto" point
    assert point.origin == "auto" and point.file_bytes == r.file_bytes == win.session.results["size"]["file"]
    assert point.quality == win.session.accuracy["after"]
    assert f"{point.quality:.2%}" in d.measured.text()
    win.menus.undo_action.trigger()  # one step back: the plan before the search
    assert win.session.plan is before


def test_each_measured_plan_is_kept_once_and_the_compare_tab_draws_and_restores_them(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    s = win.session
    settle(win)
    measured = [(s.results["size"]["file"], s.accuracy["after"])]  # no compression
    win.load_plan(str(SAMPLES_DIR / "digits-cnn.plan.json"))
    settle(win)
    measured.append((s.results["size"]["file"], s.accuracy["after"]))
    s.update_layers(["fc1"], {"quantize": {"bits": 3}})
    settle(win)
    measured.append((s.results["size"]["file"], s.accuracy["after"]))
    s.undo()  # the sample plan, measured again: still one point
    settle(win)
    pts = s.measured.points
    assert [(p.file_bytes, p.quality) for p in pts] == measured
    assert [p.origin for p in pts] == ["hand"] * 3 and pts[0].label == "no compression"
    assert pts[1].layer_bytes["fc1"] == next((l["bits"]["coded"] + 7) // 8 for l in s.results["layers"]
                                             if l["name"] == "fc1")

    view = win.compare
    win.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: not view._dirty)
    xs, ys = view.scatter["hand"].getData()  # x in log10 (the axis is logarithmic)
    got, want = sorted(zip((10 ** x for x in xs), ys)), sorted((b, 100 * q) for b, q in measured)
    assert [v for p in got for v in p] == pytest.approx([v for p in want for v in p])
    front = pareto_front(measured)
    fx, fy = view.front.getData()
    assert 10 ** fx[0] == pytest.approx(front[0][0]) and fy[-1] == pytest.approx(100 * front[-1][1])
    rx, _ = view.ring.getData()
    assert 10 ** rx[0] == pytest.approx(pts[1].file_bytes)  # the current plan
    assert view.combos["A"].currentData() == pts[1].key and view.combos["B"].currentData() == pts[2].key
    total = view.table.rowCount() - 2
    assert view.table.item(total, 4).text() == f"{pts[1].file_bytes:,}"
    assert view.table.item(total + 1, 8).text() == f"{100 * pts[2].quality:.2f}%"
    assert view.table.item(s.layer_names.index("fc1"), 2).text() == "5b kmeans/linear"
    assert view.table.item(s.layer_names.index("fc1"), 6).text() == "3b kmeans/linear"

    # a click on the first point (no compression) restores its plan; undo goes back
    view.plot.grab()  # laid out and ranged, as on screen
    vb = view.plot.getPlotItem().getViewBox()
    scene = vb.mapViewToScene(QPointF(math.log10(pts[0].file_bytes), 100 * pts[0].quality))
    pos = view.plot.mapFromScene(scene)
    qtbot.mouseClick(view.plot.viewport(), Qt.LeftButton, pos=pos)
    qtbot.waitUntil(lambda: s.plan.to_dict() == Plan().to_dict())
    assert "#1 no compression is the current plan" in win.statusBar().currentMessage()
    settle(win)
    assert len(s.measured) == 3 and s.current_key == pts[0].key
    s.undo()
    assert s.plan.to_dict() == pts[1].plan.to_dict()


def test_a_search_whose_model_was_replaced_meanwhile_is_dropped(make_window, qtbot, settle, monkeypatch):
    win = make_window("digits-mlp")
    release, started = threading.Event(), threading.Event()
    other = Plan.from_dict({"default": {"quantize": {"bits": 2, "method": "kmeans"}}})

    def slow_search(loaded, progress=None, **target):
        started.set()
        release.wait(30)
        return AutoResult(other, 1000, 900, 10_000, 0.0, 0.9, 0.9, True)

    monkeypatch.setattr(qt_auto, "auto_plan", slow_search)
    win.auto.start(target_ratio=10.0, limit=100)
    qtbot.waitUntil(started.is_set)
    old = win.session.loaded
    win.open_model("digits-cnn")
    qtbot.waitUntil(lambda: win.session.loaded is not old and win.session.results is not None)
    assert not win.auto.running  # the new model's event cancelled the search: what it returns is dropped
    release.set()
    qtbot.waitUntil(lambda: win.workers.training.activeThreadCount() == 0, timeout=RUN_TIMEOUT_MS)
    settle(win)
    assert win.session.plan.to_dict() == Plan().to_dict() and win.auto.result is None
    assert "Another model was opened: its search was stopped" in win.auto.dialog.status.text()


def test_the_auto_form_gives_every_kind_of_target(make_window, settle):
    win = make_window("digits-mlp")
    settle(win)
    win.menus.auto_action.trigger()
    form = win.auto.dialog.form
    macs = win.session.results["macs"]["before"]
    assert form.by_macs.isEnabled() and form.macs.maximum() == macs
    form.by_macs.setChecked(True)
    form.macs.setValue(30_000)
    assert form.target() == {"limit": form.limit.value(), "max_drop": None, "target_macs": 30_000}
    form.limit_drop.setChecked(False)
    form.by_drop.setChecked(True)  # the drop alone: the drop must be given, and is
    assert form.limit_drop.isChecked() and not form.limit_drop.isEnabled()
    assert form.target() == {"limit": form.limit.value(), "max_drop": form.drop.value()}
    form.set_model(1000, 500, 100, None)  # a model without MACs: no MACs target
    assert not form.by_macs.isEnabled()

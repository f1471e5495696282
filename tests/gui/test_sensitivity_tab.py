"""The window's Sensitivity tab (issue 15): the scan runs on a worker, one curve per layer and kind; a click
on a point is a plan edit that Undo takes back; a new model drops the old model's scan; Cancel leaves the
tab usable. Small scans (50 samples) keep these fast; every wait is a ``qtbot.waitUntil``."""

import threading

import pytest

import explorer.gui.qt_sensitivity as qt_sensitivity
from explorer.engine.sensitivity import scan
from explorer.gui.qt_sensitivity import CHANNEL

LIMIT = 50
KINDS = ("sparsity", "bits")  # the third, rank, is drawn the same way: left out to keep the tests short


def show_tab(win):
    win.sensitivity.kinds = KINDS
    win.sensitivity.view.limit.setValue(LIMIT)
    win.tabs.setCurrentWidget(win.sensitivity.view)


def spot_of(view, layer, kind, value):
    """The accuracy plot's drawn spot of a point (what a click on it hands to the view)."""
    view.kind.setCurrentText(kind)
    view.redraw()
    items = view.items[view.acc_plot]
    for dots in (items["other_dots"], items["chosen_dots"]):
        for s in dots.points():
            if s.data().layer == layer and s.data().value == value:
                return dots, s
    raise AssertionError(f"no drawn point of {layer} at {kind} {value}")


@pytest.fixture
def held(monkeypatch):
    """The tab's scan function, recording the thread of each call and held at ``held.gate`` while it is
    cleared (set by default)."""
    calls = []
    gate = threading.Event()
    gate.set()
    real = qt_sensitivity.sensitivity

    def wrapped(loaded, base, **kwargs):
        calls.append((loaded.source, threading.current_thread()))
        gate.wait(10)
        return real(loaded, base, **kwargs)

    monkeypatch.setattr(qt_sensitivity, "sensitivity", wrapped)
    wrapped.calls, wrapped.gate = calls, gate
    return wrapped


def test_the_tab_scans_in_the_background_one_curve_per_layer(make_window, qtbot, settle, held):
    scan.CACHE.clear()
    win = make_window("digits-cnn")
    view = win.sensitivity.view
    show_tab(win)
    assert win.workers.busy(CHANNEL)  # started, and the GUI thread is free
    settle(win)
    assert held.calls and all(t is not threading.main_thread() for _, t in held.calls)
    grid = {"sparsity": scan.SPARSITIES, "bits": scan.BITS}
    for kind, values in grid.items():
        for name in win.session.layer_names:  # every point of every layer, measured (or said impossible)
            assert sorted(p.value for p in view.points.values() if p.layer == name and p.kind == kind) == \
                sorted(values)
            assert view.curve_of(name, kind)
    qtbot.waitUntil(lambda: not view._redraw.isActive())
    items = view.items[view.acc_plot]
    selected = win.session.current
    assert len(items["chosen"].getData()[0]) == len(scan.SPARSITIES)  # the selected layer's curve, in colour
    others = items["others"].getData()[0]
    assert sum(1 for x in others if x != x) == len(win.session.layer_names) - 1  # one grey curve per other layer
    assert {t.textItem.toPlainText() for t, _ in view.labels.values() if t.isVisible()} == set(win.session.layer_names)
    assert items["line"].isVisible() and items["line"].value() == pytest.approx(
        100 * win.session.settings(selected).prune.amount if win.session.settings(selected).prune else 0.0)
    # the second time the engine's cache answers: no point is measured again
    n = len(scan.CACHE)
    win.tabs.setCurrentWidget(win.layer_view)
    win.sensitivity.compute()
    settle(win)
    assert len(scan.CACHE) == n  # (points whose settings are the same, e.g. 0% sparsity and 100% kept, share one)


def test_a_click_on_a_point_sets_that_layer_and_undo_restores_it(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    show_tab(win)
    settle(win)
    view, session = win.sensitivity.view, win.session
    before = session.settings("conv2")
    dots, spot = spot_of(view, "conv2", "bits", 3.0)
    dots.sigClicked.emit(dots, [spot], None)  # what a click on the spot emits
    assert session.settings("conv2").quantize.bits == 3
    assert session.current == "conv2" and win.table.selected_names() == ["conv2"]
    assert view.marks["conv2"]["bits"] == 3.0  # the current setting's mark moved to the point
    assert session.settings("fc1").prune is None  # the other layers untouched
    assert win.workers.busy(CHANNEL)  # the plan changed while the tab is shown: the curves are measured on it
    dots, spot = spot_of(view, "fc1", "sparsity", 0.9)
    win.sensitivity.view._clicked(dots, [spot])
    assert session.settings("fc1").prune.amount == 0.9 and session.settings("conv2").quantize.bits == 3
    win.menus.undo_action.trigger()
    assert session.settings("fc1").prune is None
    win.menus.undo_action.trigger()
    assert session.settings("conv2") == before
    assert view.marks["conv2"]["bits"] is None  # not quantized again: no mark on the bits axis
    settle(win)  # back to the first plan: its points are cached
    assert win.sensitivity.measured_for == win.sensitivity.wanted()


def test_a_new_model_drops_the_old_models_scan(make_window, qtbot, settle, held):
    win = make_window("digits-cnn")
    view = win.sensitivity.view
    added = []
    real_add = view.add_points
    view.add_points = lambda pts: (added.append((win.session.loaded.source, pts)), real_add(pts))
    held.gate.clear()  # the first piece of digits-cnn's scan is under way and held there
    show_tab(win)
    qtbot.waitUntil(lambda: len(held.calls) == 1)
    win.open_model("digits-mlp")
    qtbot.waitUntil(lambda: win.session.loaded.source == "digits-mlp")
    assert not view.points  # the old model's curves are gone at once
    held.gate.set()  # the old piece finishes now: its result must not be drawn
    settle(win)
    mlp = set(win.session.layer_names)
    assert {p.layer for p in view.points.values()} == mlp
    assert all(src == "digits-mlp" and {p.layer for p in pts} <= mlp for src, pts in added)
    assert any(src == "digits-cnn" for src, _ in held.calls)


def test_cancel_leaves_the_tab_usable(make_window, qtbot, settle, held):
    win = make_window("digits-cnn")
    view = win.sensitivity.view
    held.gate.clear()
    show_tab(win)
    qtbot.waitUntil(lambda: len(held.calls) == 1)
    assert view.cancel.isEnabled()
    view.cancel.click()
    assert not win.workers.busy(CHANNEL) and not view.cancel.isEnabled() and "cancelled" in view.status.text()
    held.gate.set()
    settle(win)
    assert not view.points
    win.tabs.setCurrentWidget(win.layer_view)
    win.tabs.setCurrentWidget(view)  # a cancelled scan is not restarted by itself...
    assert not win.workers.busy(CHANNEL)
    view.compute.click()  # ... Compute starts it again, and it completes
    settle(win)
    assert len(view.points) == len(win.session.layer_names) * (len(scan.SPARSITIES) + len(scan.BITS))

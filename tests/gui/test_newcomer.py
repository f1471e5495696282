"""What a newcomer meets (issue 17): a background job's failure in the banner, naming the layer and the cause;
messages that go with their cause; settings a layer cannot take not offered; an empty window that invites;
a Help menu."""

import pytest

from explorer.engine.plan import Plan

TIMEOUT_MS = 30_000


def _select(win, qtbot, *names):
    win.table.select_names(list(names))
    qtbot.waitUntil(lambda: win.session.selection == list(names), timeout=10_000)


# -- 1. failures nobody saw
def test_a_failing_background_job_is_one_banner_line_naming_the_layer_and_goes_to_the_log(make_window, qtbot,
                                                                                         settle, log_path,
                                                                                         monkeypatch):
    win = make_window("digits-cnn")
    settle(win)

    def broken(name, settings, progress=None, **kwargs):
        raise ValueError("too few weights for 256 clusters")

    monkeypatch.setattr(win.session.previewer, "prepare", broken)  # the job measuring a layer ahead
    _select(win, qtbot, "conv2")
    qtbot.waitUntil(lambda: win.banner.isVisible(), timeout=TIMEOUT_MS)
    text = win.banner.text()
    assert text.startswith("conv2: ") and "ValueError: too few weights for 256 clusters" in text
    assert "\n" not in text
    logged = log_path.read_text()
    assert "Traceback (most recent call last)" in logged and "in broken" in logged


def test_a_failing_histogram_job_names_its_layer(make_window, qtbot, settle, monkeypatch):
    win = make_window("digits-mlp")
    settle(win)

    def broken(name, settings, progress=None):
        raise RuntimeError("no bins")

    monkeypatch.setattr(win.session.previewer, "layer", broken)
    _select(win, qtbot, "fc2")
    qtbot.waitUntil(lambda: win.banner.isVisible(), timeout=TIMEOUT_MS)
    assert win.banner.text().startswith("fc2: histogram failed: RuntimeError: no bins")


# -- 2. messages that outlive their cause
def test_undo_of_the_setting_that_failed_takes_its_banner_away(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    settle(win)
    # a plan (as a file may hold) removing filters of the model's output layer: its measurement fails
    win.session.set_plan(Plan.from_dict({"layers": {"fc2": {"prune": {"amount": 0.5, "granularity": "filter"}}}}))
    qtbot.waitUntil(lambda: win.banner.isVisible(), timeout=TIMEOUT_MS)
    assert "fc2" in win.banner.text()
    settle(win)
    names = [layer.name for layer in win.session.info.layers]
    size = lambda name: win.table.model_.item(names.index(name), 6).text()  # noqa: E731
    assert size("fc2") == "…"  # not the earlier plan's numbers for a setting that was not measured
    assert "→" in size("conv1")  # a layer set as before keeps its numbers
    win.menus.undo_action.trigger()
    assert not win.banner.isVisible()
    settle(win)
    assert not win.banner.isVisible()  # the plan undone to measures without an error
    win.menus.redo_action.trigger()  # the cause is back: so is its message, once measured again
    qtbot.waitUntil(lambda: win.banner.isVisible(), timeout=TIMEOUT_MS)


def _drag(win, qtbot, percent):
    slider = win.controls.sparsity._slider
    slider.setSliderDown(True)
    slider.setValue(percent)
    qtbot.waitUntil(lambda: "released" in win.statusBar().currentMessage(), timeout=10_000)


def test_the_release_hint_goes_after_the_release_and_with_another_layer(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    _select(win, qtbot, "conv2")
    settle(win)
    qtbot.waitUntil(lambda: win.session.sorted_magnitudes() is not None, timeout=TIMEOUT_MS)
    _drag(win, qtbot, 40)
    assert "conv2" in win.statusBar().currentMessage()
    win.controls.sparsity._slider.setSliderDown(False)  # the release
    assert "released" not in win.statusBar().currentMessage()
    settle(win)

    _drag(win, qtbot, 60)
    win.table.select_names(["fc1"])  # another layer while the hint stands
    qtbot.waitUntil(lambda: win.session.current == "fc1", timeout=10_000)
    assert "released" not in win.statusBar().currentMessage()
    win.controls.sparsity._slider.setSliderDown(False)


# -- 3. settings that cannot work are not offered
def _item(box, text):
    return box.model().item(box.findText(text))


def test_filter_pruning_of_the_output_layer_is_not_offered_and_the_session_refuses_it(make_window, qtbot):
    from explorer.engine.errors import PlanError

    win = make_window("digits-cnn")
    box = win.controls.granularity
    _select(win, qtbot, "conv2")
    assert _item(box, "filter").isEnabled()
    _select(win, qtbot, "fc2")
    assert not _item(box, "filter").isEnabled()
    assert "output" in _item(box, "filter").toolTip() and "fc2" in box.toolTip()
    _select(win, qtbot, "conv2", "fc2")  # several layers: only what applies to all of them
    assert not _item(box, "filter").isEnabled() and _item(box, "element").isEnabled()
    before = win.session.plan.to_dict()
    with pytest.raises(PlanError, match="fc2: its filters cannot be removed"):
        win.session.update_layers(["conv2", "fc2"], {"prune": {"amount": 0.5, "granularity": "filter"}})
    assert win.session.plan.to_dict() == before
    win.session.update_layers(["conv2"], {"prune": {"amount": 0.5, "granularity": "filter"}})  # it can
    assert win.session.settings("conv2").prune.granularity == "filter"


def test_low_rank_is_not_offered_where_the_engine_cannot_factorise(make_window, qtbot):
    from explorer.engine.errors import PlanError

    win = make_window("zoo:lstm_example")
    refused = next(layer for layer in win.session.info.layers if layer.lowrank_reason)
    allowed = next(layer for layer in win.session.info.layers if not layer.lowrank_reason)
    _select(win, qtbot, allowed.name)
    assert win.controls.rank_on.isEnabled()
    _select(win, qtbot, refused.name)
    assert not win.controls.rank_on.isEnabled()
    assert refused.lowrank_reason in win.controls.rank_on.toolTip()
    with pytest.raises(PlanError, match="cannot be factorised"):
        win.session.update_layers([refused.name], {"lowrank": {"rank": 0.5}})
    assert win.session.settings(refused.name).lowrank is None

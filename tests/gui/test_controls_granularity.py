"""The granularity box greys out what the selected layer cannot take, saying why (the window's soak made
1,362 refusals of 'conv1: cannot remove input channels' in 10,000 changes: a choice offered, then refused)."""

from PySide6.QtCore import Qt


def test_a_granularity_the_layer_refuses_is_greyed_with_the_reason(make_window, qtbot):
    win = make_window("digits-cnn")
    box = win.controls.granularity
    win.table.select_names(["conv1"])
    qtbot.waitUntil(lambda: win.session.current == "conv1", timeout=10_000)
    items = {box.itemText(i): box.model().item(i) for i in range(box.count())}
    assert items["element"].isEnabled()
    assert not items["channel"].isEnabled() and "model input" in items["channel"].toolTip()
    assert box.itemData(box.findText("channel"), Qt.ToolTipRole) == items["channel"].toolTip()
    win.table.select_names(["conv2"])  # its input channels can go (conv1's filters with them)
    qtbot.waitUntil(lambda: win.session.current == "conv2", timeout=10_000)
    assert box.model().item(box.findText("channel")).isEnabled()
    win.table.select_names(["fc2"])  # the model's output: no filters to remove
    qtbot.waitUntil(lambda: win.session.current == "fc2", timeout=10_000)
    assert not box.model().item(box.findText("filter")).isEnabled()


def test_a_coupled_groups_layers_say_so_and_its_filters_go_together(make_window, qtbot):
    """A residual add joins the stem's and layer1.conv2's output channels: the layer table says so, and a
    filter request on one removes the same channels from both (and from every reader)."""

    win = make_window("zoo:resnet_model")
    model = win.table.model().sourceModel() if hasattr(win.table.model(), "sourceModel") else win.table.model()
    rows = {model.item(r, 0).text(): model.item(r, 0) for r in range(model.rowCount())}
    assert "removes the same channels from layer1.conv2" in rows["stem"].toolTip()
    assert "removes the same channels from stem" in rows["layer1.conv2"].toolTip()
    assert "coupled group" not in rows["layer1.conv1"].toolTip()
    from explorer.engine.plan import Plan
    from explorer.gui.qt_layer_table import SETTINGS

    win.session.set_plan(Plan.from_dict({"version": 1, "layers": {
        "stem": {"prune": {"amount": 0.25, "granularity": "filter"}}}}))
    model.refresh_values()
    cells = {model.item(r, 0).text(): model.item(r, SETTINGS).text() for r in range(model.rowCount())}
    assert cells["layer1.conv2"] == "25% filters, with stem" and cells["layer2.conv2"] == "-"

"""Saliency criteria in the window (issue 20): the criterion box offers obd and taylor with what they compute;
chosen, the preview measures what compress writes and the histogram says no |w| threshold divides the weights."""

from explorer.engine import compress
from explorer.engine.measure.preview import Previewer


def test_obd_from_the_controls_is_measured_as_compress_measures_it(make_window, settle):
    win = make_window("digits-cnn")
    c = win.controls
    tips = {c.criterion.itemText(i): c.criterion.itemData(i, 3) for i in range(c.criterion.count())}
    assert "Optimal Brain Damage" in tips["obd"] and "Taylor" in tips["taylor"]  # 3: Qt.ToolTipRole
    s = win.session
    s.select(["conv2"])
    settle(win)
    c.sparsity.setValue(80)
    c.criterion.setCurrentText("obd")
    s.update_layers(["conv2"], c.patch())
    settle(win)
    assert s.settings("conv2").prune.criterion == "obd"
    assert Previewer(s.loaded).measure(s.plan)["size"] == s.results["size"]
    res = compress(s.loaded.model, s.plan, s.loaded.example_input)
    assert s.results["size"]["file"] > 0 and res.layers["conv2"].tensors[0].nonzero == 1800
    title = win.layer_view.title.text()
    assert "least&nbsp;obd&nbsp;saliency" in title
    assert not any(line.isVisible() for line in win.layer_view.lines)
    c.sparsity.setValue(60)  # moving the slider says what happens instead of drawing a magnitude line
    win.threshold.moving(60)
    assert "obd saliency ranks" in win.statusBar().currentMessage()

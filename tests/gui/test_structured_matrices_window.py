"""Tensor-train and circulant layers in the window (issue 20): the method box offers them with what each
builds, the preview measures what the file holds, and the histogram draws the factors the file stores."""

from explorer.engine import compress
from explorer.engine.measure.preview import Previewer
from explorer.engine.storage import fileformat as ff


def test_tt_and_circulant_from_the_controls_are_measured_as_the_file_holds_them(make_window, settle, tmp_path):
    win = make_window("digits-cnn")
    c = win.controls
    items = {c.rank_method.itemText(i): c.rank_method.itemData(i, 3) for i in range(c.rank_method.count())}
    assert "tensor train" in items["tt"] and "FFT" in items["circulant"]  # 3: Qt.ToolTipRole
    s = win.session
    for name, method in (("fc1", "tt"), ("fc2", "circulant")):
        s.select([name])
        settle(win)
        c.rank_on.setChecked(True)
        c.rank.setValue(10)
        c.rank_method.setCurrentText(method)
        s.update_layers([name], c.patch())
        settle(win)
        assert s.settings(name).lowrank.method == method
    title = win.layer_view.title.text()
    assert "circulant&nbsp;factors" in title and "fc2" in title
    assert not any(line.isVisible() for line in win.layer_view.lines)  # each factor has its own threshold
    expected = Previewer(s.loaded).measure(s.plan)
    assert s.results["size"] == expected["size"]
    res = compress(s.loaded.model, s.plan, s.loaded.example_input)
    assert ff.save(res, tmp_path / "m.cexp", s.loaded) == s.results["size"]["file"]
    assert s.results["macs"]["after"] == res.macs_after
    rows = {l["name"]: l for l in s.results["layers"]}
    assert rows["fc1"]["settings_summary"].startswith("tt 10% of weights")
    assert rows["fc2"]["settings_summary"].startswith("circulant 10% of weights")


def test_a_convolution_asked_for_a_tensor_train_gets_one_message_naming_why(make_window, settle):
    win = make_window("digits-cnn")
    s = win.session
    s.select(["conv2"])
    settle(win)
    c = win.controls
    c.rank_on.setChecked(True)
    c.rank_method.setCurrentText("tt")
    s.update_layers(["conv2"], c.patch())
    settle(win)
    text = " ".join(win.messages.errors)
    assert "Linear layers" in text and "conv2" in text, text

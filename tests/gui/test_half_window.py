"""Half precision in the window (issue 20): float16 and bfloat16 are in the method box, read no bits or init,
and the preview measures what the file would hold (16 bits a survivor, the accuracy of the rounded model)."""

from explorer.engine.measure.preview import Previewer


def test_float16_from_the_controls_is_measured_as_the_engine_measures_it(make_window, settle):
    win = make_window("digits-mlp")
    c = win.controls
    assert {"float16", "bfloat16"} <= {c.method.itemText(i) for i in range(c.method.count())}
    win.session.select(["fc1"])
    settle(win)
    c.quant_on.setChecked(True)
    c.method.setCurrentText("float16")
    c._enable()
    assert not c.bits.isEnabled() and not c.init.isEnabled()
    win.session.update_layers(["fc1"], c.patch())
    settle(win)
    s = win.session
    assert s.settings("fc1").quantize.method == "float16"
    row = next(l for l in s.results["layers"] if l["name"] == "fc1")
    assert row["settings_summary"].endswith("float16")
    expected = Previewer(s.loaded).measure(s.plan)
    assert s.results["size"] == expected["size"]  # the file's bytes included
    assert row["bits"]["quantized"] == 16 * s.loaded.model.fc1.weight.numel()  # unpruned: 16 bits a weight

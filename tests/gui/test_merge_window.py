"""Neuron merging in the window (issue 20): the granularity box offers it where the layer can take it (greyed
with the reason elsewhere), and the layer view ranks the neurons by the saliency of merging each into its twin."""

from explorer.engine.measure.preview import Previewer


def test_merge_is_offered_where_it_applies_and_shown_as_merges(make_window, settle):
    win = make_window("digits-cnn")
    c = win.controls
    box = [c.granularity.itemText(i) for i in range(c.granularity.count())]
    assert "merge" in box
    item = c.granularity.model().item(box.index("merge"))
    win.session.select(["conv2"])
    settle(win)
    assert not item.isEnabled() and "only a Linear layer" in item.toolTip()
    win.session.select(["fc1"])
    settle(win)
    assert item.isEnabled()
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.5, "granularity": "merge"}})
    settle(win)
    s = win.session
    assert s.settings("fc1").describe() == "merge 50% of neurons"
    assert s.results["size"] == Previewer(s.loaded).measure(s.plan)["size"]
    assert s.results["macs"]["after"] < s.results["macs"]["before"]
    assert "250 merged into their nearest twins (50%)" in win.layer_view.title.text().replace("&nbsp;", " ")

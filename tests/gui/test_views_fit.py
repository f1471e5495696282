"""Issue 17, the views a newcomer meets: what each one draws is what the engine measured, and it fits.

- a filter-pruned layer shows its filters' norms, sorted, the removed ones marked (exactly the pruner's), not ±t;
- many quantization levels are a rug along the axis, a few are full-height lines.

The rest of what a newcomer meets is in test_newcomer_numbers.py: the CLI's inspect and the window's table
give the same bytes per layer and say which bytes; the centroid tab explains its MSE and, with eval data,
shows each init's measured accuracy; the size bars can be drawn on a log axis and say each stage's ratio to
dense; ``gui --layer``.
"""

import numpy as np
import pytest

from explorer.engine.methods.channels import prune_structured

WORK_TIMEOUT_MS = 30_000


def settle_on(qtbot, settle, win, name, patch=None):
    """Select layer ``name`` (and apply ``patch`` to it), then wait until every job is done."""
    win.session.select([name])
    if patch is not None:
        win.session.update_layers([name], patch)
    settle(win)
    qtbot.waitUntil(lambda: win.idle(), timeout=WORK_TIMEOUT_MS)


def text(label) -> str:
    """A label's text as read (non-breaking spaces as spaces)."""
    return label.text().replace("&nbsp;", " ")


# ------------------------------------------------------------------------------- 1. filter-pruned layer


def test_filter_pruned_layer_shows_the_ranking_the_pruner_uses(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    view = win.layer_view
    settle_on(qtbot, settle, win, "conv2", {"prune": {"amount": 0.5, "granularity": "filter", "criterion": "l2"}})
    assert view.stack.currentWidget() is view.ranking_plot
    assert not any(line.isVisible() for line in view.lines)  # no ±t over whole filters
    loaded = win.session.loaded
    _, report = prune_structured(loaded.model, loaded.example_input, {"conv2": ("filter", 0.5, "l2")})
    kept = set(report["conv2"]["kept"])
    w = loaded.model.conv2.weight.detach().double().flatten(1)
    norms = w.pow(2).sum(1).sqrt().numpy()
    order = np.argsort(norms, kind="stable")
    going_x = view.going.opts["x"]
    staying_x = view.staying.opts["x"]
    assert len(going_x) == report["conv2"]["removed"] == 25 and len(staying_x) == 25
    # the bars in the removed colour are exactly the filters the pruner removes, at their norms
    assert {int(order[int(x)]) for x in going_x} == set(range(50)) - kept
    np.testing.assert_allclose(view.going.opts["height"], norms[order][np.asarray(going_x, int)])
    assert view.cut.isVisible() and view.cut.value() == pytest.approx(norms[sorted(kept)].min())
    assert "25 removed (50%) with L2 norm below" in text(view.title)

    # element pruning of the same layer: the histogram with its ±t lines again
    settle_on(qtbot, settle, win, "conv2", {"prune": {"amount": 0.5, "granularity": "element"}})
    assert view.stack.currentWidget() is view.plot
    assert all(line.isVisible() for line in view.lines)


# ------------------------------------------------------------------------------------- 2. dense levels


def _level_items(view):
    lines = view.levels.getData()[1]
    rug = view.rug.getData()[1]
    return (np.zeros(0) if lines is None else np.asarray(lines)), (np.zeros(0) if rug is None else np.asarray(rug))


def test_many_levels_are_a_rug_few_are_lines(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    view = win.layer_view
    # conv1: 180 weights; 8-bit k-means gives more than 16 distinct values
    settle_on(qtbot, settle, win, "conv1", {"quantize": {"bits": 8, "method": "kmeans"}, "prune": None})
    lines, rug = _level_items(view)
    top = view.plot.getViewBox().viewRange()[1][1]
    n_levels = int(text(view.title).split(" distinct")[0].rsplit(";", 1)[-1].split()[-1])
    assert n_levels > 16 and lines.size == 0 and rug.size == 2 * n_levels
    assert rug.max() < 0.1 * top  # short ticks along the bottom axis, not full height
    settle_on(qtbot, settle, win, "conv1", {"quantize": {"bits": 3, "method": "kmeans"}})
    lines, rug = _level_items(view)
    assert rug.size == 0 and 0 < lines.size <= 2 * 16
    assert lines.max() > 0.9 * top
    assert "MSE&nbsp;" in view.title.text() and "(MSE " not in view.title.text()


def test_mse_text_is_compact():
    from explorer.gui.qt_layer_view import mse_text

    assert mse_text(0.0) == "0" and mse_text(1.23456e-05) == "1.23e-05" and mse_text(0.5) == "0.5"

"""Eval data the model cannot take, opened in the window: the banner names both shapes, nothing is measured on it,
and the window goes on working."""

from pathlib import Path

import pytest

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte.gz"
TIMEOUT_MS = 30_000


@pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST t10k files not present")
def test_wrong_shape_eval_data_shows_both_shapes_in_the_banner_and_the_window_goes_on(make_window, qtbot, settle):
    win = make_window("digits-mlp")
    before = win.session.loaded.eval_data
    win.open_data(str(MNIST))
    qtbot.waitUntil(lambda: win.last_error is not None, timeout=TIMEOUT_MS)
    text = win.banner.text()
    assert win.banner.isVisible() and text.startswith("Eval data t10k-images-idx3-ubyte.gz")
    assert "eval data" not in text.lower()[1:]  # said once
    assert "samples are 1×28×28 float32 (784 values)" in text
    assert "digits-mlp expects 1×8×8 float32 (64 values)" in text
    assert win.session.loaded.eval_data is before and win.session.data_source is None

    settle(win)  # still working: the next change is measured, on the data it had
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.5}})
    qtbot.waitUntil(lambda: win.idle() and win.session.results is not None
                    and win.session.results["size"]["pruned"] < win.session.results["size"]["dense"],
                    timeout=TIMEOUT_MS)

"""The layer view's pruning threshold lines (±t), tied to the sparsity slider: they follow a drag of the
slider (a lookup in the current layer's sorted magnitudes), and a dragged line sets the sparsity."""

from __future__ import annotations

from explorer.engine.methods.granularities import CRITERIA


class ThresholdLines:
    """Wires ``window``'s sparsity slider and its layer view's threshold lines through its session."""

    def __init__(self, window):
        self.window = window
        window.controls.sparsity_moved.connect(self.moving)
        window.layer_view.threshold_dragged.connect(self.dragged)
        window.layer_view.threshold_released.connect(self.released)
        window.controls.sparsity._slider.sliderReleased.connect(lambda: window.messages.clear("drag"))

    def moving(self, percent: int) -> None:
        """While the sparsity slider is dragged, the threshold lines follow it (a lookup; the histogram and
        sizes are measured when it is released). Not for channel pruning, nor for a layer whose weight is
        another's (its settings follow that layer's)."""
        win = self.window
        session = win.session
        name, previewer = session.current, session.previewer
        if (win.controls.granularity.currentText() != "element" or previewer is None
                or previewer.owners.get(name, name) != name):
            return
        if CRITERIA[win.controls.criterion.currentText()].data:  # by saliency no |w| threshold divides them
            win.messages.status(f"sparsity {percent}%: the {win.controls.criterion.currentText()} saliency ranks "
                                f"{name}'s weights when the slider is released", ("drag", name))
            return
        t = session.threshold_at(percent)
        if t is None:
            return
        if t == 0:  # 0 %, or too few weights for one to go
            win.layer_view.show_threshold_lines(session.idle_threshold())
            win.messages.status(f"sparsity {percent}%: nothing of {name} is pruned", ("drag", name))
        else:
            win.layer_view.set_threshold(t)
            win.messages.status(f"sparsity {percent}%: {name} weights with |w| < {t:.4g} "
                                "are pruned when the slider is released", ("drag", name))

    def dragged(self, t: float) -> None:
        pct = self.window.session.sparsity_at(t)
        if pct is not None:
            self.window.statusBar().showMessage(f"threshold |w| < {t:.4g} prunes {pct}% of "
                                                f"{self.window.session.current}")

    def released(self, t: float) -> None:
        pct = self.window.session.sparsity_at(t)
        if pct is not None:
            self.window.controls.granularity.setCurrentText("element")
            self.window.controls.set_sparsity(pct)

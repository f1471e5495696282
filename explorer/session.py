"""The Qt-free state of one exploration: the loaded model and its previewer, its layer table, the plan
with undo/redo, the selection, the latest measured results (sizes, accuracy, the runnable compressed
model), a fine-tuned model standing for the plan, and each looked-at layer's sorted magnitudes (what turns
a threshold into a sparsity). Views listen through plain callbacks; nothing here starts threads or imports
Qt.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from explorer.engine.inspect import ModelInfo
from explorer.engine.measure.preview import Previewer
from explorer.engine.methods.prune import sparsity_at, threshold_at
from explorer.engine.model.loading import LoadedModel
from explorer.engine.plan import LayerSettings, Plan

Listener = Callable[..., None]
UNDO_LIMIT = 1000  # undo steps kept; beyond it the oldest is dropped


@dataclass(frozen=True)
class Finetuned:
    """A fine-tuned model that stands for its plan: while it is current the preview shows its sizes and
    measured accuracy and Export writes it. A new plan sets it aside (the trained weights belong to the plan
    they were trained under); undo brings it back.

    ``result`` is the engine's :class:`~explorer.engine.finetune.trainer.FinetuneResult` (its ``compressed``
    is what the file stores); ``summary`` is :func:`~explorer.engine.measure.evaluate.summarize` of it and
    ``quality`` the accuracy (or fidelity) measured on the eval data, both by the engine."""

    result: object
    plan: Plan
    summary: dict
    quality: Optional[dict]

    @property
    def compressed(self):
        return self.result.compressed

    def describe(self) -> str:
        """One line for the preview and the status bar, e.g. ``fine-tuned model (3 epochs; best: epoch 3,
        validation accuracy 86.11%)``."""
        r = self.result
        n = len(r.history)
        best = "the model before retraining" if r.best_epoch == 0 else f"epoch {r.best_epoch}"
        val = f", validation {r.metric} {r.best:.2%}" if r.best is not None else ""
        stopped = ", cancelled" if r.cancelled else ""
        return f"fine-tuned model ({n} epoch{'s' if n != 1 else ''}{stopped}; best: {best}{val})"


class Session:
    """One model being explored.

    Events (subscribe with :meth:`on`): ``model`` (a new model was loaded), ``plan`` (the plan changed, or
    the fine-tuned model standing for it came or went), ``selection`` (the selected layers changed),
    ``results`` (a measurement arrived), ``data`` (new eval data for the model), ``finetuned`` (a fine-tuned
    model became current, or was set aside: :attr:`finetuned` says which).

    Undo keeps the last :data:`UNDO_LIMIT` states (a plan, with the fine-tuned model that stood for it, if
    any; older ones are dropped); redo keeps what was undone until the next edit.
    """

    def __init__(self):
        self.loaded: Optional[LoadedModel] = None
        self.info: Optional[ModelInfo] = None
        self.plan = Plan()
        self.selection: list = []
        self.results: Optional[dict] = None  # latest whole-model measurement (evaluate_plan's dict)
        self.accuracy: Optional[dict] = None
        self.previewer: Optional[Previewer] = None  # per model: measures plans incrementally
        self.accuracy_before: Optional[float] = None  # the uncompressed model's, once measured
        self.compressed_model = None  # the runnable model of the plan whose accuracy was measured last
        self.finetuned: Optional[Finetuned] = None  # the fine-tuned model standing for the plan, if any
        self.magnitudes: dict = {}  # layer -> its |w| sorted (to turn a dragged threshold into a sparsity)
        self._undo: deque = deque(maxlen=UNDO_LIMIT)  # appending beyond the limit drops the oldest
        self._redo: list = []
        self._listeners: dict = {}

    # -- events
    def on(self, event: str, fn: Listener) -> None:
        self._listeners.setdefault(event, []).append(fn)

    def emit(self, event: str, *args) -> None:
        for fn in list(self._listeners.get(event, [])):
            fn(*args)

    # -- model
    def set_model(self, loaded: LoadedModel, info: ModelInfo, plan: Optional[Plan] = None) -> None:
        self.loaded, self.info = loaded, info
        self.previewer = Previewer(loaded)
        self.plan = plan or Plan()
        self._undo.clear()
        self._redo.clear()
        self.results = self.accuracy = self.accuracy_before = self.compressed_model = None
        self.finetuned = None
        self.magnitudes = {}
        # start on the largest layer: the one whose histogram and centroids say the most
        largest = max(info.layers, key=lambda layer: layer.weight_params, default=None)
        self.selection = [largest.name] if largest is not None else []
        self.emit("model")
        self.emit("plan")
        self.emit("selection")

    @property
    def layer_names(self) -> list:
        return [layer.name for layer in self.info.layers] if self.info else []

    # -- plan
    def settings(self, name: str) -> LayerSettings:
        return self.plan.settings_for(name)

    def set_plan(self, plan: Plan, record: bool = True) -> None:
        """Make ``plan`` current. A fine-tuned model standing for the old plan is set aside (an undo step
        brings it back); the same plan again changes nothing, and keeps it."""
        if plan.to_dict() == self.plan.to_dict():
            return
        if record:
            self._undo.append(self._state())
            self._redo.clear()
        self._restore((plan, None))

    def set_finetuned(self, finetuned: Finetuned) -> None:
        """Make a fine-tuned model the current one, standing for its plan (one undo step: undo goes back to
        the state before, the plan measured on the original weights)."""
        self._undo.append(self._state())
        self._redo.clear()
        self._restore((finetuned.plan, finetuned))

    def _state(self) -> tuple:
        return self.plan, self.finetuned

    def _restore(self, state: tuple) -> None:
        """Enter ``state`` (plan, fine-tuned model or None). A fine-tuned model brings its own results (they
        were measured when it was made); a plan's are measured again by whoever listens to ``plan``."""
        plan, finetuned = state
        changed = finetuned is not self.finetuned
        self.plan, self.finetuned = plan, finetuned
        if finetuned is not None:
            self.results, self.accuracy = finetuned.summary, finetuned.quality
            self.compressed_model = finetuned.compressed.model
        elif changed:
            self.compressed_model = None  # the fine-tuned model's: the plan's own is measured next
        if changed:
            self.emit("finetuned")
        self.emit("plan")
        if finetuned is not None:
            self.emit("results")

    def update_layers(self, names, patch: dict) -> None:
        """Merge ``patch`` (sections -> fields, ``None`` turns a section off) into each named layer's own
        entry. Validated before anything changes; raises PlanError naming the layer."""
        plan = self.plan.merged(names, patch)
        self.set_plan(plan)

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> None:
        if self._undo:
            self._redo.append(self._state())
            self._restore(self._undo.pop())

    def redo(self) -> None:
        if self._redo:
            self._undo.append(self._state())
            self._restore(self._redo.pop())

    # -- selection and results
    def select(self, names) -> None:
        names = [n for n in names if n in self.layer_names]
        if names != self.selection:
            self.selection = names
            self.emit("selection")

    @property
    def current(self) -> Optional[str]:
        return self.selection[0] if self.selection else None

    def set_results(self, results: dict) -> None:
        self.results = results
        self.emit("results")

    def set_accuracy(self, accuracy: Optional[dict], model=None) -> None:
        """The accuracy (or fidelity) ``model`` measured (the uncompressed model's is kept for the next)."""
        self.accuracy = accuracy
        if model is not None:
            self.compressed_model = model
        if accuracy is not None and "before" in accuracy:
            self.accuracy_before = accuracy["before"]
        self.emit("results")

    def set_eval_data(self, data) -> None:
        """New eval data for the loaded model: accuracy is measured on it from now on (before included)."""
        self.loaded.eval_data = data
        self.accuracy_before = None
        self.emit("data")

    # -- thresholds and sparsities of the current layer (element pruning)
    def sorted_magnitudes(self, name: Optional[str] = None) -> Optional[np.ndarray]:
        """Layer ``name``'s (default: the current one's) sorted |w|, once a histogram job has brought them."""
        values = self.magnitudes.get(name or self.current or "")
        return values if values is not None and values.size else None

    def threshold_at(self, percent: int) -> Optional[float]:
        """The current layer's pruning threshold at ``percent`` % sparsity (None until its magnitudes are in)."""
        values = self.sorted_magnitudes()
        return None if values is None else threshold_at(values, percent)

    def sparsity_at(self, t: float) -> Optional[int]:
        """The current layer's sparsity (%) whose threshold is ``t``."""
        values = self.sorted_magnitudes()
        return None if values is None else sparsity_at(values, t)

    def idle_threshold(self) -> Optional[float]:
        """Where the ±t lines wait on a layer with no element pruning: at its 10 % quantile of |w|."""
        values = self.sorted_magnitudes()
        return None if values is None else float(values[values.size // 10])

"""The Qt-free state of one exploration: the loaded model and its previewer, its layer table, the plan
with undo/redo, the selection, the latest measured results (sizes, accuracy, the runnable compressed
model), a fine-tuned model standing for the plan, every plan measured so far (:class:`MeasuredPlans`, what
the Compare tab draws) and each looked-at layer's sorted magnitudes (what turns a threshold into a
sparsity). Views listen through plain callbacks; nothing here starts threads or imports Qt.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from explorer.engine.errors import PlanError
from explorer.engine.inspect import ModelInfo
from explorer.engine.measure.preview import Previewer
from explorer.engine.methods.prune import sparsity_at, threshold_at
from explorer.engine.model.loading import LoadedModel
from explorer.engine.plan import LayerSettings, Plan

#: what a layer cannot take, in words (Session.refusal, and the controls' tooltips by refused_granularities)
REFUSED = {"filter": "its filters cannot be removed", "channel": "its input channels cannot be removed",
           "merge": "its neurons cannot be merged",
           "lowrank": "it cannot be factorised"}

Listener = Callable[..., None]
UNDO_LIMIT = 1000  # undo steps kept; beyond it the oldest is dropped
MEASURED_LIMIT = 200  # distinct measured plans kept (the Compare tab); beyond it the least recently measured goes
FINETUNED_KEPT = 8  # fine-tuned points that keep their trained model (to restore it); older ones keep the plan
ORIGINS = ("hand", "auto", "fine-tuned")
LABEL_CHARS = 28  # of a plan's description, in its point's label


@dataclass(frozen=True)
class ModelSource:
    """What the user opened, as :func:`~explorer.engine.model.loading.load_model` takes it: a sample name, a
    file or a factory reference, the architecture's factory and its keyword arguments, whether unpickling
    was explicitly allowed, and the eval data named with it (a file or a factory), if any. What an autosave
    reopens the model from."""

    source: str
    factory: Optional[str] = None
    trust: bool = False
    factory_kwargs: dict = field(default_factory=dict)
    data: Optional[str] = None


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


@dataclass(frozen=True)
class Measured:
    """One plan as the window measured it: the file's bytes and each layer's as the preview counted them, and
    the accuracy (or, for eval data without labels, the cosine fidelity) measured on the eval data. ``origin``
    says where the plan came from (:data:`ORIGINS`); a fine-tuned point is the trained model, not the plan on
    the original weights, and holds that model while it is among the last :data:`FINETUNED_KEPT`."""

    key: str  # the plan's JSON (a fine-tuned model's: marked as such)
    number: int  # in the order first measured, from 1
    plan: Plan
    origin: str
    label: str  # short, e.g. "auto 8.0×" (:attr:`title` numbers it)
    file_bytes: int
    quality: float  # accuracy in [0, 1], or cosine fidelity
    metric: str  # "accuracy" or "fidelity"
    data: str  # what it was measured on
    layer_bytes: dict  # layer -> its weights as coded (bytes)
    finetuned: Optional[Finetuned] = None

    @property
    def title(self) -> str:
        return f"#{self.number} {self.label}"


class MeasuredPlans:
    """Every distinct plan measured since the model (or its eval data) was opened: one point a plan, by its
    JSON (measured again, it is updated and becomes the most recent), at most ``limit`` of them (the least
    recently measured goes first). Where a plan came from is said before it is measured (:meth:`expect`) or
    kept from its earlier measurement; otherwise it was made by hand."""

    def __init__(self, limit: int = MEASURED_LIMIT, kept: int = FINETUNED_KEPT):
        self.limit, self.kept = limit, kept
        self._points: OrderedDict = OrderedDict()  # key -> Measured, least recently measured first
        self._expected: OrderedDict = OrderedDict()  # key -> (origin, label) of a plan about to be measured
        self._count = 0

    @staticmethod
    def key(plan: Plan, finetuned: Optional[Finetuned] = None) -> str:
        return json.dumps(plan.to_dict(), sort_keys=True) + (" fine-tuned" if finetuned is not None else "")

    @property
    def points(self) -> list:
        """The points in the order first measured."""
        return sorted(self._points.values(), key=lambda p: p.number)

    def __len__(self) -> int:
        return len(self._points)

    def get(self, key: str) -> Optional[Measured]:
        return self._points.get(key)

    def clear(self) -> None:
        self._points.clear()
        self._expected.clear()
        self._count = 0

    def expect(self, plan: Plan, origin: str, label: str = "") -> None:
        """``plan``, when it is next measured, came from ``origin`` (e.g. "auto"), with ``label``."""
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
        self._expected[self.key(plan)] = (origin, label)
        while len(self._expected) > self.limit:
            self._expected.popitem(last=False)

    def record(self, plan: Plan, results: Optional[dict], quality: Optional[dict],
               finetuned: Optional[Finetuned] = None) -> Optional[Measured]:
        """Keep ``plan`` as ``results`` (the preview's sizes) and ``quality`` (its measured accuracy) say; the
        point, or None when there is nothing to plot (no sizes, no accuracy)."""
        size = (results or {}).get("size") or {}
        file_bytes = size.get("file") or size.get("coded")
        if file_bytes is None or not quality:
            return None
        if "after" in quality:
            value, metric = quality["after"], "accuracy"
        elif "cosine" in quality:
            value, metric = quality["cosine"], "fidelity"
        else:
            return None
        key = self.key(plan, finetuned)
        old = self._points.pop(key, None)
        origin, label = self._expected.pop(key, (None, ""))
        if finetuned is not None:
            origin, label = "fine-tuned", label or f"fine-tuned ({len(finetuned.result.history)} epochs)"
        elif origin is None and old is not None:
            origin, label = old.origin, old.label
        elif origin is None:
            origin, label = "hand", _describe(plan)
        if old is not None:
            number = old.number
        else:
            self._count += 1
            number = self._count
        layers = {layer["name"]: (layer["bits"]["coded"] + 7) // 8 for layer in results.get("layers", [])}
        point = Measured(key, number, plan, origin, label, file_bytes,
                         float(value), metric, quality.get("data", ""), layers, finetuned)
        self._points[key] = point
        while len(self._points) > self.limit:
            self._points.popitem(last=False)
        self._forget_old_models()
        return point

    def _forget_old_models(self) -> None:
        """Only the last :data:`FINETUNED_KEPT` fine-tuned points hold their trained model."""
        holding = [k for k, p in self._points.items() if p.finetuned is not None]
        for k in holding[: max(len(holding) - self.kept, 0)]:
            self._points[k] = replace(self._points[k], finetuned=None)


def _describe(plan: Plan) -> str:
    if plan.default.is_empty and not plan.layers:
        return "no compression"
    text = plan.description.strip() or "by hand"
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1].rstrip() + "…"


class Session:
    """One model being explored.

    Events (subscribe with :meth:`on`): ``model`` (a new model was loaded), ``plan`` (the plan changed, or
    the fine-tuned model standing for it came or went), ``selection`` (the selected layers changed),
    ``results`` (a measurement arrived), ``data`` (new eval data for the model), ``finetuned`` (a fine-tuned
    model became current, or was set aside: :attr:`finetuned` says which), ``measured`` (a point of
    :attr:`measured` came or changed, with it as the argument; None when they were cleared).

    :attr:`source` and :attr:`data_source` say what the model and eval data were opened from, and
    :meth:`history` / :meth:`restore_history` give and take the undo and redo plans: what an autosave keeps
    (:mod:`explorer.session_store`).

    Undo keeps the last :data:`UNDO_LIMIT` states (a plan, with the fine-tuned model that stood for it, if
    any; older ones are dropped); redo keeps what was undone until the next edit.
    """

    def __init__(self):
        self.loaded: Optional[LoadedModel] = None
        self.source: Optional[ModelSource] = None  # what the model was opened from (None: not said)
        self.data_source: Optional[str] = None  # the eval data opened since, a file or factory (None: the model's)
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
        self.measured = MeasuredPlans()  # every plan measured (sizes and accuracy), for the Compare tab
        self._results_of: Optional[Plan] = None  # the plan whose sizes self.results are
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
    def set_model(self, loaded: LoadedModel, info: ModelInfo, plan: Optional[Plan] = None,
                  source: Optional[ModelSource] = None) -> None:
        self.loaded, self.info = loaded, info
        self.source, self.data_source = source, None
        self.previewer = Previewer(loaded)
        self.plan = plan or Plan()
        self._undo.clear()
        self._redo.clear()
        self.results = self.accuracy = self.accuracy_before = self.compressed_model = None
        self.finetuned = None
        self.magnitudes = {}
        self.measured.clear()
        # start on the largest layer: the one whose histogram and centroids say the most
        largest = max(info.layers, key=lambda layer: layer.weight_params, default=None)
        self.selection = [largest.name] if largest is not None else []
        self.emit("model")
        self.emit("plan")
        self.emit("selection")
        self.emit("measured", None)

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
            self._results_of = None
        elif changed:
            self.compressed_model = None  # the fine-tuned model's: the plan's own is measured next
        if changed:
            self.emit("finetuned")
        self.emit("plan")
        if finetuned is not None:
            self.emit("results")
            self._record(plan, finetuned.summary, finetuned.quality, finetuned)

    def update_layers(self, names, patch: dict) -> None:
        """Merge ``patch`` (sections -> fields, ``None`` turns a section off) into each named layer's own
        entry. Validated before anything changes; raises PlanError naming the layer, also for a section the
        patch sets that the layer cannot take (filters of the model's output, low-rank of an LSTM's gates:
        what the model's inspection says, see :meth:`refusal`)."""
        plan = self.plan.merged(names, patch)
        for name in names:
            why = self.refusal(name, plan.settings_for(name), sections=patch)
            if why is not None:
                raise PlanError(f"{name}: {why}")
        self.set_plan(plan)

    def refusal(self, name: str, settings: LayerSettings, sections=("prune", "lowrank")) -> Optional[str]:
        """Why layer ``name`` cannot take ``settings`` (of its ``sections``), as the model's inspection says,
        or None."""
        refused = self._refused(name)
        p = settings.prune
        if "prune" in sections and p is not None and p.amount and p.granularity in refused:
            return f"{REFUSED[p.granularity]} ({refused[p.granularity] or 'the engine refuses'})"
        if "lowrank" in sections and settings.lowrank is not None and "lowrank" in refused:
            return f"{REFUSED['lowrank']} ({refused['lowrank']})"
        return None

    def _refused(self, name: str) -> dict:
        """What layer ``name`` cannot take, as the model's inspection says: "filter", "channel", "merge", "lowrank" ->
        the inspection's reason (None where it gives none)."""
        info = next((layer for layer in self.info.layers if layer.name == name), None) if self.info else None
        return {} if info is None else info.refusals()

    def history(self) -> tuple:
        """The plans undo and redo go to: (undo, oldest first; redo, the next redo last). A fine-tuned
        model in them is its plan here (what an autosave keeps)."""
        return [plan for plan, _ in self._undo], [plan for plan, _ in self._redo]

    def restore_history(self, plan: Plan, undo, redo) -> None:
        """Make ``plan`` current with ``undo`` and ``redo`` as :meth:`history` gave them (a restored
        autosave); the fine-tuned model standing for the plan, if any, is set aside."""
        self._undo.clear()
        self._undo.extend((p, None) for p in undo)
        self._redo = [(p, None) for p in redo]
        self._restore((plan, None))

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
    def refused_granularities(self) -> dict:
        """granularity -> why one of the selected layers cannot take it (from the model's inspection)."""
        out = {}
        for name in self.selection:
            for key, why in self._refused(name).items():
                if key != "lowrank":
                    out.setdefault(key, f"{name}: {why or REFUSED[key]}")
        return out

    def refused_lowrank(self) -> Optional[str]:
        """Why one of the selected layers cannot be factorised (the first such), or None."""
        for name in self.selection:
            why = self._refused(name).get("lowrank")
            if why:
                return f"{name}: {why}"
        return None

    def select(self, names) -> None:
        names = [n for n in names if n in self.layer_names]
        if names != self.selection:
            self.selection = names
            self.emit("selection")

    @property
    def current(self) -> Optional[str]:
        return self.selection[0] if self.selection else None

    def set_results(self, results: dict) -> None:
        """The current plan's sizes and MACs, as the preview measured them."""
        self.results = results
        self._results_of = self.plan
        self.emit("results")

    @property
    def results_current(self) -> bool:
        """Whether :attr:`results` are the current plan's (or the fine-tuned model's own)."""
        return self.results is not None and (self._results_of is None or self._results_of is self.plan)

    def measured_as_set(self, name: str) -> bool:
        """True when :attr:`results` hold layer ``name`` as the current plan sets it (the results of an
        earlier plan still stand for the layers it set alike, until the current one is measured — or for
        good, when it cannot be applied)."""
        if self.results is None:
            return False
        of = self._results_of
        if of is None or of is self.plan:  # a fine-tuned model's own results, or the current plan's
            return True
        return of.settings_for(name) == self.plan.settings_for(name)

    def set_accuracy(self, accuracy: Optional[dict], model=None) -> None:
        """The accuracy (or fidelity) ``model`` measured (the uncompressed model's is kept for the next)."""
        self.accuracy = accuracy
        if model is not None:
            self.compressed_model = model
        if accuracy is not None and "before" in accuracy:
            self.accuracy_before = accuracy["before"]
        self.emit("results")
        if self.finetuned is None and self._results_of is self.plan:  # the plan's sizes and its accuracy
            self._record(self.plan, self.results, accuracy)

    def _record(self, plan: Plan, results, quality, finetuned: Optional[Finetuned] = None) -> None:
        point = self.measured.record(plan, results, quality, finetuned)
        if point is not None:
            self.emit("measured", point)

    @property
    def current_key(self) -> str:
        """The key (:meth:`MeasuredPlans.key`) the current plan, or fine-tuned model, is measured under."""
        return self.measured.key(self.plan, self.finetuned)

    def restore_measured(self, point: Measured) -> bool:
        """Make a measured plan current again, as one undo step (nothing changes if it is current). A
        fine-tuned point brings its trained model back while it holds it (see :data:`FINETUNED_KEPT`); False
        when only its plan could be restored (then measured again on the original weights)."""
        restored = point.origin != "fine-tuned" or point.finetuned is not None
        if self.measured.key(point.plan, point.finetuned) == self.current_key:
            return restored
        self._undo.append(self._state())
        self._redo.clear()
        self._restore((point.plan, point.finetuned))
        return restored

    def set_eval_data(self, data, source: Optional[str] = None) -> None:
        """New eval data for the loaded model: accuracy is measured on it from now on (before included).
        ``source``: the file or factory it came from (what an autosave reopens)."""
        self.loaded.eval_data = data
        self.data_source = source
        self.accuracy_before = None
        self.measured.clear()  # measured on other data: not comparable
        self.emit("measured", None)
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

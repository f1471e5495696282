"""The Concepts tab: a view for every compression concept on the loaded model, live with the plan, each with
a line that explains it in the model's own numbers and a "?" with what it shows, why it matters, its formula
and its reference. The engine computes every view (:mod:`explorer.engine.teach`) on the workers' "concepts"
channel, only for the page in sight: a page not shown does no work, and a newer request drops an older one."""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QMessageBox, QScrollArea, QTabWidget, QToolButton,
                               QVBoxLayout, QWidget)

from explorer.engine.measure.preview import plan_key
from explorer.engine.progress import scaled
from explorer.engine.teach.help import HELP, help_text
from explorer.engine.teach.layer import LAYER_VIEWS, layer_concept
from explorer.engine.teach.model import graph_values, model_graph, outputs_view, pipeline_view
from explorer.gui.qt_concept_layer import EntropyPlot, GranularityPlot, QuantizationPlot, SpectrumPlot, StoragePlot
from explorer.gui.qt_concept_model import GraphPlot, OutputsPlot, PipelinePlot

CHANNEL = "concepts"
PAGES = (("granularity", "Granularity", GranularityPlot), ("storage", "Storage", StoragePlot),
         ("quantization", "Quantization", QuantizationPlot), ("entropy", "Entropy", EntropyPlot),
         ("lowrank", "Low rank", SpectrumPlot), ("pipeline", "Pipeline", PipelinePlot),
         ("graph", "Graph", GraphPlot), ("outputs", "Teacher", OutputsPlot))
LAYER_PAGES = frozenset(LAYER_VIEWS)


class ConceptPage(QWidget):
    """One concept: its title and "?", the plot, the explanation line (the engine's numbers)."""

    def __init__(self, key: str, title: str, plot: QWidget, parent=None):
        super().__init__(parent)
        self.key, self.plot = key, plot
        self.title = QLabel(f"<b>{title}</b>")
        self.help = QToolButton()
        self.help.setText("?")
        self.help.setToolTip(f"What the {title.lower()} view shows, why it matters, its formula and reference")
        self.help.clicked.connect(self.show_help)
        self.state = QLabel("")
        self.state.setStyleSheet("color: #666")
        self.explanation = QLabel("")
        self.explanation.setWordWrap(True)
        self.explanation.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.explanation.setTextInteractionFlags(Qt.TextSelectableByMouse)
        # a fixed room of five lines (scrolled beyond): a label that changes height re-lays out every widget up
        # to the window, one event-loop pass per level, and moves the plot (half the cost of a draw)
        text_area = QScrollArea()
        text_area.setWidget(self.explanation)
        text_area.setWidgetResizable(True)
        text_area.setFrameShape(QFrame.NoFrame)
        text_area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        text_area.setFixedHeight(5 * self.explanation.fontMetrics().lineSpacing() + 6)
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addWidget(self.help)
        head.addWidget(self.state, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(head)
        lay.addWidget(plot, 1)
        lay.addWidget(text_area)
        self.box = None

    def show_help(self) -> None:
        h = HELP[self.key]
        self.box = QMessageBox(QMessageBox.Information, h.title, help_text(self.key), QMessageBox.Ok, self)
        self.box.setAttribute(Qt.WA_DeleteOnClose)
        self.box.open()  # not exec(): the window and its workers go on

    def say(self, explanation: str, state: str = "") -> None:
        self.explanation.setText(explanation)
        self.state.setText(state)


class ConceptsView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.tabs = QTabWidget()
        self.pages = {}
        for key, title, cls in PAGES:
            page = ConceptPage(key, HELP[key].title, cls())
            self.pages[key] = page
            self.tabs.addTab(page, title)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)

    def current(self) -> ConceptPage:
        return self.tabs.currentWidget()

    def select(self, key: str) -> None:
        self.tabs.setCurrentWidget(self.pages[key])


class Concepts:
    """Computes the page in sight when it is shown and whenever the layer, the plan or its results change."""

    def __init__(self, window):
        self.window = window
        self.view = ConceptsView()
        self.shown_for = None  # what the current page shows (its key), None: nothing yet
        self.pending_for = None  # what the job in flight was asked for
        self.granularity: Optional[str] = None  # the granularity chosen on the page (None: the plan's)
        self._graph = None  # (model id, ModelGraph)
        self._inputs: dict = {}  # layer -> its input shape on the example input
        s = window.session
        s.on("model", self._on_model)
        s.on("selection", lambda: setattr(self, "granularity", None))
        for event in ("model", "plan", "results", "selection", "data"):
            s.on(event, self.refresh)
        self.view.tabs.currentChanged.connect(lambda *_: self.refresh())
        window.tabs.currentChanged.connect(lambda *_: self.refresh())
        grain = self.view.pages["granularity"].plot
        grain.granularity_chosen.connect(self._choose_granularity)
        graph = self.view.pages["graph"].plot
        graph.layer_clicked.connect(lambda name: s.select([name]))
        graph.measure_chosen.connect(lambda _: self.refresh(force=True))

    def visible(self) -> bool:
        return self.window.tabs.currentWidget() is self.view

    def _on_model(self) -> None:
        self._graph, self._inputs, self.shown_for = None, {}, None

    def _choose_granularity(self, g: str) -> None:
        self.granularity = g
        self.refresh()

    def wanted(self) -> Optional[tuple]:
        s = self.window.session
        if s.loaded is None:
            return None
        page = self.view.current().key
        layer = s.current if page in LAYER_PAGES else None
        results = id(s.results) if page in ("pipeline", "graph") else None
        # the teacher page: the fine-tuned model and the eval data it runs on
        tuned = (id(s.finetuned), id(s.loaded.eval_data)) if page == "outputs" else None
        return page, layer, plan_key(s.plan), self.granularity if page == "granularity" else None, results, tuned

    def refresh(self, force: bool = False) -> None:
        """Compute the page in sight if what it shows is not what the model, layer and plan are now."""
        if not self.visible():
            self.window.workers.cancel(CHANNEL)  # a page out of sight does no work
            if self.pending_for is not None:
                self.pending_for = None
                self.view.current().say(self.view.current().explanation.text())
            return
        want = self.wanted()
        page = self.view.current()
        if want is None or (want == self.shown_for and not force):
            return self._drop_pending(page)
        key = page.key
        if key in LAYER_PAGES and want[1] is None:
            self._drop_pending(page)
            self.shown_for = want
            return page.say("", "select a layer")
        if key == "pipeline":
            self._drop_pending(page)
            return self._pipeline(page, want)
        job = self._layer_job(key) if key in LAYER_PAGES else getattr(self, f"_{key}_job")()
        if job is None:  # drawn from what the window holds (or nothing to compute): no job in flight
            return self._drop_pending(page, keep_state=True)
        page.say(page.explanation.text(), "computing…")
        self.pending_for = want

        def done(view):
            self.pending_for = None
            if self.wanted() != want:  # the layer or plan moved on meanwhile: the next request redraws
                return
            self.shown_for = want
            self._show(page, view)

        def failed(message):
            self.pending_for = None
            self.shown_for = want
            page.say(f"{message}", "could not compute")

        self.window.workers.submit(CHANNEL, job, done, failed, subject=want[1] or "")

    def _drop_pending(self, page: ConceptPage, keep_state: bool = False) -> None:
        """Cancel the job in flight, if any: what it was asked for is not what the page shows now."""
        if self.pending_for is None:
            return
        self.window.workers.cancel(CHANNEL)
        self.pending_for = None
        if not keep_state:
            page.say(page.explanation.text())

    def _show(self, page: ConceptPage, view) -> None:
        if page.key == "graph":
            return self._draw_graph(page, view)
        # an empty plot hidden (the text says why); the granularity page keeps its chooser in sight
        page.plot.setVisible(getattr(view, "drawable", True) or page.key == "granularity")
        page.plot.draw(view)
        page.say(view.explain())

    # ------------------------------------------------------------------------------ the pages' jobs
    def _layer_job(self, key: str):
        s = self.window.session
        name = s.current
        loaded, info, previewer, settings, plan = s.loaded, s.info, s.previewer, s.settings(name), s.plan
        g, shapes = self.granularity, self._inputs
        return lambda p: layer_concept(key, loaded, info, previewer, name, settings, g, shapes, p, plan)

    def _graph_job(self):
        s = self.window.session
        if self._graph is not None and self._graph[0] == id(s.loaded):
            self._draw_graph(self.view.pages["graph"], self._graph[1])
            self.shown_for = self.wanted()
            return None
        loaded, info = s.loaded, s.info
        return lambda p: model_graph(loaded.model, info, p)

    def _outputs_job(self):
        s = self.window.session
        ev = s.loaded.eval_data
        page = self.view.pages["outputs"]
        if ev is None or not len(ev):
            page.say("Teacher and student need eval data: File → Open eval data", "")
            return None
        loaded, previewer, plan, tuned = s.loaded, s.previewer, s.plan, s.finetuned

        def job(progress):
            models = {"teacher (original)": loaded.model}
            build = scaled(progress, 0.0, 0.5, "building the compressed model")  # cancellable
            if tuned is not None:
                models["compressed, before fine-tuning"] = previewer.build(tuned.plan, build, count=False).model
                models["fine-tuned"] = tuned.compressed.model
            else:
                models["compressed (this plan)"] = previewer.build(plan, build, count=False).model
            return outputs_view(models, ev, progress=scaled(progress, 0.5, 1.0))
        return job

    # ------------------------------------------------------------------------------ drawn from the results
    def _pipeline(self, page: ConceptPage, want) -> None:
        s = self.window.session
        results = s.results
        if results is None or not s.results_current:  # the last plan's numbers: drawn when this one's come
            return page.say(page.explanation.text(), "measuring the plan…")
        self.shown_for = want
        view = pipeline_view(results)
        page.plot.draw(view)
        page.say(view.explain())

    def _draw_graph(self, page: ConceptPage, graph) -> None:
        s = self.window.session
        self._graph = (id(s.loaded), graph)
        measure = page.plot.current_measure()
        values = graph_values(s.results, measure, self._sensitivity())
        page.plot.draw(graph, values, s.current)
        page.say(graph.explain(values, measure), "" if s.results_current or measure == "sensitivity" else
                 "measuring the plan… (the colours are the last plan's)")

    def _sensitivity(self) -> dict:
        """Per layer, best minus worst accuracy over the Sensitivity tab's measured points."""
        out: dict = {}
        for p in getattr(self.window.sensitivity.view, "points", {}).values():
            if p.metric is not None:
                lo, hi = out.get(p.layer, (p.metric, p.metric))
                out[p.layer] = (min(lo, p.metric), max(hi, p.metric))
        return {k: hi - lo for k, (lo, hi) in out.items()}

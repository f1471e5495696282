"""The explorer window: the one place where views are wired to the session and to background work.

Data flow: a view asks for a change -> the session changes (plan, selection) and emits an event -> this
window marks what is stale and submits engine work (:mod:`explorer.gui.qt_jobs`) on a channel -> the result
arrives on the GUI thread (only if still current) -> the session stores it -> the views redraw. Views never
touch tensors. Menus (:mod:`~explorer.gui.qt_menus`) and exports (:mod:`~explorer.gui.qt_export`) live in
modules of their own.
"""

from __future__ import annotations

import os
from typing import Optional

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (QFileDialog, QInputDialog, QLabel, QMainWindow, QMessageBox, QSplitter, QTabWidget,
                               QVBoxLayout, QWidget)

from explorer.engine.errors import ExplorerError
from explorer.engine.inspect import inspect_model
from explorer.engine.measure.datafit import check_eval_data
from explorer.engine.measure.preview import warm_up
from explorer.engine.model.data import load_eval_data
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.progress import scaled
from explorer.engine.samples import SAMPLES_DIR
from explorer.gui.qt_auto import AutoRun
from explorer.gui.qt_autosave import Autosave
from explorer.gui.qt_centroids import CentroidView
from explorer.gui.qt_compare import CompareView
from explorer.gui.qt_concepts import Concepts
from explorer.gui.qt_controls import Controls
from explorer.gui.qt_empty import EmptyState
from explorer.gui.qt_export import Exports
from explorer.gui.qt_finetune import Finetuning
from explorer.gui.qt_jobs import Jobs
from explorer.gui.qt_layer_table import LayerTable
from explorer.gui.qt_layer_view import LayerView
from explorer.gui.qt_menus import Menus
from explorer.gui.qt_messages import Messages, job_line
from explorer.gui.qt_preview import PreviewPanel
from explorer.gui.qt_sensitivity import Sensitivity
from explorer.gui.qt_threshold import ThresholdLines
from explorer.gui.workers import Workers, freeze_heap
from explorer.session import ModelSource, Session

MODEL_FILTER = "Models (*.pt *.pth *.safetensors *.onnx *.cexp);;All files (*)"
DATA_FILTER = "Eval data (*.npz *.npy *-idx3-ubyte *-idx3-ubyte.gz *.gz);;All files (*)"
TABLE_SLACK = 8  # pixels beside the table's columns: the splitter pane's frame
BANNER_STYLE = ("QLabel { color: #900; background: #fdecea; border: 1px solid #e6a4a0; border-radius: 3px; "
                "padding: 4px 8px; }")


def data_message(message: str) -> str:
    """An eval-data failure said once as such: "Eval data: …", unless the engine's message already says it."""
    if message.lower().startswith("eval data"):
        return message[:1].upper() + message[1:]
    return f"Eval data: {message}"


def _import_now() -> None:
    """Import what the engine's jobs would otherwise import on a worker while the window runs: torch
    imports its compiler front end (torch._dynamo, ~1.2 s) the first time a model runs under the MACs
    counter, and an import holds the GIL in stretches of 50-100 ms (compiling generated code, reading
    modules), each a frozen window. Once per process, before the window is shown."""
    import torch._dynamo  # noqa: F401  (deferred on purpose: imported here, before the window shows)


class MainWindow(QMainWindow):
    def __init__(self, settings: Optional[QSettings] = None, state_dir=None):
        super().__init__()
        self.setWindowTitle("Compression Explorer")
        self.resize(1400, 900)
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("compression-explorer", "explorer")
        self.session = Session()
        self.workers = Workers(self, threads=2)
        self.jobs = Jobs(self)
        self.exports = Exports(self)
        self.finetuning = Finetuning(self)  # Compress -> Fine-tune…: its dialog and runs
        self.auto = AutoRun(self)  # Plan -> Auto…: its dialog and searches
        self.sensitivity = Sensitivity(self)  # the Sensitivity tab: its view and scans
        self.last_error: Optional[str] = None

        self.table = LayerTable(self.session)
        self.layer_view = LayerView()
        self.centroids = CentroidView()
        self.controls = Controls()
        self.preview = PreviewPanel(settings=self.settings)
        self.banner = QLabel("")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet(BANNER_STYLE)
        self.banner.setVisible(False)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.layer_view, "Layer histogram")
        self.tabs.addTab(self.centroids, "Centroid comparison")
        self.tabs.addTab(self.sensitivity.view, "Sensitivity")
        self.compare = CompareView(self.session, self.statusBar().showMessage)
        self.tabs.addTab(self.compare, "Compare plans")
        self.concepts = Concepts(self)  # the Concepts tab: a view per compression concept, computed when shown
        self.tabs.addTab(self.concepts.view, "Concepts")
        self._lay_out()
        self.messages = Messages(self)  # the banner's and status bar's messages, each gone with its cause
        self.menus = Menus(self)
        self.empty.update()  # no model yet: the empty page, the controls and model actions disabled

        s = self.session
        s.on("model", self._on_model)
        s.on("plan", self._on_plan)
        s.on("selection", self._on_selection)
        s.on("results", self._on_results)
        self.table.selectionModel().selectionChanged.connect(lambda *_: s.select(self.table.selected_names()))
        self.controls.changed.connect(self._apply_patch)
        self.controls.apply_all.connect(lambda patch: self._apply_patch(patch, self.session.layer_names))
        self.threshold = ThresholdLines(self)  # the ±t lines and the sparsity slider
        self.autosave = Autosave(self, state_dir)  # the session kept in the user's state directory
        self.workers.progress.connect(self._progress)
        self.workers.unhandled.connect(lambda channel, layer, message: self.show_error(
            job_line(channel, layer, message), cause=("job", layer) if layer else ("other",)))
        self.tabs.currentChanged.connect(lambda *_: self.jobs.schedule_layer())
        self.tabs.currentChanged.connect(lambda *_: self.sensitivity.shown())
        self.statusBar().showMessage("Open a model (File → Open, drag a file here, or File → Samples)")
        _import_now()
        # paint every view once now, off screen: the first paint of a plot (fonts, axis layouts, symbol
        # atlases) took ~100 ms on the GUI thread, and would otherwise fall in the first use of a tab
        for view in (self.layer_view, self.preview):
            view.grab()
        self.centroids.warm_up()
        self.sensitivity.view.warm_up()

    def _lay_out(self) -> None:
        left = QSplitter(Qt.Vertical)
        left.addWidget(self.table)
        left.addWidget(self.controls)
        left.setSizes([520, 300])
        right = QSplitter(Qt.Vertical)
        right.addWidget(self.tabs)
        right.addWidget(self.preview)
        right.setSizes([520, 360])
        main = QSplitter(Qt.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setSizes([640, 760])
        self._split = main
        self._split_moved = False  # by the user: then the width they chose stays
        main.splitterMoved.connect(lambda *_: setattr(self, "_split_moved", True))
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.banner)
        self.empty = EmptyState(self, main)  # the empty page until a model is open, then the splitter
        lay.addWidget(self.empty.stack, 1)
        self.setCentralWidget(central)

    # ----------------------------------------------------------------------------------- errors
    def show_error(self, message: str, dialog: bool = False, cause: tuple = ("other",)) -> None:
        """``message`` in the banner until its ``cause`` no longer holds (see :mod:`~explorer.gui.qt_messages`)."""
        self.last_error = message
        self.messages.error(message, cause)
        if dialog and self.isVisible():
            box = QMessageBox(QMessageBox.Warning, "Compression Explorer", message, QMessageBox.Ok, self)
            box.setAttribute(Qt.WA_DeleteOnClose)
            box.open()  # not exec(): the event loop and the workers keep running

    def clear_error(self) -> None:
        self.messages.clear()

    # ----------------------------------------------------------------------------------- loading
    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open model", "", MODEL_FILTER)
        if path:
            self.open_model(path)

    def open_folder_dialog(self) -> None:
        """A Hugging Face model folder (config.json + model.safetensors)."""
        path = QFileDialog.getExistingDirectory(self, "Open Hugging Face folder", "")
        if path:
            self.open_model(path)

    def open_model(self, source: str, factory: Optional[str] = None, trust: bool = False,
                   data: Optional[str] = None, factory_kwargs: Optional[dict] = None, then=None) -> None:
        """Load a model in the background; the current one stays usable until the new one is ready.
        ``then(ok, message)``: called once it is open (True, "") or could not be (False, why: not shown)."""
        self.statusBar().showMessage(f"loading {source}…")
        self.empty.opening(source)
        origin = ModelSource(source, factory, trust, dict(factory_kwargs or {}), data)

        def job(progress):
            loaded = load_model(source, factory=factory, trust=trust, data=data, factory_kwargs=factory_kwargs)
            progress(0.5, "inspecting layers")
            info = inspect_model(loaded.model, loaded.example_input, progress=scaled(progress, 0.5, 1.0))
            warm_up()  # the kernels the first slider release needs are loaded now, not then
            freeze_heap()  # the model's objects (and the kernels') stay out of full garbage collections
            return loaded, info

        def failed(message):
            self.empty.opening(None)
            # the engine's messages name the file already; a factory or sample name may need saying
            said = message if str(source) in message else f"{source}: {message}"
            if then is not None:
                return then(False, said)
            self.show_error(f"Could not open {said}", dialog=True)

        def done(result):
            self._loaded(result, origin)
            if then is not None:
                then(True, "")

        self.workers.submit("load", job, done, failed)

    def _loaded(self, result, origin: ModelSource) -> None:
        loaded, info = result  # a compressed file is explored as it is: no plan
        self.clear_error()
        self.menus.remember(loaded.source)
        self.setWindowTitle(f"Compression Explorer — {loaded.source}")
        self.session.set_model(loaded, info, source=origin)
        self.statusBar().showMessage(f"{loaded.source}: {len(info.layers)} compressible layers, "
                                     f"{info.total_params:,} parameters")

    def open_data_dialog(self) -> None:
        if self.session.loaded is None:
            return self.show_error("Open a model first")
        path, _ = QFileDialog.getOpenFileName(self, "Open eval data", "", DATA_FILTER)
        if path:
            self.open_data(path)

    def open_data_factory_dialog(self) -> None:
        if self.session.loaded is None:
            return self.show_error("Open a model first")
        ref, ok = QInputDialog.getText(self, "Eval data from a factory",
                                       "package.module:callable (returns EvalData, (x[, y]) or {'x', 'y'}):")
        if ok and ref.strip():
            self.open_data(ref.strip())

    def open_data(self, path: str) -> None:
        """Load eval data (a file, or a ``package.module:callable`` factory) in the background; the accuracy
        is then measured on it."""
        def done(data):
            self.session.set_eval_data(data, source=path)
            self.statusBar().showMessage(f"eval data: {data.name}")
            # the centroid tab's accuracy per init is measured on the data too: measured again
            self.jobs.schedule_preview(then_layer=self.tabs.currentWidget() is self.centroids)

        loaded = self.session.loaded  # the model the data must fit, checked on two samples before it is used
        self.workers.submit("data", lambda progress: check_eval_data(loaded, load_eval_data(path)), done,
                            lambda m: self.show_error(data_message(m), True, cause=("data",)))

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        urls = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_model(urls[0])

    # ----------------------------------------------------------------------------------- plan
    def _apply_patch(self, patch: dict, names=None) -> None:
        names = names or self.session.selection
        if not names:
            return
        try:
            self.session.update_layers(names, patch)
            self.clear_error()
        except ExplorerError as exc:
            self.show_error(str(exc), cause=("edit",))

    def load_plan_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load plan", str(SAMPLES_DIR), "Plans (*.json)")
        if path:
            self.load_plan(path)

    def load_plan(self, path: str) -> None:
        try:
            plan = Plan.load(path)
            plan.resolve(self.session.layer_names)
        except ExplorerError as exc:
            return self.show_error(str(exc), dialog=True)
        self.session.set_plan(plan)
        self.statusBar().showMessage(f"plan {os.path.basename(path)} loaded")

    def save_plan_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save plan", "plan.json", "Plans (*.json)")
        if path:
            try:
                self.session.plan.save(path)
                self.statusBar().showMessage(f"plan saved to {path}")
            except OSError as exc:
                self.show_error(f"Could not save the plan: {exc}", dialog=True)  # names the path

    # ----------------------------------------------------------------------------------- events
    def _on_model(self) -> None:
        self.table.model_.refresh()
        self.table.resizeColumnsToContents()
        self._fit_table()
        if self.session.selection:
            self.table.select_names(self.session.selection)

    def _fit_table(self) -> None:
        """Give the layer table the width its columns need (every column, the sizes and ratio included, in
        view without scrolling), up to 55% of the window; the plots get the rest. Not once the user has
        moved the divider, nor before the window is laid out (its sizes are placeholders then)."""
        total = sum(self._split.sizes())
        if self._split_moved or not self.isVisible() or total <= 0:
            return
        need = self.table.needed_width() + 2 * self._split.handleWidth() + TABLE_SLACK
        left = min(max(need, 480), int(0.55 * total))
        self._split.setSizes([left, total - left])

    def _on_plan(self) -> None:
        self.menus.plan_changed()
        # start the engine work before anything is redrawn: the size first, then (once it is shown) the
        # layer view, which finds the changed layer's result in the previewer's cache. The table shows the
        # new settings with their sizes (refreshed with the results): refreshing it here too took the GUI
        # thread ~3 ms while the size was being measured
        self.jobs.schedule_preview(then_layer=True)
        if self.session.current:
            self.controls.load(self.session.settings(self.session.current))

    def _on_selection(self) -> None:
        if self.session.current:
            self.controls.load(self.session.settings(self.session.current))
        self.controls.allow_granularities(self.session.refused_granularities())
        self.controls.allow_lowrank(self.session.refused_lowrank())
        if self.table.selected_names() != self.session.selection:
            self.table.select_names(self.session.selection)
        self.jobs.schedule_layer()

    def _on_results(self) -> None:
        if self.session.results:
            self.preview.show_results(self.session.results)
        self.preview.show_accuracy(self.session.accuracy, "fine-tuned" if self.session.finetuned else "")
        self.table.model_.refresh_values()

    def _progress(self, channel: str, fraction: float, message: str) -> None:
        if channel in ("preview", "accuracy"):
            base = 0.0 if channel == "preview" else 0.5
            self.preview.set_progress(base + 0.5 * fraction)
        if channel in ("export", "load"):
            self.statusBar().showMessage(f"{channel}: {message} ({fraction:.0%})")
        if channel == "export":
            self.exports.progress(fraction)

    # ----------------------------------------------------------------------------------- lifetime
    def idle(self) -> bool:
        """True when no engine work is running (used by --screenshot and tests)."""
        return self.jobs.idle()

    def closeEvent(self, event) -> None:
        self.autosave.finish()  # a clean exit: nothing to offer back next time
        self.workers.shutdown()
        super().closeEvent(event)

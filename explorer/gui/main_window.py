"""The explorer window: the one place where views are wired to the session and to background work.

Data flow: a view asks for a change -> the session changes (plan, selection) and emits an event -> this
window marks what is stale and submits engine work on a channel -> the result arrives on the GUI thread
(only if still current) -> the session stores it -> the views redraw. Views never touch tensors.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QInputDialog, QLabel, QMainWindow, QMessageBox, QProgressDialog, QSplitter,
                               QTabWidget, QVBoxLayout, QWidget)

from explorer.engine import fileformat
from explorer.engine.compress import inspect_model
from explorer.engine.data import load_eval_data
from explorer.engine.errors import ExplorerError
from explorer.engine.evaluate import quality
from explorer.engine.export import export
from explorer.engine.layerview import init_comparison
from explorer.engine.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.preview import Previewer, warm_up
from explorer.engine.progress import report, scaled
from explorer.engine.prune import keep_count
from explorer.engine.samples import SAMPLES_DIR, sample_names
from explorer.gui.qt_centroids import CentroidView
from explorer.gui.qt_controls import Controls
from explorer.gui.qt_layer_table import LayerTable
from explorer.gui.qt_layer_view import LayerView
from explorer.gui.qt_preview import PreviewPanel
from explorer.gui.workers import Workers, freeze_heap
from explorer.session import Session
from explorer.units import human_bytes

MODEL_FILTER = "Models (*.pt *.pth *.safetensors *.cexp);;All files (*)"
DATA_FILTER = "Eval data (*.npz *.npy *-idx3-ubyte *-idx3-ubyte.gz *.gz);;All files (*)"
# Accuracy, the expensive part of a preview, starts once a plan has stood this long (a user stepping
# through values does not start a model build for each), and runs in batches this small: a batch's
# largest layer is then one short stretch of work (ResNet-18 at 224x224: 35 ms at 4 images, 270 ms at
# 32) that a slider release has to share the CPU with before the job stops at its next layer (see
# workers._Job.progress). Small batches were no slower per image on one core (61 vs 73 ms).
ACCURACY_SETTLE = 0.15  # seconds
TABLE_SLACK = 8  # pixels beside the table's columns: the splitter pane's frame
ACCURACY_BATCH = 4


def _wrote(path: str, nbytes: int) -> str:
    return f"Wrote {path}\n{nbytes:,} bytes ({human_bytes(nbytes)})"


def _import_now() -> None:
    """Import what the engine's jobs would otherwise import on a worker while the window runs: torch
    imports its compiler front end (torch._dynamo, ~1.2 s) the first time a model runs under the MACs
    counter, and an import holds the GIL in stretches of 50-100 ms (compiling generated code, reading
    modules), each a frozen window. Once per process, before the window is shown."""
    import torch._dynamo  # noqa: F401


class MainWindow(QMainWindow):
    def __init__(self, settings: Optional[QSettings] = None):
        super().__init__()
        self.setWindowTitle("Compression Explorer")
        self.resize(1400, 900)
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("compression-explorer", "explorer")
        self.session = Session()
        self.workers = Workers(self, threads=2)
        self.last_error: Optional[str] = None
        self._abs_sorted: dict = {}  # layer -> sorted |w| (to turn a dragged threshold into a sparsity)
        self._accuracy_before: Optional[float] = None
        self._compressed_model = None  # the runnable model of the plan whose accuracy was measured last
        self._previewer: Optional[Previewer] = None  # per model: measures plans incrementally
        self._export_dialog: Optional[QProgressDialog] = None  # the last export's

        self.table = LayerTable(self.session)
        self.layer_view = LayerView()
        self.centroids = CentroidView()
        self.controls = Controls()
        self.preview = PreviewPanel()
        self.banner = QLabel("")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("color: #a00")
        self.banner.setVisible(False)

        self.tabs = QTabWidget()
        self.tabs.addTab(self.layer_view, "Layer histogram")
        self.tabs.addTab(self.centroids, "Centroid comparison")
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
        lay.addWidget(main, 1)
        self.setCentralWidget(central)
        self._build_menus()

        s = self.session
        s.on("model", self._on_model)
        s.on("plan", self._on_plan)
        s.on("selection", self._on_selection)
        s.on("results", self._on_results)
        self.table.selectionModel().selectionChanged.connect(lambda *_: s.select(self.table.selected_names()))
        self.controls.changed.connect(self._apply_patch)
        self.controls.apply_all.connect(lambda patch: self._apply_patch(patch, self.session.layer_names))
        self.controls.sparsity_moved.connect(self._sparsity_moving)
        self.layer_view.threshold_dragged.connect(self._threshold_dragged)
        self.layer_view.threshold_released.connect(self._threshold_released)
        self.workers.progress.connect(self._progress)
        self.tabs.currentChanged.connect(lambda *_: self._schedule_layer())
        self.statusBar().showMessage("Open a model (File → Open, drag a file here, or File → Samples)")
        _import_now()
        # paint every view once now, off screen: the first paint of a plot (fonts, axis layouts, symbol
        # atlases) took ~100 ms on the GUI thread, and would otherwise fall in the first use of a tab
        for view in (self.layer_view, self.preview):
            view.grab()
        self.centroids.warm_up()

    # ----------------------------------------------------------------------------------- menus
    def _build_menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        self._action(m, "&Open model…", self.open_dialog, QKeySequence.Open)
        self._action(m, "Open &eval data…", self.open_data_dialog)
        self._action(m, "Eval data from a &factory…", self.open_data_factory_dialog)
        self.recent_menu = m.addMenu("Open &recent")
        samples = m.addMenu("&Samples")
        for name in sample_names():
            self._action(samples, name, lambda checked=False, n=name: self.open_model(n))
        m.addSeparator()
        self._action(m, "E&xport compressed file (.cexp)…", self.export_dialog, QKeySequence("Ctrl+E"))
        std = m.addMenu("Export &standard format")
        for label, ext in (("Dense state_dict (.safetensors)…", ".safetensors"), ("TorchScript (.pt)…", ".pt"),
                           ("ONNX (.onnx)…", ".onnx")):
            self._action(std, label, lambda checked=False, e=ext: self.export_standard_dialog(e))
        m.addSeparator()
        self._action(m, "&Quit", self.close, QKeySequence.Quit)
        p = self.menuBar().addMenu("&Plan")
        self._action(p, "&Load plan…", self.load_plan_dialog)
        self._action(p, "&Save plan…", self.save_plan_dialog, QKeySequence.Save)
        self._action(p, "&Reset (no compression)", lambda: self.session.set_plan(Plan()))
        e = self.menuBar().addMenu("&Edit")
        self.undo_action = self._action(e, "&Undo", self.session.undo, QKeySequence.Undo)
        self.redo_action = self._action(e, "&Redo", self.session.redo, QKeySequence.Redo)
        self._refresh_recent()

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(shortcut)
        a.triggered.connect(lambda checked=False: slot())
        menu.addAction(a)
        return a

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.recent_files():
            self._action(self.recent_menu, path, lambda checked=False, p=path: self.open_model(p))
        self.recent_menu.setEnabled(bool(self.recent_files()))

    def recent_files(self) -> list:
        value = self.settings.value("recent", []) or []
        return [v for v in (value if isinstance(value, list) else [value]) if v]

    def _remember(self, source: str) -> None:
        if source in sample_names():
            return
        items = [source] + [r for r in self.recent_files() if r != source]
        self.settings.setValue("recent", items[:8])
        self._refresh_recent()

    # ----------------------------------------------------------------------------------- errors
    def show_error(self, message: str, dialog: bool = False) -> None:
        self.last_error = message
        self.banner.setText(message)
        self.banner.setVisible(True)
        self.statusBar().showMessage(message.splitlines()[0][:200])
        if dialog and self.isVisible():
            box = QMessageBox(QMessageBox.Warning, "Compression Explorer", message, QMessageBox.Ok, self)
            box.setAttribute(Qt.WA_DeleteOnClose)
            box.open()  # not exec(): the event loop and the workers keep running

    def clear_error(self) -> None:
        self.banner.setVisible(False)

    # ----------------------------------------------------------------------------------- loading
    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open model", "", MODEL_FILTER)
        if path:
            self.open_model(path)

    def open_model(self, source: str, factory: Optional[str] = None, trust: bool = False,
                   data: Optional[str] = None) -> None:
        """Load a model in the background; the current one stays usable until the new one is ready."""
        self.statusBar().showMessage(f"loading {source}…")

        def job(progress):
            loaded = load_model(source, factory=factory, trust=trust, data=data)
            progress(0.5, "inspecting layers")
            info = inspect_model(loaded.model, loaded.example_input, progress=scaled(progress, 0.5, 1.0))
            warm_up()  # the kernels the first slider release needs are loaded now, not then
            freeze_heap()  # the model's objects (and the kernels') stay out of full garbage collections
            plan = None
            if loaded.kind == "compressed":
                plan = None  # a compressed file is explored as it is
            return loaded, info, plan

        def failed(message):
            # the engine's messages name the file already; a factory or sample name may need saying
            said = message if str(source) in message else f"{source}: {message}"
            self.show_error(f"Could not open {said}", dialog=True)

        self.workers.submit("load", job, self._loaded, failed)

    def _loaded(self, result) -> None:
        loaded, info, plan = result
        self.clear_error()
        self._abs_sorted.clear()
        self._previewer = Previewer(loaded)
        self._compressed_model = None
        self._accuracy_before = None
        self._remember(loaded.source)
        self.setWindowTitle(f"Compression Explorer — {loaded.source}")
        self.session.set_model(loaded, info, plan)
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
        def job(progress):
            return load_eval_data(path)

        def done(data):
            self.session.loaded.eval_data = data
            self._accuracy_before = None
            self.statusBar().showMessage(f"eval data: {data.name}")
            self.schedule_preview()

        self.workers.submit("data", job, done, lambda m: self.show_error(f"Eval data: {m}", True))  # m names the source

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
            self.show_error(str(exc))

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
                self.show_error(f"Could not save the plan to {path}: {exc}", dialog=True)

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
        self.undo_action.setEnabled(self.session.can_undo())
        self.redo_action.setEnabled(self.session.can_redo())
        # start the engine work before anything is redrawn: the size first, then (once it is shown) the
        # layer view, which finds the changed layer's result in the previewer's cache. The table shows the
        # new settings with their sizes (refreshed with the results): refreshing it here too took the GUI
        # thread ~3 ms while the size was being measured
        self.schedule_preview(then_layer=True)
        if self.session.current:
            self.controls.load(self.session.settings(self.session.current))

    def _on_selection(self) -> None:
        if self.session.current:
            self.controls.load(self.session.settings(self.session.current))
        if self.table.selected_names() != self.session.selection:
            self.table.select_names(self.session.selection)
        self._schedule_layer()

    def _on_results(self) -> None:
        if self.session.results:
            self.preview.show_results(self.session.results)
        self.preview.show_accuracy(self.session.accuracy)
        self.table.model_.refresh_values()

    def _progress(self, channel: str, fraction: float, message: str) -> None:
        if channel in ("preview", "accuracy"):
            base = 0.0 if channel == "preview" else 0.5
            self.preview.set_progress(base + 0.5 * fraction)
        if channel in ("export", "load"):
            self.statusBar().showMessage(f"{channel}: {message} ({fraction:.0%})")
        if channel == "export" and self._export_dialog is not None:
            self._export_dialog.setValue(int(round(100 * fraction)))

    # ----------------------------------------------------------------------------------- engine work
    def schedule_preview(self, then_layer: bool = False) -> None:
        """Measure the current plan: sizes and MACs first, then accuracy. A newer plan supersedes both.
        ``then_layer``: redraw the layer view once the sizes are shown (or failed) — its job would otherwise
        run beside the delivery of the sizes on the GUI thread, and delay it."""
        loaded, previewer = self.session.loaded, self._previewer
        if loaded is None or previewer is None:
            return
        plan = self.session.plan
        self.workers.cancel("accuracy")
        self.workers.cancel("prepare")  # the measurement computes what it needs of it itself
        if then_layer:
            self.workers.cancel("layer")  # the view of the plan before: it would queue before this measurement
        self.preview.set_stale(True, "measuring size and MACs…")
        self.preview.set_progress(0.0)

        def job(progress):
            return previewer.measure(plan, progress)

        def done(summary):
            self.session.set_results(summary)
            if then_layer:
                self._schedule_layer()
            self.schedule_accuracy(plan)

        def failed(message):
            self.preview.set_progress(None)
            self.preview.set_stale(True, "this plan cannot be applied")
            self.table.model_.refresh_values()
            self.show_error(message)
            if then_layer:
                self._schedule_layer()

        self.workers.submit("preview", job, done, failed)

    def schedule_accuracy(self, plan: Plan) -> None:
        loaded, previewer = self.session.loaded, self._previewer
        before = self._accuracy_before
        self.preview.set_stale(True, "measuring accuracy…", sizes=False)

        def job(progress):
            # the sizes and MACs are known from the preview: only the runnable model is built here
            model = previewer.build(plan, scaled(progress, 0.0, 0.2), count=False).model
            return model, quality(loaded, model, scaled(progress, 0.2, 1.0), before=before,
                                  batch_size=ACCURACY_BATCH)

        def done(result):
            model, q = result
            self._compressed_model = model
            if q is not None and "before" in q:
                self._accuracy_before = q["before"]
            self.session.set_accuracy(q)
            self.preview.set_progress(None)
            self.preview.set_stale(False)
            freeze_heap()  # a quiet moment: what the first measurements loaded (kernels, caches) stays put

        def failed(message):
            self.preview.set_progress(None)
            self.preview.set_stale(False)
            self.show_error(f"accuracy: {message}")

        self.workers.submit("accuracy", job, done, failed, delay=ACCURACY_SETTLE)

    def _schedule_layer(self) -> None:
        name, loaded, previewer = self.session.current, self.session.loaded, self._previewer
        if name is None or loaded is None or previewer is None:
            return
        module = previewer.modules[name]
        settings = self.session.settings(name)
        if self.tabs.currentWidget() is self.centroids:
            self.workers.submit("inits", lambda p: init_comparison(name, module, settings, progress=p),
                                self.centroids.show_comparison, self.show_error)
            return

        def job(progress):
            preview = previewer.layer(name, settings, progress=progress)
            abs_sorted = None if name in self._abs_sorted else previewer.sorted_magnitudes(name)
            return preview, abs_sorted

        def done(result):
            preview, abs_sorted = result
            if abs_sorted is not None:
                self._abs_sorted[name] = abs_sorted
            self.layer_view.show_preview(preview)
            if self.controls.sparsity.isSliderDown():  # a drag goes on: the lines stay with the slider
                self._sparsity_moving(self.controls.sparsity.value())
            elif not preview.threshold and self._idle_threshold() is not None:
                # nothing element-pruned: lines at a starting position, so they can be dragged in
                self.layer_view.show_threshold_lines(self._idle_threshold())
            self._schedule_prepare(name, settings)

        self.workers.submit("layer", job, done, self.show_error)

    def _schedule_prepare(self, name: str, settings) -> None:
        """While the user looks at a layer: measure it ahead at every amount its sparsity slider gives."""
        previewer = self._previewer
        if previewer is not None:
            self.workers.submit("prepare", lambda p: previewer.prepare(name, settings, p), lambda _: None,
                                lambda _: None)  # speculative: a release that needs it reports its own errors

    def _sorted_abs(self) -> Optional[np.ndarray]:
        """The current layer's sorted |w| (None until its first histogram job has brought them)."""
        sorted_abs = self._abs_sorted.get(self.session.current or "")
        return sorted_abs if sorted_abs is not None and sorted_abs.size else None

    def _idle_threshold(self) -> Optional[float]:
        """Where the ±t lines wait on a layer with no element pruning: at its 10 % quantile of |w|."""
        sorted_abs = self._sorted_abs()
        return None if sorted_abs is None else float(sorted_abs[sorted_abs.size // 10])

    def _sparsity_for(self, t: float) -> Optional[int]:
        sorted_abs = self._sorted_abs()
        if sorted_abs is None:
            return None
        if sorted_abs.dtype == np.float32:  # count |w| < t exactly: the smallest float32 >= t is the bound
            t32 = np.float32(t)
            t = t32 if float(t32) >= t else np.nextafter(t32, np.float32(np.inf))
        frac = np.searchsorted(sorted_abs, t, side="left") / sorted_abs.size
        return int(min(max(round(frac * 100), 0), 99))

    def _threshold_for(self, percent: int) -> Optional[float]:
        """The pruning threshold (smallest kept |w|; 0 when nothing is pruned) of the current layer at
        ``percent`` element sparsity, from its sorted magnitudes: what the layer view shows once the
        release is measured."""
        sorted_abs = self._sorted_abs()
        if sorted_abs is None:
            return None
        pruned = sorted_abs.size - keep_count(sorted_abs.size, percent / 100.0)  # keep_count >= 1
        return float(sorted_abs[pruned]) if pruned else 0.0

    def _sparsity_moving(self, percent: int) -> None:
        """While the sparsity slider is dragged, the threshold lines follow it (a lookup; the histogram and
        sizes are measured when it is released). Not for channel pruning, nor for a layer whose weight is
        another's (its settings follow that layer's)."""
        name, previewer = self.session.current, self._previewer
        if (self.controls.granularity.currentText() != "element" or previewer is None
                or previewer.owners.get(name, name) != name):
            return
        t = self._threshold_for(percent)
        if t is None:
            return
        if t == 0:  # 0 %, or too few weights for one to go
            self.layer_view.show_threshold_lines(self._idle_threshold())
            self.statusBar().showMessage(f"sparsity {percent}%: nothing of {name} is pruned")
        else:
            self.layer_view.set_threshold(t)
            self.statusBar().showMessage(f"sparsity {percent}%: {name} weights with |w| < {t:.4g} "
                                         "are pruned when the slider is released")

    def _threshold_dragged(self, t: float) -> None:
        pct = self._sparsity_for(t)
        if pct is not None:
            self.statusBar().showMessage(f"threshold |w| < {t:.4g} prunes {pct}% of {self.session.current}")

    def _threshold_released(self, t: float) -> None:
        pct = self._sparsity_for(t)
        if pct is not None:
            self.controls.granularity.setCurrentText("element")
            self.controls.set_sparsity(pct)

    # ----------------------------------------------------------------------------------- export
    def export_dialog(self) -> None:
        if self.session.loaded is None:
            return self.show_error("Open a model first")
        path, _ = QFileDialog.getSaveFileName(self, "Export compressed model", "model.cexp",
                                              "Compressed model (*.cexp)")
        if path:
            self.export(path)

    def export(self, path: str, on_done=None) -> None:
        """Compress with the current plan and write the .cexp file in the background, with a progress
        dialog that ends with the bytes written (or cancels the export)."""
        loaded, plan, previewer = self.session.loaded, self.session.plan, self._previewer
        dense = (self.session.results or {}).get("size", {}).get("dense")

        def job(progress):
            res = previewer.build(plan, scaled(progress, 0.0, 0.7))
            return fileformat.save(res, path, loaded, progress=scaled(progress, 0.7, 1.0))

        def said(written):
            smaller = f", {dense / written:.1f}× smaller than the dense model" if dense and written else ""
            return _wrote(path, written) + smaller

        def done(written):
            self.last_export = (path, written)
            if on_done:
                on_done(written)

        self._export("Export compressed file", path, job, said, done)

    def export_standard_dialog(self, ext: str) -> None:
        if self.session.loaded is None:
            return self.show_error("Open a model first")
        path, _ = QFileDialog.getSaveFileName(self, "Export", "model" + ext)
        if path:
            self.export_standard(path, fmt="torchscript" if ext == ".pt" else None)

    def export_standard(self, path: str, fmt: Optional[str] = None, on_done=None) -> None:
        """Write the compressed model in a standard format in the background, with a progress dialog:
        ``fmt`` as :func:`explorer.engine.export.export` takes it (None: by the file's extension, a dense
        state_dict as .safetensors, ONNX as .onnx)."""
        loaded, plan, previewer = self.session.loaded, self.session.plan, self._previewer

        def job(progress):
            model = previewer.build(plan, scaled(progress, 0, 0.6), count=False).model
            report(progress, 0.6, "writing")  # the last point where a cancel writes nothing
            return export(model, loaded.example_input, path, fmt=fmt)

        self._export("Export", path, job, lambda out: _wrote(out["path"], out["bytes"]), on_done)

    def _export(self, title: str, path: str, job, said, on_done=None) -> None:
        """Run an export ``job(progress)`` on the "export" channel with a non-modal progress dialog (the
        window keeps working). Its Cancel stops the job at its next report (Workers.stop); a job that has passed
        its last report (the file is being renamed into place) finishes, and the dialog then says what was
        written after all. At the end the dialog and the status bar say ``said(result)``, and the button
        closes the dialog. One export at a time."""
        if self.workers.busy("export"):
            return self.show_error("An export is running: wait for it, or cancel it in its dialog")
        if self._export_dialog is not None:
            old, self._export_dialog = self._export_dialog, None
            old.close()
            old.deleteLater()
        dialog = QProgressDialog(f"Writing {os.path.basename(path)}…", "Cancel", 0, 100, self)
        dialog.setWindowTitle(title)
        dialog.setWindowModality(Qt.NonModal)
        dialog.setAutoClose(False)
        dialog.setAutoReset(False)
        state = {"finished": False}

        def cancelled():
            if not state["finished"]:
                self.workers.stop("export")
                self.statusBar().showMessage(f"cancelling the export of {path}…")

        def done(result):
            state["finished"] = True
            if result is None:
                dialog.close()
                self.statusBar().showMessage(f"export of {path} cancelled; nothing was written")
                return
            text = said(result)
            dialog.setLabelText(text)
            dialog.setValue(100)
            dialog.setCancelButtonText("Close")
            dialog.show()  # again, if Cancel came too late to stop it
            self.statusBar().showMessage(text.replace("\n", ": ", 1))
            if on_done:
                on_done(result)

        def failed(message):
            state["finished"] = True
            dialog.close()
            self.show_error(f"Export failed: {message}", True)

        dialog.canceled.connect(cancelled)
        self._export_dialog = dialog
        dialog.show()
        self.workers.submit("export", job, done, failed)

    # ----------------------------------------------------------------------------------- lifetime
    def idle(self) -> bool:
        """True when no engine work is running (used by --screenshot and tests)."""
        return not any(self.workers.busy(c) for c in ("load", "data", "preview", "accuracy", "layer", "inits",
                                                      "export", "prepare"))

    def closeEvent(self, event) -> None:
        self.workers.shutdown()
        super().closeEvent(event)

"""The window's engine work: what is measured after a change, on which worker channel, and where each
result goes. A newer plan supersedes older work (Workers drops stale results); sizes and MACs come first,
then the layer view and, once the plan has stood for ACCURACY_SETTLE, the accuracy."""

from __future__ import annotations

from explorer.engine.measure.bench import runtime_latency
from explorer.engine.measure.evaluate import quality
from explorer.engine.measure.layerview import init_accuracies, init_comparison
from explorer.engine.plan import Plan
from explorer.engine.progress import scaled
from explorer.session import MeasuredPlans
from explorer.gui.workers import freeze_heap

# Accuracy, the expensive part of a preview, starts once a plan has stood this long (a user stepping
# through values does not start a model build for each), and runs in batches this small: a batch's
# largest layer is then one short stretch of work (ResNet-18 at 224x224: 35 ms at 4 images, 270 ms at
# 32) that a slider release has to share the CPU with before the job stops at its next layer (see
# workers._Job.progress). Small batches were no slower per image on one core (61 vs 73 ms).
ACCURACY_SETTLE = 0.15  # seconds
ACCURACY_BATCH = 4
LATENCY_MAX_BYTES = 256 << 20  # dense weights above which the latency line is not measured in the background
CHANNELS = ("load", "data", "preview", "accuracy", "layer", "inits", "init_accuracy", "export", "prepare", "finetune",
            "auto", "sensitivity", "latency", "concepts")


class Jobs:
    """Submits the window's measurements to its workers and hands the results to the session and views."""

    def __init__(self, window):
        self.window = window

    def schedule_preview(self, then_layer: bool = False) -> None:
        """Measure the current plan: sizes and MACs first, then accuracy. A newer plan supersedes both.
        ``then_layer``: redraw the layer view once the sizes are shown (or failed) — its job would otherwise
        run beside the delivery of the sizes on the GUI thread, and delay it."""
        win = self.window
        session, workers = win.session, win.workers
        previewer = session.previewer
        if session.loaded is None or previewer is None:
            return
        plan = session.plan
        workers.cancel("accuracy")
        workers.cancel("prepare")  # the measurement computes what it needs of it itself
        if then_layer:
            workers.cancel("layer")  # the view of the plan before: it would queue before this measurement
        if session.finetuned is not None:  # it stands for the plan: measured when it was made (its results)
            workers.cancel("preview")
            win.preview.set_progress(None)
            win.preview.set_stale(False, measured=session.finetuned.describe())
            if then_layer:
                self.schedule_layer()
            return
        win.preview.set_stale(True, "measuring size and MACs…")
        win.preview.set_progress(0.0)

        def done(summary):
            session.set_results(summary)
            if then_layer:
                self.schedule_layer()
            self.schedule_accuracy(plan)

        def failed(message):
            win.preview.set_progress(None)
            win.preview.set_stale(True, "this plan cannot be applied")
            win.table.model_.refresh_values()
            win.show_error(message, cause=("plan", MeasuredPlans.key(plan)))  # until another plan is current
            if then_layer:
                self.schedule_layer()

        workers.submit("preview", lambda progress: previewer.measure(plan, progress), done, failed)

    def schedule_accuracy(self, plan: Plan) -> None:
        win = self.window
        session = win.session
        loaded, previewer, before = session.loaded, session.previewer, session.accuracy_before
        win.preview.set_stale(True, "measuring accuracy…", sizes=False)

        def job(progress):
            # the sizes and MACs are known from the preview: only the runnable model is built here
            model = previewer.build(plan, scaled(progress, 0.0, 0.2), count=False).model
            return model, quality(loaded, model, scaled(progress, 0.2, 1.0), before=before,
                                  batch_size=ACCURACY_BATCH)

        def done(result):
            model, q = result
            session.set_accuracy(q, model)
            win.preview.set_progress(None)
            win.preview.set_stale(False)
            freeze_heap()  # a quiet moment: what the first measurements loaded (kernels, caches) stays put
            self.schedule_latency(plan)

        def failed(message):
            win.preview.set_progress(None)
            win.preview.set_stale(False)
            win.show_error(f"accuracy: {message}", cause=("plan", MeasuredPlans.key(plan)))

        win.workers.submit("accuracy", job, done, failed, delay=ACCURACY_SETTLE)

    def schedule_latency(self, plan: Plan) -> None:
        """The plan's compressed model timed dense and under the compressed runtime, on the example input,
        after its accuracy (the model built for it is reused); a newer plan's request drops this one."""
        win = self.window
        loaded, previewer = win.session.loaded, win.session.previewer
        if loaded is None or loaded.example_input is None:
            return win.preview.show_latency(None)
        weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        if weights > LATENCY_MAX_BYTES:  # its forms and forward passes would cost the window 1 GB and stalls
            return win.preview.show_latency(None, f"not timed in the window above {LATENCY_MAX_BYTES >> 20} MB of "
                                                  "weights: compression-explorer bench FILE.cexp times it")

        def job(progress):
            built = previewer.build(plan, scaled(progress, 0.0, 0.1), count=False)
            return runtime_latency(built, loaded.example_input, progress=scaled(progress, 0.1, 1.0),
                                   original=loaded.model)

        def failed(message):  # a model the runtime cannot time (an input that is not one tensor): said in the line
            win.preview.show_latency(None, message)

        win.workers.submit("latency", job, win.preview.show_latency, failed, delay=ACCURACY_SETTLE)

    def schedule_layer(self) -> None:
        """The current layer's view: its histogram (or the centroid comparison, on that tab), then its sizes
        at every slider position measured ahead."""
        win = self.window
        session = win.session
        name, previewer = session.current, session.previewer
        if name is None or session.loaded is None or previewer is None:
            return
        settings = session.settings(name)
        if win.tabs.currentWidget() is win.centroids:
            module = previewer.modules[name]
            win.workers.submit("inits", lambda p: init_comparison(name, module, settings, progress=p),
                               win.centroids.show_comparison, subject=name)  # a failure: the banner, naming it
            self.schedule_init_accuracy(name, settings)
            return
        win.workers.cancel("init_accuracy")  # only the centroid tab shows it

        def job(progress):
            preview = previewer.layer(name, settings, progress=progress)
            magnitudes = None if name in session.magnitudes else previewer.sorted_magnitudes(name)
            return preview, magnitudes

        def done(result):
            preview, magnitudes = result
            if magnitudes is not None:
                session.magnitudes[name] = magnitudes
            win.layer_view.show_preview(preview)
            if win.controls.sparsity.isSliderDown():  # a drag goes on: the lines stay with the slider
                win.threshold.moving(win.controls.sparsity.value())
            elif not preview.threshold and session.idle_threshold() is not None:
                # nothing element-pruned: lines at a starting position, so they can be dragged in
                win.layer_view.show_threshold_lines(session.idle_threshold())
            self.schedule_prepare(name, settings)

        win.workers.submit("layer", job, done, subject=name)  # a failure: the banner, naming the layer

    def schedule_init_accuracy(self, name: str, settings) -> None:
        """With labelled eval data, the accuracy of the model with layer ``name`` quantized by each k-means
        init (the centroid tab's last line), after the comparison on the same side thread."""
        win = self.window
        session = win.session
        ev = session.loaded.eval_data
        if ev is None or not len(ev) or ev.labels is None:
            win.workers.cancel("init_accuracy")
            win.centroids.show_accuracy_state("Accuracy per init: needs eval data with labels "
                                              "(File → Open eval data).")
            return
        loaded, before = session.loaded, session.accuracy_before
        win.centroids.show_accuracy_state(f"Accuracy with only {name} quantized by each init: measuring…")

        def failed(message):
            win.centroids.show_accuracy_state(f"Accuracy per init: {message}")

        win.workers.submit("init_accuracy", lambda p: init_accuracies(loaded, name, settings, progress=p,
                                                                       before=before, batch_size=ACCURACY_BATCH),
                           win.centroids.show_accuracies, failed, subject=name)

    def schedule_prepare(self, name: str, settings) -> None:
        """While the user looks at a layer: measure it ahead at every amount its sparsity slider gives."""
        previewer = self.window.session.previewer
        if previewer is not None:
            # speculative, but a failure here is a failure of the engine on this layer: the banner says it
            self.window.workers.submit("prepare", lambda p: previewer.prepare(name, settings, p), lambda _: None,
                                       subject=name)

    def idle(self) -> bool:
        """True when no engine work is running (used by --screenshot and tests)."""
        return not any(self.window.workers.busy(c) for c in CHANNELS)

"""Compress → Fine-tune…: a non-modal dialog that retrains the current plan's compressed model in the
background (the "finetune" worker channel), with the training loss and the validation accuracy plotted as
each epoch ends, a Cancel that keeps the best epoch so far, and the result made the session's current model
(one undo step; see :class:`explorer.session.Finetuned`).

Threads: the run is a :class:`~explorer.gui.workers.Workers` job. The engine calls ``on_epoch`` on that
worker, which only emits a queued signal (:class:`_Relay`); the plots are drawn on the GUI thread, and the
records of a run that is no longer the dialog's are dropped (each run has a number, as the workers' jobs
have generations). Progress and the running loss arrive through the workers' own progress signal.
"""

from __future__ import annotations

import threading
from typing import Optional

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                               QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from explorer.engine.errors import Cancelled, ExplorerError, LoadError
from explorer.engine.finetune.data import load_train_data
from explorer.engine.finetune.recipe import (MAX_EPOCHS, MAX_STEPS, OPTIMIZERS, SCHEDULES, Distill, Recipe, Schedule,
                                             check_recipe)
from explorer.engine.finetune.trainer import finetune
from explorer.engine.measure.evaluate import quality, summarize
from explorer.gui.qt_job_dialog import JobDialog
from explorer.gui.qt_plot import curve, data_item, plot_widget
from explorer.session import Finetuned

DIGITS = "digits"  # the samples' bundled training split (load_train_data's name for it)
TRAIN_FILTER = "Training data (*.npz *.npy *-idx3-ubyte *-idx3-ubyte.gz *.gz);;All files (*)"
BLUE, GREEN, RED, GREY = (40, 100, 190), (30, 140, 60), (210, 40, 40), (120, 120, 120)
ORANGE = (225, 120, 30)
GROUP_LINES = 48  # the group-lasso plot draws at most this many groups (spread over their final norms)
TICK_EVERY_EPOCH = 20  # up to this many epochs the x axes are labelled at every epoch


def _css(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


class _Relay(QObject):
    """Carries ``(run, kind, payload)`` from the worker to the GUI thread: a signal emitted on the worker and
    delivered, queued, to a slot of this object, which lives on the GUI thread."""

    event = Signal(int, str, object)

    def __init__(self, handler, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._handler = handler
        self.event.connect(self._deliver, Qt.QueuedConnection)

    @Slot(int, str, object)
    def _deliver(self, run: int, kind: str, payload) -> None:
        self._handler(run, kind, payload)


# ----------------------------------------------------------------------------------------- the recipe


def _spin(lo, hi, value, decimals: Optional[int] = None, step=None):
    box = QSpinBox() if decimals is None else QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    return box


def _row(*widgets) -> QWidget:
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    lay.addStretch(1)
    return row


class RecipeForm(QGroupBox):
    """The recipe's fields (a plan's ``"finetune"`` section, :mod:`explorer.engine.finetune.recipe`) and the
    training data. :meth:`load` fills them from a recipe; :meth:`recipe` reads them back, validated by the
    engine (fields not shown here, e.g. momentum and the validation share, keep the loaded recipe's)."""

    def __init__(self, parent=None):
        super().__init__("Recipe", parent)
        self._base = Recipe()
        self.epochs = _spin(1, MAX_EPOCHS, 4)
        self.lr = _spin(0.00001, 10.0, 0.001, decimals=5, step=0.0005)
        self.optimizer = QComboBox()
        self.optimizer.addItems(list(OPTIMIZERS))
        self.batch = _spin(1, 1 << 16, 64)
        self.distill = QCheckBox("from the uncompressed model")
        self.temperature = _spin(0.1, 100.0, 4.0, decimals=1, step=0.5)
        self.alpha = _spin(0.0, 1.0, 0.7, decimals=2, step=0.05)
        self.hints = QLineEdit()
        self.hints.setPlaceholderText("none, or layers: conv2, fc1 (teacher=student to pair two names)")
        self.hints.setToolTip("FitNets (Romero et al. 2015): the student's feature maps of these layers are "
                              "trained towards the uncompressed model's, through a 1x1 regressor where the widths "
                              "differ")
        self.hint_weight = _spin(0.0, 1e6, 1.0, decimals=3, step=0.1)
        self.hint_weight.setToolTip("the hint loss's weight beside the task loss")
        self.ssl = QCheckBox("group lasso first (SSL)")
        self.ssl.setToolTip("Structured sparsity learning (Wen et al. 2016): the uncompressed model trains with λ × "
                            "the L2 norms of the filters and channels the plan removes in its loss, so that they "
                            "shrink towards zero before they are removed; their norms are drawn as they shrink")
        self.ssl_strength = _spin(0.0, 100.0, 0.01, decimals=4, step=0.001)
        self.ssl_strength.setToolTip("λ: the weight of the groups' norms in the loss")
        self.ssl_epochs = _spin(1, MAX_EPOCHS, 4)
        self.schedule = QComboBox()
        self.schedule.addItems(["none"] + list(SCHEDULES))
        self.steps = _spin(1, MAX_STEPS, 4)
        self.per_step = _spin(0, MAX_EPOCHS, 1)
        self.data = QComboBox()
        self.data.addItems(["digits: the samples' training split", "a file or factory…"])
        self.path = QLineEdit()
        self.path.setPlaceholderText("IDX, .npz (x, y), .npy or package.module:callable")
        self.browse = QPushButton("Choose…")
        self.seed = _spin(0, 2 ** 31 - 1, 0)
        self.temperature.setToolTip("temperature T of the soft targets")
        self.alpha.setToolTip("α: the soft (teacher) loss's weight; the labels' loss gets 1 − α")
        self.steps.setToolTip("pruning steps, each followed by its epochs of masked retraining")
        form = QFormLayout(self)
        form.addRow("Epochs", self.epochs)
        form.addRow("Learning rate", self.lr)
        form.addRow("Optimizer", _row(self.optimizer, QLabel("batch"), self.batch))
        form.addRow("Distillation", self.distill)
        form.addRow("", _row(QLabel("T"), self.temperature, QLabel("α"), self.alpha))
        form.addRow("Hints (FitNets)", _row(self.hints, QLabel("weight"), self.hint_weight))
        form.addRow("Sparsity", _row(self.ssl, QLabel("λ"), self.ssl_strength, QLabel("epochs"), self.ssl_epochs))
        form.addRow("Gradual pruning", self.schedule)
        form.addRow("", _row(QLabel("steps"), self.steps, QLabel("epochs/step"), self.per_step))
        form.addRow("Training data", self.data)
        form.addRow("", _row(self.path, self.browse))
        form.addRow("Seed", self.seed)
        note = QLabel("The last 10% of the training data is held out for validation; the best epoch on it is "
                      "kept. Training starts from the plan applied to the original weights.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #555")
        form.addRow(note)
        self.distill.toggled.connect(self._enable)
        self.ssl.toggled.connect(self._enable)
        self.schedule.currentTextChanged.connect(self._enable)
        self.data.currentIndexChanged.connect(self._enable)
        self.browse.clicked.connect(self._choose)
        self._enable()

    def _enable(self, *_) -> None:
        on = self.isEnabled()
        for w in (self.temperature, self.alpha):
            w.setEnabled(on and self.distill.isChecked())
        for w in (self.steps, self.per_step):
            w.setEnabled(on and self.schedule.currentText() != "none")
        for w in (self.ssl_strength, self.ssl_epochs):
            w.setEnabled(on and self.ssl.isChecked())
        for w in (self.path, self.browse):
            w.setEnabled(on and self.data.currentIndex() == 1)

    def changeEvent(self, event) -> None:
        super().changeEvent(event)
        if event.type() == event.Type.EnabledChange:
            self._enable()

    def _choose(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Training data", "", TRAIN_FILTER)
        if path:
            self.path.setText(path)

    def load(self, recipe: Recipe) -> None:
        self._base = recipe
        self.epochs.setValue(max(recipe.epochs, 1))
        self.lr.setValue(recipe.lr)
        self.optimizer.setCurrentText(recipe.optimizer)
        self.batch.setValue(recipe.batch_size)
        d = recipe.distill or Distill()
        self.distill.setChecked(recipe.distill is not None)
        self.temperature.setValue(d.temperature)
        self.alpha.setValue(d.alpha)
        g = recipe.group_lasso
        self.ssl.setChecked(g is not None)
        if g is not None:
            self.ssl_strength.setValue(g.strength)
            self.ssl_epochs.setValue(g.epochs)
        h = recipe.hints
        self.hints.setText(", ".join(t if t == s else f"{t}={s}" for t, s in h.layers) if h is not None else "")
        self.hint_weight.setValue(h.weight if h is not None else 1.0)
        s = recipe.schedule or Schedule()
        self.schedule.setCurrentText(recipe.schedule.kind if recipe.schedule else "none")
        self.steps.setValue(s.steps)
        self.per_step.setValue(s.epochs_per_step)
        self.seed.setValue(min(recipe.seed, self.seed.maximum()))

    def recipe(self) -> Recipe:
        """The recipe the fields say (raises PlanError naming the field the engine refuses)."""
        kind = self.schedule.currentText()
        changes = {"epochs": self.epochs.value(), "lr": self.lr.value(), "optimizer": self.optimizer.currentText(),
                   "batch_size": self.batch.value(), "seed": self.seed.value(),
                   "distill": ({"temperature": self.temperature.value(), "alpha": self.alpha.value()}
                               if self.distill.isChecked() else None),
                   "schedule": (None if kind == "none" else {"kind": kind, "steps": self.steps.value(),
                                                            "epochs_per_step": self.per_step.value()}),
                   "hints": self._hints(),
                   "group_lasso": ({"strength": self.ssl_strength.value(), "epochs": self.ssl_epochs.value()}
                                   if self.ssl.isChecked() else None)}
        return check_recipe(dict(self._base.to_dict(), **changes), "fine-tuning")

    def _hints(self):
        names = [n.strip() for n in self.hints.text().split(",") if n.strip() and n.strip() != "none"]
        if not names:
            return None
        return {"layers": [n.split("=", 1) if "=" in n else n for n in names], "weight": self.hint_weight.value()}

    def train_source(self) -> str:
        if self.data.currentIndex() == 0:
            return DIGITS
        text = self.path.text().strip()
        if not text:
            raise LoadError("choose the training data: a file (IDX, .npz, .npy) or package.module:callable")
        return text


# ----------------------------------------------------------------------------------------- the plots


class TrainingPlots(QWidget):
    """The run's training loss and validation metric per epoch, drawn as the records arrive; at the end the
    plan's model before retraining (epoch 0) and the epoch kept are marked."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss = plot_widget(label_room="0.000")
        self.val = plot_widget(label_room="100.0")
        for plot, title in ((self.loss, "Training loss"), (self.val, "Validation accuracy")):
            plot.setMouseEnabled(False, False)
            plot.hideButtons()
            plot.setTitle(title, color="#222", size="10pt")
            plot.setLabel("bottom", "epoch")
            plot.showGrid(x=True, y=True, alpha=0.15)
        self.loss.setLabel("left", "loss (mean over the epoch)")
        self.val.setLabel("left", "accuracy (%)")
        self.loss_curve = curve(self.loss, [], [], pen=pg.mkPen(BLUE, width=2), symbol="o", symbolSize=6,
                                symbolBrush=BLUE, symbolPen=None)
        self.val_curve = curve(self.val, [], [], pen=pg.mkPen(GREEN, width=2), symbol="o", symbolSize=6,
                               symbolBrush=GREEN, symbolPen=None)
        self.before = data_item([], [], pen=None, symbol="s", symbolSize=9, symbolBrush=(255, 255, 255),
                                symbolPen=pg.mkPen(GREY, width=2))
        self.best = data_item([], [], pen=None, symbol="star", symbolSize=16, symbolBrush=RED, symbolPen=None)
        self.val.addItem(self.before)
        self.val.addItem(self.best)
        self.retrain_lines = []
        for plot in (self.loss, self.val):
            line = pg.InfiniteLine(angle=90, pen=pg.mkPen(GREY, width=1, style=Qt.DashLine), label="plan applied",
                                   labelOpts={"position": 0.92, "color": GREY, "anchors": [(0, 0), (0, 0)]})
            line.setVisible(False)
            plot.addItem(line)
            self.retrain_lines.append(line)
        # what the marks mean, under the plots (a legend inside one covered the points it explains)
        key = QLabel(f"<span style='color:{_css(RED)}'>★</span> the epoch kept (best validation) &nbsp;&nbsp; "
                     f"<span style='color:{_css(GREY)}'>□</span> the plan's model before retraining (epoch 0, "
                     "drawn at the end)")
        key.setStyleSheet("color: #444")
        key.setWordWrap(True)
        # group lasso: each group's L2 norm against the epoch, as they shrink (one layer's, at most GROUP_LINES)
        self.groups = plot_widget(label_room="0.000")
        self.groups.setMouseEnabled(False, False)
        self.groups.hideButtons()
        self.groups.setLabel("bottom", "epoch")
        self.groups.setLabel("left", "group L2 norm")
        self.groups.showGrid(x=True, y=True, alpha=0.15)
        self.groups.setVisible(False)
        self.group_lines: list = []
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.loss)
        row.addWidget(self.val)
        plots = QVBoxLayout()  # the groups' plot below the two, the width of both (shown with group lasso only)
        plots.setContentsMargins(0, 0, 0, 0)
        plots.addLayout(row, 1)
        plots.addWidget(self.groups, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(plots, 1)
        lay.addWidget(key)
        self.records: list = []
        self.reset(4)

    def reset(self, total: int, pruning_epochs: int = 0, metric: str = "accuracy") -> None:
        """A new run of ``total`` epochs, the first ``pruning_epochs`` of them gradual pruning steps."""
        self.records = []
        self.total = max(total, 1)
        for item in (self.loss_curve, self.val_curve, self.before, self.best):
            item.setData([], [])
        for line in self.group_lines:
            self.groups.removeItem(line)
        self.group_lines = []
        self.groups.setVisible(False)
        self.norms_before = None
        for plot in (self.loss, self.val):
            plot.setXRange(-0.4, self.total + 0.4, padding=0)  # room for the marks at epoch 0 and the last
            ticks = [(i, str(i)) for i in range(self.total + 1)] if self.total <= TICK_EVERY_EPOCH else None
            plot.getAxis("bottom").setTicks(None if ticks is None else [ticks])
        for line in self.retrain_lines:
            line.setValue(pruning_epochs + 0.5)
            line.setVisible(pruning_epochs > 0)
        self.set_metric(metric)

    def set_metric(self, metric: str) -> None:
        """``accuracy`` (labelled data) or ``agreement`` (with the uncompressed model's top-1, no labels)."""
        self.val.setTitle(f"Validation {metric}", color="#222", size="10pt")
        self.val.setLabel("left", f"{metric} (%)")

    def set_norms_before(self, norms: Optional[dict]) -> None:
        """Each group's norm before the group lasso's first epoch (drawn at epoch 0)."""
        self.norms_before = norms

    def _draw_groups(self) -> None:
        runs = [r for r in self.records if r.group_norms]
        if not runs:
            return
        last = runs[-1].group_norms  # the layer whose groups went furthest towards zero
        name = max(last, key=lambda n: sum(v < 0.01 for v in last[n]) / max(len(last[n]), 1))
        series = ([self.norms_before[name]] if self.norms_before and name in self.norms_before else []) + \
            [r.group_norms[name] for r in runs]
        xs = ([0] if len(series) > len(runs) else []) + [r.epoch for r in runs]
        n = len(series[-1])
        k = min(n, GROUP_LINES)
        pick = sorted(set(round(i * (n - 1) / max(k - 1, 1)) for i in range(k)))
        order = sorted(range(n), key=lambda g: series[-1][g])  # spread over the final norms, smallest to largest
        for line in self.group_lines:
            self.groups.removeItem(line)
        self.group_lines = []
        for k in pick:
            g = order[k]
            line = curve(self.groups, xs, [s[g] for s in series], pen=pg.mkPen(ORANGE, width=1))
            self.group_lines.append(line)
        near = sum(v < 0.01 for v in series[-1])
        self.groups.setTitle(f"Group lasso: {name}'s groups ({near} of {n} below 0.01)", color="#222", size="10pt")
        self.groups.setVisible(True)

    def add(self, record) -> None:
        self.records.append(record)
        if record.group_norms:
            self._draw_groups()
        x = [r.epoch for r in self.records]
        self.loss_curve.setData(x, [r.loss for r in self.records])
        vals = [(r.epoch, 100 * r.val) for r in self.records if r.val is not None]
        self.val_curve.setData([e for e, _ in vals], [v for _, v in vals])
        retrained = [(r.epoch, 100 * r.val) for r in self.records if r.phase == "retrain" and r.val is not None]
        if retrained:  # the best so far (ties: the first), among the epochs of the plan's own model
            e, v = max(retrained, key=lambda ev: (ev[1], -ev[0]))
            self.best.setData([e], [v])

    def finish(self, result) -> None:
        """Mark what the engine reports: the validation metric before retraining and the epoch kept."""
        self.set_metric(result.metric)
        if result.record.get("group_norms_before"):
            self.norms_before = result.record["group_norms_before"]
            self._draw_groups()
        if result.before is not None:
            self.before.setData([0], [100 * result.before])
        if result.best is not None:
            self.best.setData([result.best_epoch], [100 * result.best])


# ----------------------------------------------------------------------------------------- the dialog


def _epoch_line(record, total: int, metric: str) -> str:
    val = "" if record.val is None else f", validation {metric} {record.val:.2%}"
    return f"Epoch {record.epoch}/{total} ({record.phase}): loss {record.loss:.4f}{val} [{record.seconds:.1f} s]"


def _outcome(ft: Finetuned) -> str:
    """What a finished (or cancelled) run gave, as the engine measured it."""
    r = ft.result
    n, total = len(r.history), check_recipe(r.record["recipe"]).total_epochs()
    head = f"Cancelled after {n} of {total} epochs: kept the best so far" if r.cancelled else f"Done: {n} epochs"
    best = "the plan's model before retraining" if r.best_epoch == 0 else f"epoch {r.best_epoch}"
    val = ""
    if r.best is not None and r.before is not None:
        val = f" (validation {r.metric} {r.best:.2%}; {r.before:.2%} before retraining)"
    q, test = ft.quality, ""
    if q and "after" in q:
        test = f" Accuracy on {q['data']}: {q['before']:.2%} → {q['after']:.2%}."
    elif q:
        test = f" Fidelity on {q['data']}: cosine {q['cosine']:.4f}, rel. error {q['rel_error']:.4f}."
    return f"{head} in {r.record.get('seconds', 0):.1f} s; kept {best}{val}.{test}"


class FinetuneDialog(JobDialog):
    """The recipe, the plots, a progress bar, what the run is doing (or did) and the buttons: Train, Cancel
    (stop at the next batch, keep the best epoch so far), Use this model (a result not applied because the
    plan changed meanwhile) and Close (hides it; a run goes on). It shows; :class:`Finetuning` runs."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Fine-tune the compressed model")
        self.setModal(False)
        self.form = RecipeForm()
        self.plots = TrainingPlots()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setFormat("%p%")
        self.status = QLabel("Set the recipe and press Train.")
        self.note = QLabel("")
        for label in (self.status, self.note):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.note.setStyleSheet("color: #555")
        self.train_button = QPushButton("Train")
        self.start_button = self.train_button
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop at the next batch and keep the best epoch so far")
        self.use_button = QPushButton("Use this model")
        self.use_button.setToolTip("Make this result the current model, with the plan it was trained under")
        self.use_button.setVisible(False)
        self.close_button = QPushButton("Close")
        self.close_button.setToolTip("Hide this dialog; a run goes on and its result still becomes the current "
                                     "model")
        self.train_button.setDefault(True)
        right = QVBoxLayout()
        right.addWidget(self.plots, 1)
        right.addWidget(self.progress)
        right.addWidget(self.status)
        top = QHBoxLayout()
        top.addWidget(self.form)
        top.addLayout(right, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.note, 1)
        for b in (self.train_button, self.cancel_button, self.use_button, self.close_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(top, 1)
        lay.addLayout(buttons)
        self.resize(1100, 540)
        self.set_running(False)

    def on_running(self, running: bool) -> None:
        if running:
            self.use_button.setVisible(False)


# ----------------------------------------------------------------------------------------- the runs


class Finetuning:
    """Compress → Fine-tune… for ``window``: its dialog (made on first use, then kept), one run at a time on
    the "finetune" channel of its workers, and the result handed to the session (``set_finetuned``) if the
    plan it was trained under is still the current one; otherwise the dialog offers it (Use this model)."""

    def __init__(self, window):
        self.window = window
        self.dialog: Optional[FinetuneDialog] = None
        self.run = 0  # the latest run's number: records and results of another are dropped
        self.pending: Optional[Finetuned] = None  # a result not applied: the plan changed while it trained
        self._stop: Optional[threading.Event] = None  # set by Cancel (a stop by the user, not a supersession)
        self._recipe_of = None  # the plan "finetune" section the form was filled from
        self._total, self._metric = 0, "accuracy"
        self._relay = _Relay(self._on_event, window)
        session = window.session
        session.on("model", self._on_model)
        session.on("plan", self._on_plan)
        session.on("finetuned", self._on_finetuned)
        window.workers.progress.connect(self._on_progress)

    @property
    def running(self) -> bool:
        return self.window.workers.busy("finetune")

    def open_dialog(self) -> None:
        win = self.window
        if win.session.loaded is None:
            return win.show_error("Open a model first")
        if self.dialog is None:
            d = self.dialog = FinetuneDialog(win)
            d.train_button.clicked.connect(self.start)
            d.cancel_button.clicked.connect(self.cancel)
            d.use_button.clicked.connect(self.use_pending)
            d.close_button.clicked.connect(d.hide)
            self._load_recipe(force=True)
            self._show_note()
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()

    def start(self) -> None:
        """Train the current plan's model with the dialog's recipe, in the background."""
        win, d = self.window, self.dialog
        session = win.session
        if session.loaded is None or self.running:
            return
        try:
            recipe, source = d.form.recipe(), d.form.train_source()
        except ExplorerError as exc:
            return d.say(str(exc), error=True)
        loaded, plan, before = session.loaded, session.plan, session.accuracy_before
        self.run += 1
        run, relay, stop = self.run, self._relay, threading.Event()
        self._stop, self.pending = stop, None

        def job(progress):
            train = load_train_data(source)
            relay.event.emit(run, "data", train.labelled)
            result = finetune(loaded, plan, train, recipe=recipe, progress=progress,
                              on_epoch=lambda record: relay.event.emit(run, "epoch", record))
            if result.cancelled and not stop.is_set():
                raise Cancelled("fine-tuning superseded")  # the window closes, or another model was opened
            # measured without a progress callback: a Cancel pressed now must not lose the trained model
            return Finetuned(result, plan, summarize(result.compressed, loaded),
                             quality(loaded, result.compressed.model, before=before))

        self._total = recipe.total_epochs()
        pruning = (recipe.schedule.steps * recipe.schedule.epochs_per_step if recipe.schedule else 0) + \
            (recipe.group_lasso.epochs if recipe.group_lasso else 0)  # before the plan's own model trains
        d.plots.reset(self._total, pruning)
        d.set_running(True)
        d.say(f"Compressing by the plan, then {self._total} epochs of training on "
              f"{'the digits training split' if source == DIGITS else source}…")
        win.workers.submit("finetune", job, lambda ft: self._finished(run, ft), lambda m: self._failed(run, m))

    def cancel(self) -> None:
        if self.running and self._stop is not None:
            self._stop.set()
            self.window.workers.stop("finetune")
            self.dialog.say("Cancelling: the run stops at its next batch and keeps the best epoch so far…")

    def apply(self, ft: Finetuned) -> None:
        """Make ``ft`` the session's current model (one undo step)."""
        self.pending = None
        if self.dialog is not None:
            self.dialog.use_button.setVisible(False)
        self.window.session.set_finetuned(ft)

    def use_pending(self) -> None:
        if self.pending is not None:
            said = _outcome(self.pending)
            self.apply(self.pending)
            self.dialog.say(said + " It is now the current model, with the plan it was trained under.")

    # ------------------------------------------------------------------------------ results
    def _on_event(self, run: int, kind: str, payload) -> None:
        if run != self.run or self.dialog is None:
            return
        if kind == "data":
            self._metric = "accuracy" if payload else "agreement"
            self.dialog.plots.set_metric(self._metric)
        elif kind == "epoch":
            self.dialog.plots.add(payload)
            self.dialog.say(_epoch_line(payload, self._total, self._metric))

    def _on_progress(self, channel: str, fraction: float, message: str) -> None:
        if channel == "finetune" and self.dialog is not None:
            self.dialog.show_progress(fraction, message)

    def _finished(self, run: int, ft: Optional[Finetuned]) -> None:
        if run != self.run:
            return
        d, session = self.dialog, self.window.session
        d.set_running(False)
        if ft is None:  # stopped outside the engine's training loop: nothing was trained
            return d.say("Cancelled before training began: nothing changed.")
        d.plots.finish(ft.result)
        d.show_progress(1.0, "cancelled: the best so far is kept" if ft.result.cancelled else "done")
        text = _outcome(ft)
        if not ft.result.history:
            return d.say("Cancelled before the first epoch ended: nothing changed.")
        if session.plan.to_dict() != ft.plan.to_dict():
            self.pending = ft
            d.use_button.setVisible(True)
            return d.say(text + " The plan changed while it trained, so it did not replace the current model: "
                         "Use this model goes back to the plan it was trained under (Edit → Undo returns).")
        self.apply(ft)
        d.say(text + " It is now the current model: the preview shows it, Export writes it, and Edit → Undo "
              "goes back to before fine-tuning.")

    def _failed(self, run: int, message: str) -> None:
        if run != self.run:
            return
        self.dialog.fail(f"Fine-tuning failed: {message}")
        self.window.statusBar().showMessage(f"fine-tuning failed: {message.splitlines()[0][:200]}")

    # ------------------------------------------------------------------------------ the session's events
    def _on_model(self) -> None:
        stopped = self.running
        if stopped:
            self.window.workers.cancel("finetune")
        self.run += 1  # whatever the old model's run still sends is dropped
        self.pending = None
        if self.dialog is not None:
            self.dialog.set_running(False)
            self.dialog.use_button.setVisible(False)
            self.dialog.say("Another model was opened" + (": its run was stopped." if stopped else "."))
            self._load_recipe(force=True)
            self.dialog.plots.reset(self.dialog.form.epochs.value())
            self._show_note()

    def _on_plan(self) -> None:
        self._load_recipe()
        self._show_note()

    def _on_finetuned(self) -> None:
        ft = self.window.session.finetuned
        if ft is None:
            message = ("Fine-tuned model set aside: the preview measures the plan on the original weights again "
                       "(Edit → Undo brings the fine-tuned model back)")
        else:
            message = f"{ft.describe()} is the current model: Export writes it (Edit → Undo goes back)"
        self.window.statusBar().showMessage(message)

    def _load_recipe(self, force: bool = False) -> None:
        """Fill the form from the plan's "finetune" section (its default recipe) when that changes, unless a
        run is going on."""
        raw = self.window.session.plan.finetune
        if self.dialog is None or self.running or (not force and raw == self._recipe_of):
            return
        self._recipe_of = raw
        self.dialog.form.load(check_recipe(raw or {}))

    def _show_note(self) -> None:
        if self.dialog is not None:
            ft = self.window.session.finetuned
            self.dialog.note.setText("Current model: " + (ft.describe() if ft is not None else
                                                          "the plan on the original weights (not fine-tuned)"))

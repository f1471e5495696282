"""Plan → Auto…: a non-modal dialog that searches for per-layer settings meeting a target (a ratio to the
dense model, a file size in bytes, effective MACs, or none but the drop) and, optionally, a largest accuracy
drop, with :func:`explorer.engine.sensitivity.auto.auto_plan` in the background (the "auto" worker channel),
with its progress and a Cancel. The plan found fills the session's plan as one undo step (the layer table and the
preview show it); the dialog says what was chosen, as the search measured it (the file's bytes; accuracy on
the validation subset) and, once the preview has measured the plan on the whole eval data, as the window
measured it. A result for a model no longer open is dropped.

Threads: the search is a :class:`~explorer.gui.workers.Workers` job; its progress arrives through the
workers' progress signal, its result on the GUI thread. It shares the long-work thread with fine-tuning (one
of the two runs at a time; the other waits).
"""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QProgressBar, QPushButton, QRadioButton, QSpinBox, QTableWidget,
                               QTableWidgetItem, QVBoxLayout)

from explorer.engine.sensitivity.auto import auto_plan
from explorer.engine.sensitivity.scan import DEFAULT_LIMIT
from explorer.gui.qt_job_dialog import JobDialog
from explorer.units import human_bytes

MAX_BYTES = 1e13  # the largest file size the target box takes
CHOICE_COLUMNS = ["layer", "pruned", "bits", "bytes", "est. loss (pts)"]


class TargetForm(QGroupBox):
    """The search's target: a size ratio or a file size, an optional largest accuracy drop (points) and the
    validation subset's size. :meth:`target` reads them as :func:`auto_plan` takes them."""

    def __init__(self, parent=None):
        super().__init__("Target", parent)
        self.by_ratio = QRadioButton("Size ratio")
        self.by_bytes = QRadioButton("File size")
        self.by_macs = QRadioButton("Effective MACs")
        self.by_drop = QRadioButton("Smallest within the drop")
        self.by_ratio.setChecked(True)
        group = QButtonGroup(self)
        for b in (self.by_ratio, self.by_bytes, self.by_macs, self.by_drop):
            group.addButton(b)
        self.by_drop.setToolTip("no size target: the smallest plan found whose measured accuracy drop is within "
                                "the largest drop below")
        self.ratio = QDoubleSpinBox()
        self.ratio.setRange(1.01, 10000.0)
        self.ratio.setDecimals(2)
        self.ratio.setValue(10.0)
        self.ratio.setSuffix(" × smaller")
        self.bytes = QDoubleSpinBox()
        self.bytes.setRange(1, MAX_BYTES)
        self.bytes.setDecimals(0)
        self.bytes.setGroupSeparatorShown(True)
        self.bytes.setSuffix(" bytes")
        self.macs = QDoubleSpinBox()
        self.macs.setRange(1, MAX_BYTES)
        self.macs.setDecimals(0)
        self.macs.setGroupSeparatorShown(True)
        self.macs.setSuffix(" MACs")
        self.macs.setToolTip("multiply-accumulates of the nonzero weights for one input, at most (pruning lowers "
                             "them; bits do not)")
        self.limit_drop = QCheckBox("At most")
        self.drop = QDoubleSpinBox()
        self.drop.setRange(0.0, 100.0)
        self.drop.setDecimals(2)
        self.drop.setValue(1.0)
        self.drop.setSuffix(" points")
        self.drop.setToolTip("the largest accuracy drop measured on the validation subset; when the size target "
                             "costs more, the smallest plan found within it")
        self.limit = QSpinBox()
        self.limit.setRange(10, 1 << 24)
        self.limit.setValue(DEFAULT_LIMIT)
        self.limit.setSuffix(" samples")
        self.limit.setToolTip("the first samples of the eval data on which each layer's sensitivity and the "
                              "plan's accuracy are measured")
        self.dense = QLabel("")
        self.dense.setStyleSheet("color: #555")
        self.dense.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow(self.by_ratio, self.ratio)
        form.addRow(self.by_bytes, self.bytes)
        form.addRow(self.by_macs, self.macs)
        form.addRow(self.by_drop, QLabel(""))
        drop = QHBoxLayout()
        drop.addWidget(self.limit_drop)
        drop.addWidget(self.drop)
        drop.addStretch(1)
        form.addRow("Accuracy drop", drop)
        form.addRow("Validation subset", self.limit)
        form.addRow(self.dense)
        for b in (self.by_ratio, self.by_bytes, self.by_macs, self.by_drop):
            b.toggled.connect(self._enable)
        self.limit_drop.toggled.connect(self._enable)
        self._enable()

    def _enable(self, *_) -> None:
        self.ratio.setEnabled(self.by_ratio.isChecked())
        self.bytes.setEnabled(self.by_bytes.isChecked())
        self.macs.setEnabled(self.by_macs.isChecked())
        if self.by_drop.isChecked():  # the drop is the target: it must be given
            self.limit_drop.setChecked(True)
        self.limit_drop.setEnabled(not self.by_drop.isChecked())
        self.drop.setEnabled(self.limit_drop.isChecked())

    def set_model(self, dense: Optional[int], current: Optional[int], samples: Optional[int],
                  macs: Optional[int] = None) -> None:
        """What the hint says and the boxes allow: the dense and current sizes, the eval data's samples, the
        model's MACs (None: no example input, no MACs target)."""
        if dense:
            self.bytes.setMaximum(dense)
            if self.bytes.value() >= dense or self.bytes.value() <= 1:
                self.bytes.setValue(dense // 10)
        self.by_macs.setEnabled(bool(macs))
        if macs:
            self.macs.setMaximum(macs)
            if self.macs.value() >= macs or self.macs.value() <= 1:
                self.macs.setValue(macs // 2)
        elif self.by_macs.isChecked():
            self.by_ratio.setChecked(True)
        said = [f"dense model {dense:,} bytes ({human_bytes(dense)})" if dense else "",
                f"the current plan writes {current:,}" if current else "",
                f"eval data: {samples:,} samples" if samples else "no eval data: open some first (File)"]
        self.dense.setText("; ".join(s for s in said if s) + ".")
        if samples:
            self.limit.setMaximum(max(samples, self.limit.minimum()))

    def target(self) -> dict:
        """The keyword arguments of :func:`auto_plan` the fields say."""
        out = {"limit": self.limit.value(), "max_drop": self.drop.value() if self.limit_drop.isChecked() else None}
        if self.by_ratio.isChecked():
            out["target_ratio"] = self.ratio.value()
        elif self.by_bytes.isChecked():
            out["target_bytes"] = int(self.bytes.value())
        elif self.by_macs.isChecked():
            out["target_macs"] = int(self.macs.value())
        return out  # the smallest within the drop: the drop alone


def outcome(r, data: str, samples: int) -> str:
    """What a search chose, as it measured it (``r``: an :class:`~explorer.engine.sensitivity.auto.AutoResult`)."""
    if r.target_bytes is not None:
        target = f"target {r.target_bytes:,}"
    elif r.target_macs is not None:
        target = f"{r.macs:,} effective MACs for a target of {r.target_macs:,} (dense {r.dense_macs:,}); no size target"
    else:
        target = "no size target: the smallest found within the drop"
    text = (f"Chose {r.dense_bytes / r.file_bytes:.1f}× smaller: the file is {r.file_bytes:,} bytes, measured "
            f"({target}; dense {r.dense_bytes:,}).")
    if r.accuracy_after is not None:
        text += (f" Accuracy on the first {samples:,} samples of {data}: {r.accuracy_before:.2%} → "
                 f"{r.accuracy_after:.2%} measured; predicted loss {100 * r.predicted_loss:.2f} points.")
    if r.note:
        text += f" {r.note[0].upper()}{r.note[1:]}."
    return text + (" Target met." if r.met else " Target not met.")


class AutoDialog(JobDialog):
    """The target, a progress bar, what the search is doing (or chose), the layers' choices and the buttons:
    Search, Cancel and Close (hides it; a search goes on). It shows; :class:`AutoRun` runs."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Automatic plan for a target")
        self.setModal(False)
        self.form = TargetForm()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("Set a target and press Search: each layer's sensitivity is measured, then the "
                             "settings of least estimated loss that fit are chosen and the plan measured.")
        self.measured = QLabel("")
        for label in (self.status, self.measured):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.choices = QTableWidget(0, len(CHOICE_COLUMNS))
        self.choices.setHorizontalHeaderLabels(CHOICE_COLUMNS)
        self.choices.verticalHeader().setVisible(False)
        self.choices.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.choices.setEditTriggers(QTableWidget.NoEditTriggers)
        self.search_button = QPushButton("Search")
        self.start_button = self.search_button
        self.search_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.close_button = QPushButton("Close")
        self.close_button.setToolTip("Hide this dialog; a search goes on and its plan still fills the plan")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.search_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.choices, 1)
        lay.addWidget(self.measured)
        lay.addLayout(buttons)
        self.resize(560, 600)
        self.set_running(False)

    def on_running(self, running: bool) -> None:
        if running:
            self.measured.setText("")

    def show_choices(self, choices: dict, cost: str = "bytes") -> None:
        """layer -> (sparsity, bits, layer bytes or MACs (``cost``), estimated loss), as the search chose them."""
        self.choices.setHorizontalHeaderLabels(CHOICE_COLUMNS[:3] + [cost if cost == "bytes" else "MACs"]
                                               + CHOICE_COLUMNS[4:])
        self.choices.setRowCount(len(choices))
        for i, (name, (s, b, nbytes, loss)) in enumerate(choices.items()):
            for j, text in enumerate((name, f"{s:.0%}", str(b), f"{nbytes:,}", f"{100 * loss:.2f}")):
                item = QTableWidgetItem(text)
                if j:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.choices.setItem(i, j, item)


class AutoRun:
    """Plan → Auto… for ``window``: its dialog (made on first use, then kept), one search at a time on the
    "auto" channel, and the plan found made the session's plan (one undo step) if the model it was searched
    for is still the one open."""

    def __init__(self, window):
        self.window = window
        self._dialog: Optional[AutoDialog] = None
        self.generation = 0  # the latest search's: the result of another is dropped
        self.result = None  # the latest search's AutoResult, once it filled the plan
        self.dropped = 0  # results dropped because the model changed meanwhile
        self._limit = DEFAULT_LIMIT
        session = window.session
        session.on("model", self._on_model)
        session.on("measured", self._on_measured)
        window.workers.progress.connect(self._on_progress)

    @property
    def running(self) -> bool:
        return self.window.workers.busy("auto")

    @property
    def dialog(self) -> AutoDialog:
        if self._dialog is None:
            d = self._dialog = AutoDialog(self.window)
            d.search_button.clicked.connect(lambda: self.start(**d.form.target()))
            d.cancel_button.clicked.connect(self.cancel)
            d.close_button.clicked.connect(d.hide)
            self._fill_hint()
        return self._dialog

    def open_dialog(self) -> None:
        win = self.window
        if win.session.loaded is None:
            return win.show_error("Open a model first")
        d = self.dialog
        self._fill_hint()
        d.show()
        d.raise_()
        d.activateWindow()

    def start(self, **target) -> None:
        """Search for a plan with ``target`` (keywords of :func:`auto_plan`: ``target_ratio`` or
        ``target_bytes``, ``max_drop``, ``limit``) in the background."""
        win, d = self.window, self.dialog
        loaded = win.session.loaded
        if loaded is None or self.running:
            return
        self.generation += 1
        gen, self.result = self.generation, None
        self._limit = target.get("limit") or DEFAULT_LIMIT
        d.set_running(True)
        waits = " (after the fine-tuning run: one long job at a time)" if win.finetuning.running else ""
        d.say(f"Measuring each layer's sensitivity on the first {self._limit:,} samples{waits}…")
        win.workers.submit("auto", lambda progress: auto_plan(loaded, progress=progress, **target),
                           lambda r: self._finished(gen, loaded, r), lambda m: self._failed(gen, m))

    def cancel(self) -> None:
        if self.running:
            self.window.workers.stop("auto")
            self.dialog.say("Cancelling: the search stops at its next step…")

    def _finished(self, gen: int, loaded, r) -> None:
        if gen != self.generation:
            return
        win, d = self.window, self.dialog
        session = win.session
        d.set_running(False)
        if r is None:
            return d.say("Cancelled: the plan is unchanged.")
        if session.loaded is not loaded:  # (the model's event cancels the job; this is the last guard)
            self.dropped += 1
            return d.say("The model changed while the search ran: its plan was dropped.")
        d.show_progress(1.0, "done")
        d.show_choices(r.choices, r.cost)
        data = loaded.eval_data
        text = outcome(r, data.name if data is not None else "the eval data",
                       min(self._limit, len(data)) if data is not None else 0)
        ratio = r.dense_bytes / r.file_bytes
        session.measured.expect(r.plan, "auto", f"auto {ratio:.1f}×")
        if r.plan.to_dict() == session.plan.to_dict():
            return d.say(text + " It is the current plan already: nothing changed.")
        self.result = r
        session.set_plan(r.plan)
        d.say(text + " It fills the plan now (Edit → Undo restores the previous one); the preview measures it "
              "on the whole eval data.")
        acc = f", {r.accuracy_after:.2%} on {self._limit:,} samples" if r.accuracy_after is not None else ""
        win.statusBar().showMessage(f"auto: the plan is filled, {ratio:.1f}× smaller ({r.file_bytes:,} bytes{acc}); "
                                    "Edit → Undo restores the previous plan")

    def _failed(self, gen: int, message: str) -> None:
        if gen != self.generation:
            return
        self.dialog.fail(f"The search failed: {message}")
        self.window.statusBar().showMessage(f"auto: {message.splitlines()[0][:200]}")

    # ------------------------------------------------------------------------------ events
    def _on_progress(self, channel: str, fraction: float, message: str) -> None:
        if channel == "auto" and self._dialog is not None:
            self._dialog.show_progress(fraction, message)

    def _on_measured(self, point) -> None:
        """The preview's measurement of the plan the search chose: said beside the search's own."""
        self._fill_hint()  # the current plan's size, as now measured
        r = self.result
        if point is None or r is None or self._dialog is None or point.key != self.window.session.measured.key(r.plan):
            return
        what = "accuracy" if point.metric == "accuracy" else "fidelity (cosine)"
        self._dialog.measured.setText(f"<b>Measured by the preview</b>: {point.file_bytes:,} bytes, {what} "
                                      f"{point.quality:.2%} on {point.data}.")

    def _on_model(self) -> None:
        stopped = self.running
        if stopped:
            self.window.workers.cancel("auto")
        self.generation += 1
        self.result = None
        if self._dialog is not None:
            self._dialog.set_running(False)
            self._dialog.choices.setRowCount(0)
            self._dialog.say("Another model was opened" + (": its search was stopped." if stopped else "."))
            self._fill_hint()

    def _fill_hint(self) -> None:
        if self._dialog is None:
            return
        session = self.window.session
        loaded, results = session.loaded, session.results
        size = (results or {}).get("size", {})
        data = loaded.eval_data if loaded is not None else None
        self._dialog.form.set_model(size.get("dense"), size.get("file"), len(data) if data is not None else None,
                                    (results or {}).get("macs", {}).get("before"))

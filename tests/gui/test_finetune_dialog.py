"""Compress → Fine-tune… on the digits-cnn sample and its Deep Compression plan (98.61% -> ~11% without
retraining), driven offscreen with pytest-qt; every wait is a ``qtbot.waitUntil`` on state the window
exposes.

What the issue asks the dialog to show: it trains on a worker with the loss and validation accuracy plotted
as each epoch ends; the result becomes the session's current model with its accuracy measured by the engine;
a cancel mid-run keeps the best checkpoint; undo goes back to before fine-tuning; Export writes the
fine-tuned model, and the file's accuracy is the one reported.
"""

import os

import pytest
import torch

from explorer.engine.compress import compress
from explorer.engine.finetune.data import load_train_data
from explorer.engine.measure.evaluate import quality
from explorer.engine.measure.metrics import accuracy
from explorer.engine.samples import SAMPLES_DIR
from explorer.engine.storage import fileformat

RUN_TIMEOUT_MS = 120_000  # a few epochs take seconds; a loaded 2-core machine is slower
PLAN = SAMPLES_DIR / "digits-cnn.deep-compression.plan.json"


def open_dialog(win, settle, epochs=2, lr=0.005):
    """The Deep Compression plan loaded and measured, then Compress → Fine-tune… with ``epochs`` epochs."""
    win.load_plan(str(PLAN))
    settle(win)
    win.menus.finetune_action.trigger()
    dialog = win.finetuning.dialog
    assert dialog.isVisible() and not dialog.isModal()
    dialog.form.epochs.setValue(epochs)
    dialog.form.lr.setValue(lr)
    return dialog


def train(win, qtbot, settle, dialog):
    """Press Train and wait for the result to become the current model."""
    dialog.train_button.click()
    assert win.finetuning.running and not dialog.train_button.isEnabled() and dialog.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: win.session.finetuned is not None, timeout=RUN_TIMEOUT_MS)
    settle(win)
    return win.session.finetuned


def test_the_dialog_trains_on_digits_and_the_result_is_the_current_model_that_export_writes(
        make_window, qtbot, settle, tmp_path):
    win = make_window("digits-cnn")
    dialog = open_dialog(win, settle, epochs=2)
    plain = win.session.accuracy["after"]  # the plan's model, not retrained
    ft = train(win, qtbot, settle, dialog)
    r = ft.result
    assert not r.cancelled and [h.epoch for h in r.history] == [1, 2] and r.metric == "accuracy"

    # every epoch reached the plots, on the GUI thread, as it ended
    plots = dialog.plots
    assert [h.epoch for h in plots.records] == [1, 2]
    x, y = plots.loss_curve.getData()
    assert list(x) == [1, 2] and list(y) == pytest.approx([h.loss for h in r.history])
    x, y = plots.val_curve.getData()
    assert list(y) == pytest.approx([100 * h.val for h in r.history])
    assert list(plots.best.getData()[1]) == pytest.approx([100 * r.best])
    assert list(plots.before.getData()[0]) == [0]  # the plan's model before retraining, at epoch 0
    assert "Done: 2 epochs" in dialog.status.text() and "current model" in dialog.status.text()
    assert not win.finetuning.running and dialog.train_button.isEnabled()

    # the preview shows the fine-tuned model, its accuracy measured by the engine
    assert win.session.plan.to_dict() == ft.plan.to_dict()
    want = quality(win.session.loaded, ft.compressed.model)
    assert win.session.accuracy["after"] == pytest.approx(want["after"]) and want["after"] > plain + 0.2
    assert f"{want['after']:.2%}" in win.preview.acc.text() and "fine-tuned" in win.preview.acc.text()
    assert "fine-tuned model" in win.preview.status.text() and "stale" not in win.preview.status.text()
    assert win.session.results is ft.summary and win.menus.undo_action.isEnabled()
    assert "fine-tuned model" in dialog.note.text()

    # Export writes it: the size predicted, and the file's accuracy is the one reported
    path = tmp_path / "tuned.cexp"
    written = []
    win.exports.export(str(path), on_done=written.append)
    qtbot.waitUntil(lambda: bool(written), timeout=RUN_TIMEOUT_MS)
    assert written[0] == os.path.getsize(path) == ft.summary["size"]["file"]
    model = fileformat.load(path)
    assert quality(win.session.loaded, model)["after"] == win.session.accuracy["after"]
    tuned = ft.compressed.model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, tuned[name]), name  # the trained weights, bit for bit


def test_cancel_mid_run_keeps_the_best_checkpoint(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    dialog = open_dialog(win, settle, epochs=200)
    dialog.train_button.click()
    qtbot.waitUntil(lambda: len(dialog.plots.records) >= 2, timeout=RUN_TIMEOUT_MS)
    dialog.cancel_button.click()
    assert "Cancelling" in dialog.status.text()
    qtbot.waitUntil(lambda: not win.finetuning.running and win.session.finetuned is not None,
                    timeout=RUN_TIMEOUT_MS)
    settle(win)
    r = win.session.finetuned.result
    assert r.cancelled and 2 <= len(r.history) < 200
    vals = [r.before] + [h.val for h in r.history]
    assert r.best == max(vals) and r.best_epoch == vals.index(max(vals))  # the first of equals
    # the model kept is that checkpoint: its accuracy on the held-out validation split is the best one
    model = win.session.finetuned.compressed.model
    val = load_train_data("digits").split(0.1)[1]
    assert accuracy(model, val.data) == pytest.approx(r.best)
    # and it is usable: the current model, its accuracy measured
    assert win.session.accuracy["after"] == pytest.approx(quality(win.session.loaded, model)["after"])
    assert "Cancelled after" in dialog.status.text() and "kept the best so far" in dialog.status.text()
    assert "cancelled" in win.preview.status.text()


def test_undo_goes_back_to_before_fine_tuning_and_a_new_setting_sets_it_aside(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    dialog = open_dialog(win, settle, epochs=1)
    session, undo, redo = win.session, win.menus.undo_action, win.menus.redo_action
    plan, plain = session.plan.to_dict(), session.accuracy["after"]
    ft = train(win, qtbot, settle, dialog)
    tuned = session.accuracy["after"]
    assert tuned != plain

    undo.trigger()  # back to the plan measured on the original weights
    assert session.finetuned is None and session.plan.to_dict() == plan and redo.isEnabled()
    settle(win)
    assert session.accuracy["after"] == pytest.approx(plain) and "fine-tuned" not in win.preview.acc.text()
    assert "✓ measured" in win.preview.status.text()
    assert "set aside" in win.statusBar().currentMessage()
    redo.trigger()
    assert session.finetuned is ft and session.accuracy["after"] == tuned
    settle(win)
    assert "fine-tuned model" in win.preview.status.text()

    # a new setting: the trained weights belong to the old plan; the window measures the new plan again
    win.controls.set_sparsity(50)
    assert session.finetuned is None and "set aside" in win.statusBar().currentMessage()
    settle(win)
    loaded = session.loaded
    direct = compress(loaded.model, session.plan, loaded.example_input).model
    assert session.accuracy["after"] == pytest.approx(quality(loaded, direct)["after"])
    assert "fine-tuned" not in win.preview.acc.text() and "Current model: the plan" in dialog.note.text()
    undo.trigger()  # ... and undo brings the fine-tuned model back
    assert session.finetuned is ft and session.accuracy["after"] == tuned


def test_a_result_for_a_plan_changed_meanwhile_is_offered_not_applied(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    dialog = open_dialog(win, settle, epochs=1)
    trained_plan = win.session.plan.to_dict()
    dialog.train_button.click()
    win.controls.set_sparsity(30)  # while it trains
    changed = win.session.plan.to_dict()
    qtbot.waitUntil(lambda: not win.finetuning.running, timeout=RUN_TIMEOUT_MS)
    assert win.session.finetuned is None and win.session.plan.to_dict() == changed
    assert dialog.use_button.isVisible() and "plan changed" in dialog.status.text()
    dialog.use_button.click()
    assert win.session.finetuned is not None and win.session.plan.to_dict() == trained_plan
    assert "It is now the current model" in dialog.status.text()
    assert not dialog.use_button.isVisible()
    win.menus.undo_action.trigger()
    assert win.session.finetuned is None and win.session.plan.to_dict() == changed


def test_bad_training_data_is_reported_in_the_dialog_and_nothing_changes(make_window, qtbot, settle, tmp_path):
    win = make_window("digits-cnn")
    dialog = open_dialog(win, settle)
    plan = win.session.plan.to_dict()
    dialog.form.data.setCurrentIndex(1)
    dialog.train_button.click()  # no file chosen: said before anything starts
    assert not win.finetuning.running and "choose the training data" in dialog.status.text()
    dialog.form.path.setText(str(tmp_path / "missing.npz"))
    dialog.train_button.click()
    qtbot.waitUntil(lambda: not win.finetuning.running, timeout=RUN_TIMEOUT_MS)
    assert "Fine-tuning failed" in dialog.status.text() and "missing.npz" in dialog.status.text()
    assert win.session.finetuned is None and win.session.plan.to_dict() == plan
    assert dialog.train_button.isEnabled()


def test_closing_the_window_stops_a_run(make_window, qtbot, settle):
    win = make_window("digits-cnn")
    dialog = open_dialog(win, settle, epochs=200)
    dialog.train_button.click()
    qtbot.waitUntil(lambda: len(dialog.plots.records) >= 1, timeout=RUN_TIMEOUT_MS)
    win.close()
    assert win.workers.training.activeThreadCount() == 0 and win.session.finetuned is None

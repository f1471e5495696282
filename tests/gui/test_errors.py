"""Errors never take the window down (issue 16): an unexpected exception in an engine job or in a slot is
one line in the banner and its traceback in the log file, and the window goes on working; a full disk or a
read-only directory under a plan save or an export is one message naming the file, with no temporary file
left."""

import os
import threading

import pytest
from PySide6.QtWidgets import QPushButton

from explorer.gui import qt_errors

TIMEOUT_MS = 30_000


def test_the_log_file_goes_where_the_environment_says(log_path, state_dirs):
    assert log_path == state_dirs / "log" / qt_errors.LOG_NAME and log_path.exists()
    handler = next(h for h in qt_errors.log.handlers if h.baseFilename == str(log_path))
    assert (handler.maxBytes, handler.backupCount) == (qt_errors.LOG_BYTES, qt_errors.LOG_BACKUPS)
    assert qt_errors.setup_logging(debug=True) == log_path  # --debug: stderr too, the file once
    kinds = sorted(type(h).__name__ for h in qt_errors.log.handlers if getattr(h, "explorer_handler", False))
    assert kinds == ["RotatingFileHandler", "StreamHandler"]


def test_a_job_that_raises_shows_one_line_logs_its_traceback_and_the_window_goes_on(make_window, qtbot, settle,
                                                                                   log_path, monkeypatch):
    win = make_window("digits-mlp")
    previewer = win.session.previewer

    def broken(plan, progress=None):
        raise RuntimeError("the engine broke\nsecond line")

    monkeypatch.setattr(previewer, "measure", broken)
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.5}})
    qtbot.waitUntil(lambda: win.last_error is not None, timeout=TIMEOUT_MS)
    assert win.last_error.startswith("RuntimeError: the engine broke (the traceback is in ")
    assert "\n" not in win.last_error and win.banner.isVisible()
    text = log_path.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: the engine broke" in text
    assert "in broken" in text

    monkeypatch.undo()  # the window still works: the next change is measured
    settle(win)
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.6}})
    qtbot.waitUntil(lambda: win.idle() and win.session.results is not None
                    and win.session.results["size"]["pruned"] < win.session.results["size"]["dense"],
                    timeout=TIMEOUT_MS)


@pytest.fixture
def hooked(make_window, log_path):
    """A window with the app's error hooks installed (pytest-qt's own capture is off in these tests), and
    the old hooks back at teardown."""
    win = make_window()
    hook = qt_errors.install(win)
    yield win
    hook.uninstall()


@pytest.mark.qt_no_exception_capture
def test_a_slot_that_raises_is_logged_and_shown(hooked, qtbot, log_path):
    win = hooked

    def slot():
        raise ValueError("a slot broke")

    b = QPushButton(win)
    b.clicked.connect(slot)
    b.click()
    qtbot.waitUntil(lambda: win.last_error is not None, timeout=TIMEOUT_MS)
    assert win.last_error == f"Unexpected error: ValueError: a slot broke (the traceback is in {log_path})"
    assert "Traceback" in log_path.read_text() and "in slot" in log_path.read_text()
    win.session.set_plan(win.session.plan)  # alive
    assert win.isVisible()


@pytest.mark.qt_no_exception_capture
def test_a_thread_that_raises_is_logged_and_shown_on_the_gui_thread(hooked, qtbot, log_path):
    win = hooked

    def work():
        raise KeyError("lost")

    t = threading.Thread(target=work, name="helper")
    t.start()
    t.join()
    qtbot.waitUntil(lambda: win.last_error is not None, timeout=TIMEOUT_MS)  # relayed to the GUI thread
    assert win.last_error.startswith("Unexpected error: KeyError: 'lost'")
    assert "unexpected error in helper" in log_path.read_text() and "in work" in log_path.read_text()


# ----------------------------------------------------------------------------- full disk, read-only target


def test_a_full_disk_under_a_plan_save_and_an_export_is_one_message(make_window, qtbot, settle, tmp_path,
                                                                    monkeypatch, full_disk):
    win = make_window("digits-mlp")
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.5}})
    settle(win)
    full_disk.fill()
    target = tmp_path / "plan.json"
    monkeypatch.setattr("PySide6.QtWidgets.QFileDialog.getSaveFileName", lambda *a, **k: (str(target), ""))
    win.save_plan_dialog()
    assert win.last_error == f"Could not save the plan: cannot write {target}: No space left on device"
    out = tmp_path / "m.cexp"
    win.exports.export(str(out))
    qtbot.waitUntil(lambda: not win.workers.busy("export"), timeout=TIMEOUT_MS)
    assert win.last_error == f"Export failed: cannot write {out}: No space left on device"
    assert os.listdir(tmp_path) == []  # no temporary file left, nothing half-written
    full_disk.free()  # the window goes on: with room on the disk, the same save works
    win.save_plan_dialog()
    assert target.exists() and win.statusBar().currentMessage() == f"plan saved to {target}"


def test_a_read_only_directory_is_one_message(make_window, read_only_dir, monkeypatch):
    win = make_window()
    target = read_only_dir / "p.json"
    monkeypatch.setattr("PySide6.QtWidgets.QFileDialog.getSaveFileName", lambda *a, **k: (str(target), ""))
    win.save_plan_dialog()
    assert win.last_error.startswith(f"Could not save the plan: cannot write {target}: Permission denied")
    assert os.listdir(read_only_dir) == []

"""Never lose work (issue 16): the session autosaves after changes and a clean exit removes it; a session
whose process was killed is restored by the next start (its model, plan, undo and redo, selection); a
corrupt autosave is discarded in one line; a model that is gone still gives back its plan; a model saved
untrusted is never unpickled."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import zoo

from explorer.engine.plan import Plan
from explorer.session import ModelSource
from explorer.session_store import AutosaveFiles, SavedSession, to_json

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 30_000

# a window that opens a sample, makes changes, waits for its autosave to hold them, prints them and is killed
KILLED = r"""
import json, os, signal, sys, time
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication
app = QApplication([])
from explorer.gui.main_window import MainWindow
win = MainWindow(settings=QSettings(sys.argv[1], QSettings.IniFormat))
win.autosave.timer.setInterval(100)
win.show()
win.open_model("digits-mlp")

def until(cond, timeout=60):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit("timed out")
        app.processEvents()
        time.sleep(0.01)

until(lambda: win.session.loaded is not None)
s = win.session
s.update_layers(["fc1"], {"prune": {"amount": 0.7}})
s.update_layers(["fc2"], {"quantize": {"bits": 5}})
s.update_layers(["fc1"], {"quantize": {"bits": 4}})
s.undo()
s.select(["fc2"])
undo, redo = s.history()
want = {"plan": s.plan.to_dict(), "undo": [p.to_dict() for p in undo], "redo": [p.to_dict() for p in redo],
        "selection": s.selection, "path": str(win.autosave.files.path)}

def written():
    try:
        data = json.loads(win.autosave.files.path.read_text())
    except (OSError, ValueError):
        return False
    return all(data[k] == want[k] for k in ("plan", "undo", "redo", "selection"))

until(written)
print(json.dumps(want), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def orphan(state_dirs, saved: SavedSession) -> Path:
    """``saved`` written as the autosave of a process that is gone."""
    files = AutosaveFiles(state_dirs / "state", pid=dead_pid())
    files.directory.mkdir(parents=True, exist_ok=True)
    files.path.write_bytes(to_json(replace(saved, pid=files.pid, saved_at=time.time())))
    return files.path


def dicts(plans):
    return [p.to_dict() for p in plans]


def test_changes_are_autosaved_and_a_clean_exit_removes_the_file(make_window, qtbot, settle):
    win = make_window("digits-mlp")
    win.autosave.timer.setInterval(50)
    path = win.autosave.files.path
    assert str(path).startswith(os.environ["COMPRESSION_EXPLORER_STATE_DIR"])
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.5}})
    assert win.autosave.timer.isActive()  # debounced: written once the changes stop
    qtbot.waitUntil(lambda: path.exists() and json.loads(path.read_text())["plan"] == win.session.plan.to_dict(),
                    timeout=TIMEOUT_MS)
    size, ms = win.autosave.last_write
    assert size < 10_000 and ms < 200, win.autosave.last_write  # small JSON: fine on the GUI thread
    settle(win)
    win.close()
    assert not path.exists()


def test_a_killed_session_is_restored_by_the_next_start(make_window, qtbot, tmp_path, state_dirs):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "s.ini")], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert out.returncode == -9, out.stderr[-3000:]  # SIGKILL: no clean exit
    want = json.loads(out.stdout.strip().splitlines()[-1])
    left = Path(want["path"])
    assert left.exists()

    win = make_window()
    assert win.autosave.offer(restore=True)
    s = win.session
    qtbot.waitUntil(lambda: win.autosave.restored is not None and win.idle(), timeout=TIMEOUT_MS)
    assert s.loaded.source == "digits-mlp"
    assert s.plan.to_dict() == want["plan"]
    undo, redo = s.history()
    assert dicts(undo) == want["undo"] and dicts(redo) == want["redo"]
    assert (len(undo), len(redo)) == (2, 1)
    assert s.selection == want["selection"] == ["fc2"]
    assert not left.exists() and win.autosave.files.path.exists()  # this window's own file holds it now
    s.redo()  # the history works as it did
    assert s.settings("fc1").quantize.bits == 4
    win.close()
    assert not win.autosave.files.path.exists()


def test_a_corrupt_autosave_is_discarded_in_one_line(make_window, state_dirs):
    path = orphan(state_dirs, SavedSession(None, Plan()))
    path.write_bytes(b'{"format": "compression-explorer-session", "version": 1, "pid": "x"')
    win = make_window()
    assert not win.autosave.offer(restore=True)
    assert win.last_error.startswith("A saved session was discarded: ") and str(path) in win.last_error
    assert "\n" not in win.last_error and not path.exists()


def test_discard_removes_it_and_no_answer_leaves_it(make_window, state_dirs):
    path = orphan(state_dirs, SavedSession(ModelSource("digits-mlp"), Plan()))
    win = make_window()
    assert not win.autosave.offer(restore=None)  # offscreen: no one to ask, left for a later start
    assert path.exists()
    assert not win.autosave.offer(restore=False)
    assert not path.exists() and win.session.loaded is None


def test_a_model_that_is_gone_still_gives_back_its_plan(make_window, qtbot, tmp_path, state_dirs):
    plan = Plan.from_dict({"layers": {"fc1": {"prune": {"amount": 0.5}}}})
    before = Plan.from_dict({"layers": {"fc1": {"prune": {"amount": 0.3}}}})
    gone = str(tmp_path / "moved.safetensors")
    path = orphan(state_dirs, SavedSession(ModelSource(gone, "zoo:MLP"), plan, [Plan(), before], []))
    win = make_window()
    assert win.autosave.offer(restore=True)
    qtbot.waitUntil(lambda: win.autosave.restored is not None, timeout=TIMEOUT_MS)
    assert win.last_error.startswith("Could not reopen the saved session's model: ") and gone in win.last_error
    assert "\n" not in win.last_error
    assert win.session.plan.to_dict() == plan.to_dict()
    assert dicts(win.session.history()[0]) == dicts([Plan(), before])
    assert not path.exists()
    saved = AutosaveFiles(state_dirs / "state").read(win.autosave.files.path)  # kept, with its model's name
    assert saved.source.source == gone and saved.plan.to_dict() == plan.to_dict()


def test_a_model_saved_untrusted_is_never_unpickled(make_window, qtbot, tmp_path, state_dirs, monkeypatch):
    pickled = tmp_path / "full.pt"
    torch.save(zoo.MLP(), pickled)  # a whole nn.Module: loading it runs pickle
    loads, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real(*a, **k))
    orphan(state_dirs, SavedSession(ModelSource(str(pickled)), Plan()))
    win = make_window()
    assert win.autosave.offer(restore=True)
    qtbot.waitUntil(lambda: win.autosave.restored is not None, timeout=TIMEOUT_MS)
    assert win.session.loaded is None and "--trust" in win.last_error
    assert loads == [True]  # only the restricted unpickler ran, and refused

    loads.clear()  # trusted when it was opened: trusted again
    orphan(state_dirs, SavedSession(ModelSource(str(pickled), trust=True), Plan()))
    win = make_window()
    assert win.autosave.offer(restore=True)
    qtbot.waitUntil(lambda: win.autosave.restored is not None, timeout=TIMEOUT_MS)
    assert win.session.loaded.kind == "pickle" and loads == [True, False]


def test_the_prompt_can_be_answered_by_the_environment(make_window, qtbot, state_dirs, monkeypatch):
    from explorer.gui.qt_autosave import RESTORE_ENV, restore_choice

    assert [restore_choice({RESTORE_ENV: v}) for v in ("yes", "no", "", "maybe")] == [True, False, None, None]
    path = orphan(state_dirs, SavedSession(None, Plan.from_dict({"default": {"quantize": {"bits": 6}}})))
    monkeypatch.setenv(RESTORE_ENV, "yes")
    win = make_window()
    assert win.autosave.offer()  # no model was open: the plan alone comes back
    assert win.session.plan.default.quantize.bits == 6 and not path.exists()
    assert win.statusBar().currentMessage() == "restored a plan (0 undo steps; no model was open)"


def test_a_failed_autosave_is_said_once_and_the_window_goes_on(make_window, full_disk):
    win = make_window()
    win.session.set_plan(Plan.from_dict({"default": {"quantize": {"bits": 6}}}))
    full_disk.fill()
    win.autosave.save_now()
    path = win.autosave.files.path
    assert win.last_error == f"Autosave to {path} failed: No space left on device" and not path.exists()
    win.last_error = None
    win.autosave.save_now()
    assert win.last_error is None  # not again at every change
    full_disk.free()
    win.autosave.save_now()
    assert path.exists()

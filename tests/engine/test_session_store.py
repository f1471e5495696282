"""The saved session behind the autosave (issue 16, "Never lose work"): a round trip gives back the source,
plan, undo and redo and selection; a corrupt, foreign or hostile file is refused in one line naming it;
only files of processes that are gone are offered; the JSON stays under its bound."""

import json
import os
import subprocess
import sys

import pytest

from explorer import session_store
from explorer.session import ModelSource, Session
from explorer.session_store import AutosaveFiles, SessionFileError, from_json, snapshot, to_json


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def session():
    """A session's state as the autosave sees it (no model is needed for that): its source, three edits
    and an undo, a selection and eval data opened since."""
    s = Session()
    s.source = ModelSource("/models/cnn.pt", "zoo:SmallCNN", True, {"width": 8})
    s.update_layers(["fc1"], {"prune": {"amount": 0.5}})
    s.update_layers(["conv2"], {"quantize": {"bits": 4}})
    s.update_layers(["fc1"], {"quantize": {"bits": 3}})
    s.undo()
    s.selection = ["conv2", "fc2"]
    s.data_source = "/data/test.npz"
    return s


def test_round_trip_gives_back_the_session(session):
    saved = from_json(to_json(snapshot(session)))
    undo, redo = session.history()
    assert saved.plan.to_dict() == session.plan.to_dict()
    assert [p.to_dict() for p in saved.undo] == [p.to_dict() for p in undo] and len(undo) == 2
    assert [p.to_dict() for p in saved.redo] == [p.to_dict() for p in redo] and len(redo) == 1
    assert saved.selection == ["conv2", "fc2"]
    assert saved.source == ModelSource("/models/cnn.pt", "zoo:SmallCNN", True, {"width": 8}, "/data/test.npz")
    assert saved.pid == os.getpid()

    other = Session()  # and back into a session: the same plan, undo and redo
    other.restore_history(saved.plan, saved.undo, saved.redo)
    assert other.plan.to_dict() == session.plan.to_dict()
    assert [p.to_dict() for p in other.history()[0]] == [p.to_dict() for p in undo]
    other.redo()
    session.redo()
    assert other.plan.to_dict() == session.plan.to_dict()


def test_writing_again_encodes_only_new_plans_and_says_the_same(session):
    memo = {}
    first = to_json(snapshot(session), memo)
    assert len(memo) == 4  # the plan, two undo steps, one redo step
    session.update_layers(["fc2"], {"prune": {"amount": 0.2}})  # a new plan; the redo step goes
    saved = snapshot(session)
    assert to_json(saved, memo) == to_json(saved) != first and len(memo) == 4


def test_an_empty_session_is_nothing_to_keep():
    assert snapshot(Session()).is_empty


@pytest.mark.parametrize("text, says", [
    (b"\x00\x01garbage", "not valid JSON"),
    (b"[" * 100 + b"]" * 100, "nested 100 deep"),
    (b'{"format": "something-else"}', "not a saved session"),
    (b'{"format": "compression-explorer-session", "version": 99}', "version 99 is not supported"),
    ("trust", "'model.trust' must be true or false"),
    ("kwargs", "'model.factory_kwargs' must map"),
    ("undo", "'undo' step 1: "),
    ("pid", "'pid' must be a process id"),
])
def test_a_corrupt_or_hostile_file_is_refused_in_one_line_naming_it(session, tmp_path, text, says):
    good = json.loads(to_json(snapshot(session)))
    if text == "trust":
        good["model"]["trust"] = "yes"
    elif text == "kwargs":
        good["model"]["factory_kwargs"] = {"__class__": 1, "not a name": 2}
    elif text == "undo":
        good["undo"][0]["layers"] = {"fc1": {"prune": {"amount": -0.5}}}
    elif text == "pid":
        good["pid"] = True
    data = json.dumps(good).encode() if isinstance(text, str) else text
    path = tmp_path / "autosave-1.json"
    path.write_bytes(data)
    with pytest.raises(SessionFileError) as err:
        AutosaveFiles(tmp_path).read(path)
    message = str(err.value)
    assert says in message and message.startswith(str(path)) and "\n" not in message


def test_a_huge_file_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(session_store, "MAX_SESSION_BYTES", 1000)
    path = tmp_path / "autosave-1.json"
    path.write_bytes(b" " * 2000)
    with pytest.raises(SessionFileError, match="too large"):
        AutosaveFiles(tmp_path).read(path)


def test_writes_drop_the_oldest_undo_steps_to_stay_under_the_bound(session, monkeypatch):
    full = len(to_json(snapshot(session)))
    monkeypatch.setattr(session_store, "MAX_SESSION_BYTES", full - 10)
    saved = from_json(to_json(snapshot(session)))
    assert len(saved.undo) == 1 and saved.undo[0].to_dict() == session.history()[0][-1].to_dict()


def test_only_files_of_ended_processes_are_offered(session, tmp_path):
    files = AutosaveFiles(tmp_path)
    files.write(snapshot(session))  # this process's own: running
    assert files.path.exists() and files.orphans() == []
    gone = AutosaveFiles(tmp_path, pid=dead_pid())
    gone.write(snapshot(session))
    running = AutosaveFiles(tmp_path, pid=os.getppid())
    running.write(snapshot(session))
    (tmp_path / "notes.json").write_text("{}")
    assert files.orphans() == [gone.path]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    files.remove()
    files.remove()  # twice: nothing there is fine
    assert not files.path.exists()


def test_directories_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(session_store.STATE_DIR_ENV, str(tmp_path / "s"))
    monkeypatch.setenv(session_store.LOG_DIR_ENV, str(tmp_path / "l"))
    assert session_store.state_dir() == tmp_path / "s" and session_store.log_dir() == tmp_path / "l"
    assert session_store.state_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(session_store.STATE_DIR_ENV)
    assert "compression-explorer" in str(session_store.state_dir())

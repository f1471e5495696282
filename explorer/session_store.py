"""A session saved and read back (Qt-free): what an autosave holds, and the files it lives in.

A :class:`SavedSession` is what reopening a session takes: the model's source (:class:`ModelSource`: a
sample, a file or a factory, its trust flag and factory keyword arguments, the eval data), the plan, the
undo and redo plans and the selected layers. It is written as JSON beside the process id that wrote it
(:class:`AutosaveFiles`, one file per running window, in the user's state directory), and read back under
:mod:`~explorer.engine.storage.jsonio`'s bounds, every field checked: a file that is not one of ours, is
corrupt or is hostile is refused with one line (:class:`SessionFileError`), never half-applied. Nothing is
unpickled here; whether the model may be is the saved trust flag, given by the user when it was opened.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import platformdirs

from explorer.engine.errors import ExplorerError, PlanError
from explorer.engine.plan import Plan
from explorer.engine.storage import jsonio
from explorer.engine.storage.atomic import atomic_write_bytes, process_alive
from explorer.session import ModelSource, Session

APP = "compression-explorer"
STATE_DIR_ENV = "COMPRESSION_EXPLORER_STATE_DIR"  # where autosaves go (tests, or a portable setup)
LOG_DIR_ENV = "COMPRESSION_EXPLORER_LOG_DIR"  # where the window's log file goes
FORMAT = "compression-explorer-session"
VERSION = 1
MAX_SESSION_BYTES = 32 << 20  # read at most this much; writes drop the oldest undo steps to stay below it
MAX_TEXT = 4096  # characters of a path, factory reference or layer name
MAX_SELECTION = 10_000
MAX_HISTORY = 1000  # undo steps, and redo steps (the session's own limit)
NAME = re.compile(r"autosave-(\d{1,10})\.json")


class SessionFileError(ExplorerError):
    """An autosave that cannot be used: the message is one line naming the file and the problem."""


def state_dir(override=None) -> Path:
    """Where autosaves are kept: ``override``, else ``$COMPRESSION_EXPLORER_STATE_DIR``, else the user's
    state directory (``platformdirs.user_state_dir``, e.g. ``~/.local/state/compression-explorer``)."""
    return Path(override or os.environ.get(STATE_DIR_ENV) or platformdirs.user_state_dir(APP))


def log_dir(override=None) -> Path:
    """Where the log file is kept: ``override``, else ``$COMPRESSION_EXPLORER_LOG_DIR``, else the user's
    log directory (``platformdirs.user_log_dir``, e.g. ``~/.local/state/compression-explorer/log``)."""
    return Path(override or os.environ.get(LOG_DIR_ENV) or platformdirs.user_log_dir(APP))


@dataclass(frozen=True)
class SavedSession:
    source: Optional[ModelSource]
    plan: Plan
    undo: list = field(default_factory=list)  # plans, oldest first
    redo: list = field(default_factory=list)  # plans, the next redo last
    selection: list = field(default_factory=list)
    pid: int = 0
    saved_at: float = 0.0

    @property
    def is_empty(self) -> bool:
        """Nothing worth keeping: no model, no plan, no history."""
        return (self.source is None and not self.undo and not self.redo
                and self.plan.to_dict() == Plan().to_dict())


def snapshot(session: Session) -> SavedSession:
    """What ``session`` would be reopened from, now (a fine-tuned model is kept as its plan)."""
    undo, redo = session.history()
    source = session.source
    if source is not None and session.data_source is not None:
        source = ModelSource(source.source, source.factory, source.trust, dict(source.factory_kwargs),
                             session.data_source)
    return SavedSession(source, session.plan, undo, redo, list(session.selection), os.getpid(), time.time())


def to_json(saved: SavedSession, memo: Optional[dict] = None) -> bytes:
    """The JSON of ``saved``, below :data:`MAX_SESSION_BYTES` (the oldest undo steps go first if need be).

    ``memo`` (a dict kept between calls) holds each plan's JSON by the plan object, so that writing the
    session again after an edit encodes the new plan only: a thousand undo steps of a 20-layer plan took
    135 ms to encode every time, a few ms with it. Plans are values (an edit makes a new one), so an object
    seen before has the same JSON; entries of plans no longer in ``saved`` are dropped."""
    src = saved.source
    head = json.dumps({"format": FORMAT, "version": VERSION, "pid": saved.pid, "saved_at": saved.saved_at,
                       "model": None if src is None else {"source": src.source, "factory": src.factory,
                                                          "trust": src.trust, "factory_kwargs": src.factory_kwargs,
                                                          "data": src.data},
                       "selection": list(saved.selection)}, separators=(",", ":"))
    memo = {} if memo is None else memo
    texts = {}
    for plan in [saved.plan, *saved.undo, *saved.redo]:
        hit = memo.get(id(plan))
        if hit is None or hit[0] is not plan:
            hit = (plan, json.dumps(plan.to_dict(), separators=(",", ":")))
        texts[id(plan)] = hit
    memo.clear()
    memo.update(texts)

    def joined(plans) -> str:
        return "[" + ",".join(texts[id(p)][1] for p in plans) + "]"

    undo = list(saved.undo)
    while True:
        out = (f'{head[:-1]},"plan":{texts[id(saved.plan)][1]},"undo":{joined(undo)},'
               f'"redo":{joined(saved.redo)}}}').encode()
        if len(out) <= MAX_SESSION_BYTES or not undo:
            return out
        undo = undo[max(1, len(undo) // 2):]  # the older half


def _text(value, what: str, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or "\0" in value:
        raise SessionFileError(f"{what} must be a non-empty string of at most {MAX_TEXT} characters")
    return value


def _source(raw) -> Optional[ModelSource]:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"source", "factory", "trust", "factory_kwargs", "data"}:
        raise SessionFileError("'model' must be an object of source, factory, trust, factory_kwargs and data")
    if not isinstance(raw.get("trust", False), bool):
        raise SessionFileError("'model.trust' must be true or false")
    kwargs = raw.get("factory_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise SessionFileError("'model.factory_kwargs' must map argument names to values")
    return ModelSource(_text(raw.get("source"), "'model.source'"), _text(raw.get("factory"), "'model.factory'", True),
                       raw.get("trust", False) is True, kwargs, _text(raw.get("data"), "'model.data'", True))


def _plans(raw, what: str) -> list:
    if not isinstance(raw, list) or len(raw) > MAX_HISTORY:
        raise SessionFileError(f"'{what}' must be a list of at most {MAX_HISTORY} plans")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Plan.from_dict(item))
        except PlanError as exc:
            raise SessionFileError(f"'{what}' step {i + 1}: {exc}") from None
    return out


def from_json(data) -> SavedSession:
    """A saved session from its JSON (bytes or str), every field checked; :class:`SessionFileError` if not."""
    try:
        raw = jsonio.loads(data)
    except jsonio.JSONLimit as exc:
        raise SessionFileError(str(exc)) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise SessionFileError("not a saved session of this program")
    if raw.get("version") != VERSION:
        raise SessionFileError(f"saved session version {raw.get('version')!r} is not supported (this reads {VERSION})")
    pid, saved_at = raw.get("pid"), raw.get("saved_at", 0.0)
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2 ** 32:
        raise SessionFileError("'pid' must be a process id")
    if not isinstance(saved_at, (int, float)) or isinstance(saved_at, bool):
        raise SessionFileError("'saved_at' must be a time")
    try:
        plan = Plan.from_dict(raw.get("plan"))
    except PlanError as exc:
        raise SessionFileError(f"'plan': {exc}") from None
    selection = raw.get("selection", [])
    if not isinstance(selection, list) or len(selection) > MAX_SELECTION:
        raise SessionFileError(f"'selection' must be a list of at most {MAX_SELECTION:,} layer names")
    selection = [_text(n, "a selected layer's name") for n in selection]
    return SavedSession(_source(raw.get("model")), plan, _plans(raw.get("undo", []), "undo"),
                        _plans(raw.get("redo", []), "redo"), selection, pid, float(saved_at))


class AutosaveFiles:
    """The autosaves in ``directory``: ``autosave-<pid>.json``, one per running window. A file whose
    process is gone is a session that did not end cleanly (a clean exit removes its file)."""

    def __init__(self, directory, pid: Optional[int] = None):
        self.directory = Path(directory)
        self.pid = pid or os.getpid()
        self.memo: dict = {}  # plan JSON kept between writes (see to_json)

    @property
    def path(self) -> Path:
        """This process's autosave."""
        return self.directory / f"autosave-{self.pid}.json"

    def write(self, saved: SavedSession) -> int:
        """Write ``saved`` atomically (the directory is made if need be); the bytes written. OSError as the
        system gives it."""
        data = to_json(saved, self.memo)
        self.directory.mkdir(parents=True, exist_ok=True)
        # not fsynced: it is for a crashed or killed window, which the rename covers; an fsync on the GUI
        # thread stalled its event loop (see storage.atomic.atomic_open)
        atomic_write_bytes(self.path, data, durable=False)
        return len(data)

    def remove(self, path=None) -> None:
        """Remove this process's autosave (or ``path``); one that is gone, or cannot go, is left be."""
        try:
            os.unlink(path or self.path)
        except OSError:
            pass

    def orphans(self) -> list:
        """Autosaves of sessions that did not end cleanly (their process is gone), the newest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        found = []
        for name in names:
            m = NAME.fullmatch(name)
            if m is None or int(m.group(1)) == self.pid or process_alive(int(m.group(1))):
                continue
            path = self.directory / name
            try:
                found.append((path.stat().st_mtime, path))
            except OSError:
                continue
        return [p for _, p in sorted(found, reverse=True)]

    def read(self, path) -> SavedSession:
        """The session saved in ``path``; :class:`SessionFileError` naming the file if it cannot be used."""
        try:
            return from_json(jsonio.read_bounded(path, MAX_SESSION_BYTES, "saved session"))
        except (jsonio.JSONLimit, SessionFileError) as exc:
            raise SessionFileError(f"{path}: {exc}") from None


__all__ = ["SavedSession", "SessionFileError", "AutosaveFiles", "snapshot", "to_json", "from_json", "state_dir",
           "log_dir", "STATE_DIR_ENV", "LOG_DIR_ENV"]

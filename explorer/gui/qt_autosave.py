"""The window's autosave: the session written (atomically, small JSON) to the user's state directory
:data:`DELAY_MS` after the last change, removed on a clean exit; at start, the session of a window that did
not end cleanly offered back (Restore / Discard) and reopened: its model (unpickled only if the user had
trusted it), eval data, plan, undo and redo, selection. The serialization is Qt-free
(:mod:`explorer.session_store`)."""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QMessageBox

from explorer.engine.errors import ExplorerError
from explorer.session_store import AutosaveFiles, SavedSession, SessionFileError, snapshot, state_dir

DELAY_MS = 2000  # after the last change
RESTORE_ENV = "COMPRESSION_EXPLORER_RESTORE"  # "yes" / "no": answer the restore prompt (headless runs, tests)
log = logging.getLogger("explorer.autosave")


def restore_choice(env=None) -> Optional[bool]:
    """The restore prompt's answer given by :data:`RESTORE_ENV` (None: ask)."""
    value = (os.environ if env is None else env).get(RESTORE_ENV, "").strip().lower()
    return True if value in ("1", "yes", "true", "restore") else False if value in ("0", "no", "false",
                                                                                     "discard") else None


class Autosave:
    """Keeps ``window``'s session saved in ``directory`` (default :func:`~explorer.session_store.state_dir`).
    ``last_write`` is (bytes, milliseconds) of the last write; ``restored`` the session last restored."""

    def __init__(self, window, directory=None, delay_ms: int = DELAY_MS):
        self.window = window
        self.files = AutosaveFiles(state_dir(directory))
        self.timer = QTimer(window)
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self.save_now)
        self.last_write: Optional[tuple] = None
        self.restored: Optional[SavedSession] = None
        self._failed_once = False
        for event in ("model", "plan", "selection", "data"):
            window.session.on(event, lambda *_: self.changed())

    def changed(self) -> None:
        self.timer.start()  # restarted by every change: written once they stop

    def save_now(self) -> None:
        """Write the session now (nothing to keep: no file). A failure is said once in the banner."""
        self.timer.stop()
        saved = snapshot(self.window.session)
        try:
            if saved.is_empty:
                self.files.remove()
                return
            start = time.perf_counter()
            size = self.files.write(saved)
            self.last_write = (size, 1000 * (time.perf_counter() - start))
            self._failed_once = False
        except OSError as exc:
            log.warning("autosave to %s failed: %s", self.files.path, exc)
            if not self._failed_once:
                self._failed_once = True
                self.window.show_error(f"Autosave to {self.files.path} failed: {exc.strerror or exc}")

    def finish(self) -> None:
        """A clean exit: nothing to restore next time."""
        self.timer.stop()
        self.files.remove()

    # ------------------------------------------------------------------------------ restoring
    def offer(self, restore: Optional[bool] = None, ask: bool = True) -> bool:
        """Offer the newest session that did not end cleanly: ``restore`` True or False answers for the user
        (else :data:`RESTORE_ENV`, else a dialog if ``ask``; with no answer, as when there is no screen to
        ask on, the file is left for a later start). A file that cannot be read is said in one line and
        removed. True if restoring."""
        for path in self.files.orphans():
            try:
                saved = self.files.read(path)
            except SessionFileError as exc:
                log.warning("%s", exc)
                self.window.show_error(f"A saved session was discarded: {exc}")
                self.files.remove(path)
                continue
            choice = restore if restore is not None else restore_choice()
            if choice is None and ask and self.window.isVisible() and not _headless():
                choice = self._ask(saved)
            if choice is None:
                return False
            if not choice:
                self.files.remove(path)
                return False
            self.restore(saved, path)
            return True
        return False

    def _ask(self, saved: SavedSession) -> bool:
        what = saved.source.source if saved.source else "no model"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved.saved_at))
        box = QMessageBox(QMessageBox.Question, "Compression Explorer",
                          f"A session did not end cleanly ({what}, {_steps(saved)}, saved {when}).\n"
                          "Restore it?", parent=self.window)
        restore = box.addButton("Restore", QMessageBox.AcceptRole)
        box.addButton("Discard", QMessageBox.DestructiveRole)
        box.exec()
        return box.clickedButton() is restore

    def restore(self, saved: SavedSession, path=None) -> None:
        """Reopen ``saved``: its model in the background, then its plan, history, selection and eval data.
        A model that cannot be reopened is said in one line; the plan and its history are restored anyway.
        ``path``, the file it came from, is removed once this window's own autosave holds the session (not
        if another model is opened before this one is loaded: the next start offers it again)."""
        win, src = self.window, saved.source

        def apply(ok: bool, message: str = "") -> None:
            self.restored = saved
            session = win.session
            if ok:
                try:
                    saved.plan.resolve(session.layer_names)
                except ExplorerError as exc:
                    win.show_error(f"The restored plan does not fit {src.source}: {exc}")
                    return self._done(path)
            session.restore_history(saved.plan, saved.undo, saved.redo)
            if src is None:
                win.statusBar().showMessage(f"restored a plan ({_steps(saved)}; no model was open)")
            elif not ok:
                session.source = src  # what the plan was made for: kept in the autosave
                win.show_error(f"Could not reopen the saved session's model: {message}; its plan and undo "
                               "history are restored (Plan → Save plan keeps the plan)", dialog=True)
            else:
                session.select(saved.selection)
                if src.data:
                    win.open_data(src.data)
                win.statusBar().showMessage(f"restored the session on {src.source} ({_steps(saved)})")
            self._done(path)

        if src is None:
            return apply(False)
        win.open_model(src.source, factory=src.factory, trust=src.trust, factory_kwargs=src.factory_kwargs,
                       then=apply)

    def _done(self, path) -> None:
        self.save_now()  # this session's own file holds it now
        if path is not None:
            self.files.remove(path)


def _steps(saved: SavedSession) -> str:
    n = len(saved.undo)
    return f"{n} undo step{'s' if n != 1 else ''}"


def _headless() -> bool:
    return os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal"))

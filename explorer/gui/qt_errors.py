"""What the window does with an error nobody expected: it goes, with its traceback, to a rotating log file
(:data:`LOG_BYTES` × :data:`LOG_BACKUPS`, in :func:`~explorer.session_store.log_dir`; with ``--debug`` also
to stderr), and its one line to the window's banner; the window keeps running. :func:`install` hooks
``sys.excepthook`` (PySide6 hands it an exception raised in a slot) and ``threading.excepthook`` (a thread
of ours that fails outside a job); a job's own failure is logged by :mod:`~explorer.gui.workers`."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Qt, Signal

from explorer.session_store import log_dir

LOG_NAME = "explorer.log"
LOG_BYTES = 1 << 20
LOG_BACKUPS = 3
log = logging.getLogger("explorer")


def setup_logging(debug: bool = False, directory=None) -> Optional[Path]:
    """Send the ``explorer`` loggers to the log file (and to stderr with ``debug``); the file's path, or
    None if it could not be opened (then said on stderr, and the window runs without it)."""
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in list(log.handlers):
        if getattr(handler, "explorer_handler", False):
            log.removeHandler(handler)
            handler.close()
    form = logging.Formatter("%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    path: Optional[Path] = Path(log_dir(directory)) / LOG_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS,
                                                       encoding="utf-8")
    except OSError as exc:
        print(f"warning: no log file ({path}: {exc.strerror or exc})", file=sys.stderr)
        handler, path = None, None
    handlers = [handler] if handler is not None else []
    if debug:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(form)
        h.explorer_handler = True
        log.addHandler(h)
    log.propagate = not handlers
    return path


def log_file() -> Optional[Path]:
    """The log file the ``explorer`` logger writes, if any."""
    for h in log.handlers:
        if isinstance(h, logging.handlers.RotatingFileHandler):
            return Path(h.baseFilename)
    return None


class _Relay(QObject):
    raised = Signal(str)  # the one line, delivered on the GUI thread


class ErrorHook:
    """Installed hooks for ``window`` (``show_error(message)``); :meth:`uninstall` puts the old ones back."""

    def __init__(self, window):
        self.window = window
        self.relay = _Relay()
        self.relay.raised.connect(self._show, Qt.QueuedConnection)
        self._old = sys.excepthook, threading.excepthook
        sys.excepthook = self.excepthook
        threading.excepthook = self.thread_excepthook

    def uninstall(self) -> None:
        sys.excepthook, threading.excepthook = self._old

    def excepthook(self, kind, exc, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            return self._old[0](kind, exc, tb)
        log.error("unexpected error", exc_info=(kind, exc, tb))
        self.relay.raised.emit(self.line(kind, exc))

    def thread_excepthook(self, args) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        log.error("unexpected error in %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        self.relay.raised.emit(self.line(args.exc_type, args.exc_value))

    @staticmethod
    def line(kind, exc) -> str:
        text = str(exc).splitlines()[0] if str(exc) else ""
        where = log_file()
        told = f" (the traceback is in {where})" if where is not None else ""
        return f"Unexpected error: {kind.__name__}{': ' + text if text else ''}{told}"

    def _show(self, message: str) -> None:
        self.window.show_error(message)


def install(window) -> ErrorHook:
    return ErrorHook(window)


def quiet_offscreen(mode, context, message: str) -> None:
    """Qt's messages, less the offscreen platform's notice that it cannot resize windows to their hints
    (printed on every layout change; nothing is wrong)."""
    if "does not support propagateSizeHints" not in message:
        print(message, file=sys.stderr)

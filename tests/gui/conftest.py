"""Fixtures for the window tests: a factory of explorer windows (each with its own settings file, shown
offscreen, closed at teardown so its workers shut down) and a wait for the window to settle."""

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings  # noqa: E402

LOAD_TIMEOUT_MS = 30_000
WORK_TIMEOUT_MS = 30_000


def is_settled(win) -> bool:
    """No engine work running and no debounced slider change pending."""
    return win.idle() and not win.controls._timer.isActive()


@pytest.fixture
def settle(qtbot):
    def wait(win, timeout=WORK_TIMEOUT_MS):
        qtbot.waitUntil(lambda: is_settled(win), timeout=timeout)

    return wait


@pytest.fixture
def make_window(qtbot, tmp_path, settle):
    """``make_window(source=None, **open_kwargs)``: a shown MainWindow, with ``source`` opened and measured."""
    from explorer.gui.main_window import MainWindow

    windows = []

    def make(source=None, **open_kwargs):
        settings = QSettings(str(tmp_path / f"settings-{len(windows)}.ini"), QSettings.IniFormat)
        win = MainWindow(settings=settings)
        qtbot.addWidget(win)
        windows.append(win)
        win.show()
        if source is not None:
            win.open_model(source, **open_kwargs)
            qtbot.waitUntil(lambda: win.session.loaded is not None and win.session.loaded.source == source
                            and win.session.results is not None and is_settled(win), timeout=LOAD_TIMEOUT_MS)
        return win

    yield make
    for win in windows:
        win.close()  # closeEvent shuts the workers down (cancels and waits for running jobs)
        assert win.workers.pool.activeThreadCount() == 0, "a worker was still running after the window closed"
        assert win.workers.interactive.activeThreadCount() == 0, "an interactive worker was still running"


@pytest.fixture
def log_path(state_dirs):
    """The window's log file, set up in the test's COMPRESSION_EXPLORER_LOG_DIR, and its handlers removed after."""
    import logging

    from explorer.gui import qt_errors

    path = qt_errors.setup_logging()
    yield path
    for h in [h for h in qt_errors.log.handlers if getattr(h, "explorer_handler", False)]:
        qt_errors.log.removeHandler(h)
        h.close()
    qt_errors.log.propagate = True
    qt_errors.log.setLevel(logging.NOTSET)

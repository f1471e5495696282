"""Start the window: ``compression-explorer gui [MODEL] [--plan P] [--screenshot PNG]``."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional


def run(model: Optional[str] = None, plan: Optional[str] = None, factory: Optional[str] = None,
        trust: bool = False, data: Optional[str] = None, screenshot: Optional[str] = None,
        tab: str = "histogram", timeout: float = 120.0) -> int:
    if screenshot and "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from explorer.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Compression Explorer")
    settings = QSettings(os.path.join(os.path.expanduser("~"), ".config", "compression-explorer.ini"),
                         QSettings.IniFormat) if not screenshot else QSettings()
    win = MainWindow(settings=settings)
    win.show()
    if model:
        win.open_model(model, factory=factory, trust=trust, data=data)
    state = {"plan_loaded": plan is None, "start": time.monotonic(), "rc": 0}

    def poll():
        if not win.idle():
            return
        if not state["plan_loaded"] and win.session.loaded is not None:
            state["plan_loaded"] = True
            win.load_plan(plan)
            return
        if screenshot is None:
            timer.stop()
            return
        if win.session.loaded is None and model and win.last_error is None:
            return
        if tab == "centroids" and win.tabs.currentWidget() is not win.centroids:
            win.tabs.setCurrentWidget(win.centroids)
            return
        timer.stop()
        QTimer.singleShot(300, grab)

    def grab():
        app.processEvents()
        ok = win.grab().save(screenshot)
        print(f"screenshot {'saved to' if ok else 'FAILED:'} {screenshot}")
        state["rc"] = 0 if ok else 1
        win.close()
        app.quit()

    def give_up():
        if screenshot and time.monotonic() - state["start"] > timeout:
            print(f"error: the window did not settle within {timeout:.0f} s", file=sys.stderr)
            state["rc"] = 1
            app.quit()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(100)
    watchdog = QTimer()
    watchdog.timeout.connect(give_up)
    watchdog.start(1000)
    rc = app.exec()
    return state["rc"] or rc

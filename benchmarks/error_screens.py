"""The README's pictures of what a newcomer meets (issue 17), rendered offscreen at 1400×900:

- ``assets/empty-window.png``: the window with no model, its page inviting to open one or a sample;
- ``assets/error-banner.png``: digits-mlp with its sample plan, then the same plan with the model's output
  layer fc3 pruned by filters (as a plan file may say; the window's controls do not offer it): its
  measurement fails, and the red banner says which layer and why;
- ``assets/after-undo.png``: the same window after Edit → Undo: the sample plan again, measured, the banner
  gone.

    .venv/bin/python benchmarks/error_screens.py [--out assets]

Prints where each picture went and the banner's text (not a test: nothing here asserts).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL, LAYER = "digits-mlp", "fc3"  # fc3: the sample's output layer (10 classes), whose filters cannot go
TIMEOUT_S = 120.0
SETTLE_S = 0.3  # events processed before a grab, so every view has painted its latest data


def wait_until(app, condition, timeout: float = TIMEOUT_S) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"error: the window did not settle within {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def grab(app, win, path: Path) -> None:
    end = time.monotonic() + SETTLE_S
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    ok = win.grab().save(str(path))
    print(f"{'saved' if ok else 'FAILED to save'} {path}")


def offscreen_window(out: str, prefix: str) -> tuple:
    """``(app, window, out folder)``: a 1400×900 main window, offscreen unless a platform is set, its settings,
    autosaves and logs in a new temporary folder (never the user's); ``out`` created."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if "QT_QPA_PLATFORM" not in os.environ:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["COMPRESSION_EXPLORER_STATE_DIR"] = str(scratch / "state")  # no autosave in the user's
    os.environ["COMPRESSION_EXPLORER_LOG_DIR"] = str(scratch / "log")

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from explorer.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    win = MainWindow(settings=QSettings(str(scratch / "settings.ini"), QSettings.IniFormat),
                     state_dir=scratch / "state")
    win.resize(1400, 900)
    win.show()
    return app, win, folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "assets"), help="where the PNGs go (default assets/)")
    args = ap.parse_args(argv)
    app, win, out = offscreen_window(args.out, "error-screens-")

    from explorer.engine.plan import Plan
    from explorer.engine.samples import SAMPLES_DIR

    try:
        wait_until(app, win.idle)
        grab(app, win, out / "empty-window.png")

        win.open_model(MODEL)
        s = win.session
        wait_until(app, lambda: s.loaded is not None and s.results is not None and win.idle())
        win.table.select_names([LAYER])
        wait_until(app, lambda: s.selection == [LAYER] and win.idle())
        win.load_plan(str(SAMPLES_DIR / f"{MODEL}.plan.json"))  # the sample's plan, measured
        wait_until(app, lambda: win.idle() and s.results is not None)
        broken = s.plan.to_dict()  # the same with the output layer pruned by filters
        broken["layers"].setdefault(LAYER, {})["prune"] = {"amount": 0.5, "granularity": "filter"}
        s.set_plan(Plan.from_dict(broken))
        wait_until(app, lambda: win.banner.isVisible() and win.idle())
        print(f"banner: {win.banner.text()}")
        grab(app, win, out / "error-banner.png")

        win.menus.undo_action.trigger()
        wait_until(app, lambda: win.idle() and s.results is not None)
        print(f"after undo, banner shown: {win.banner.isVisible()}")
        grab(app, win, out / "after-undo.png")
    finally:
        win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

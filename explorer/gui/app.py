"""Start the window: ``compression-explorer gui [MODEL] [--plan P] [--layer NAME] [--tab T] [--screenshot PNG]``.

``--tab compare --screenshot``: the Compare tab needs plans measured in the session to show; before the
``--plan`` is loaded the window measures, as a user would, the model with no compression, each of the
sample's example plans, two Plan → Auto… searches and (for a sample) its Deep Compression plan fine-tuned for
two epochs: every point is one the window measured (:func:`compare_steps`)."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Optional

import PySide6
from PySide6.QtCore import QSettings, QTimer, qInstallMessageHandler
from PySide6.QtWidgets import QApplication

from explorer.engine.plan import Plan
from explorer.engine.samples import SAMPLES_DIR, sample_names
from explorer.gui.main_window import MainWindow
from explorer.gui.qt_errors import install, quiet_offscreen, setup_logging

# what Qt's X11 plugin links against that a desktop may lack (Qt's "X11 requirements"), by Debian name
X11_PACKAGES = ("libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 "
                "libxcb-randr0 libxcb-xkb1 libxkbcommon-x11-0 libx11-xcb1")


def xcb_plugin() -> Optional[str]:
    """Where PySide6 keeps Qt's X11 platform plugin (None if not there)."""
    plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return str(plugin) if plugin.exists() else None


def _xcb_plugin_loads() -> Optional[str]:
    """None if Qt's X11 platform plugin can be loaded here, else the loader's message (it names the first
    shared library missing). Loading it is what Qt does next anyway."""
    plugin = xcb_plugin()
    if plugin is None:
        return None  # another layout: let Qt speak for itself
    try:
        ctypes.CDLL(plugin)
    except OSError as exc:
        return str(exc)
    return None


def display_problem(env=None, platform: str = sys.platform, probe=_xcb_plugin_loads) -> Optional[str]:
    """Why Qt could not open a window here, or None. Qt aborts the whole process (no exception) when its
    platform plugin cannot start, with a message about plugins; this names the actual cause first: no
    display to connect to, or a system library Qt's X11 plugin needs (since Qt 6.5 libxcb-cursor0, which
    many systems lack). ``probe()``: None when the X11 plugin loads, else the loader's message."""
    env = os.environ if env is None else env
    if not platform.startswith("linux"):
        return None
    chosen = env.get("QT_QPA_PLATFORM", "")
    if chosen and not chosen.startswith("xcb"):
        return None  # offscreen, wayland, vnc...: nothing of X11's is needed
    if not chosen and env.get("WAYLAND_DISPLAY"):
        return None  # Qt picks Wayland
    if not env.get("DISPLAY"):
        return ("no display to open the window on (DISPLAY is not set): run it in a desktop session, or "
                "render it headless with --screenshot PNG (or QT_QPA_PLATFORM=offscreen)")
    failed = probe()
    if failed is not None and "cannot open shared object file" in failed:  # else: let Qt report it
        missing = failed.split(":")[0].strip()
        if missing.startswith(("libxcb", "libxkbcommon", "libX11-xcb")):
            hint = f"Debian/Ubuntu: apt install {X11_PACKAGES}"
        else:
            hint = "install the package that provides it"
        return f"Qt's X11 platform plugin cannot load: {missing} is missing ({hint})"
    return None


COMPARE_AUTO_RATIOS = (12.0, 30.0)  # the searches --tab compare runs (validation on COMPARE_LIMIT samples)
COMPARE_LIMIT = 200


def compare_steps(win, model: str, plan: Optional[str]) -> list:
    """What the window does, one step each time it is idle, before a screenshot of the Compare tab: plans
    measured by hand (no compression, the sample's example plans but ``plan``), searched and fine-tuned."""
    names = sorted(SAMPLES_DIR.glob(f"{model}.*plan.json")) if model in sample_names() else []
    given = os.path.abspath(plan) if plan else None
    steps = [lambda: win.session.set_plan(Plan())]
    steps += [lambda p=p: win.load_plan(str(p)) for p in names if str(p.resolve()) != given]
    steps += [lambda r=r: win.auto.start(target_ratio=r, limit=COMPARE_LIMIT) for r in COMPARE_AUTO_RATIOS]
    deep = SAMPLES_DIR / f"{model}.deep-compression.plan.json"
    if deep in names:  # the samples train on the bundled digits split, the fine-tuning dialog's default

        def finetune():
            win.finetuning.open_dialog()
            form = win.finetuning.dialog.form
            form.epochs.setValue(2)
            form.lr.setValue(0.005)
            win.finetuning.start()

        steps += [lambda: win.load_plan(str(deep)), finetune, lambda: win.finetuning.dialog.hide()]
    return steps


def choose_layer(win, layer: str) -> Optional[str]:
    """Select ``layer`` of the window's model (``gui --layer``); if it has no such layer, the one line that
    says so, naming its layers (the selection is left as it was)."""
    names = win.session.layer_names
    chosen = [layer] if layer in names else [part.strip() for part in layer.split(",")]
    missing = [n for n in chosen if n not in names]
    if missing:
        return (f"--layer {missing[0]!r}: the model has no such layer (its layers: {', '.join(names) or 'none'})")
    win.session.select(chosen)
    return None


def _tab_view(win, tab: str, concept: Optional[str]):
    """The widget of ``--tab`` (None: the first tab), on ``--concept``'s page for the Concepts tab."""
    if concept and win.concepts.view.current().key != concept:
        win.concepts.view.select(concept)  # its page is computed once the tab is shown
    return {"centroids": win.centroids, "sensitivity": win.sensitivity.view, "compare": win.compare,
            "concepts": win.concepts.view}.get(tab)


def run(model: Optional[str] = None, plan: Optional[str] = None, factory: Optional[str] = None,
        trust: bool = False, data: Optional[str] = None, screenshot: Optional[str] = None,
        tab: str = "histogram", timeout: float = 120.0, restore: Optional[bool] = None, debug: bool = False,
        layer: Optional[str] = None, concept: Optional[str] = None) -> int:
    if screenshot and "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    problem = display_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if os.environ.get("QT_QPA_PLATFORM", "").startswith("offscreen"):
        qInstallMessageHandler(quiet_offscreen)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Compression Explorer")
    settings = QSettings(os.path.join(os.path.expanduser("~"), ".config", "compression-explorer.ini"),
                         QSettings.IniFormat) if not screenshot else QSettings()
    setup_logging(debug)
    win = MainWindow(settings=settings)
    hook = install(win)  # an exception in a slot is logged and shown in the banner; the window goes on
    win.show()
    # a session that did not end cleanly is offered back (not asked with --screenshot: no one to answer)
    restoring = win.autosave.offer(restore, ask=not screenshot)
    if model and not restoring:
        win.open_model(model, factory=factory, trust=trust, data=data)
    state = {"plan_loaded": plan is None, "layer_chosen": layer is None, "start": time.monotonic(), "rc": 0,
             "steps": None}

    def fail(message: str) -> None:
        """A model or plan named on the command line did not load: with --screenshot there is no one to
        read the banner, so say why as every verb does, and exit 2."""
        timer.stop()
        print(f"error: {message.splitlines()[0]}", file=sys.stderr)
        state["rc"] = 2
        win.close()
        app.quit()

    def poll():
        if not win.idle():
            return
        if tab == "compare" and screenshot and win.session.loaded is not None:
            if state["steps"] is None:
                state["steps"] = compare_steps(win, model or "", plan)
            if state["steps"]:
                return state["steps"].pop(0)()
        if not state["plan_loaded"] and win.session.loaded is not None:
            state["plan_loaded"] = True
            win.last_error = None
            win.load_plan(plan)
            if screenshot is not None and win.last_error is not None:
                fail(win.last_error)
            return
        if not state["layer_chosen"] and win.session.loaded is not None:
            state["layer_chosen"] = True
            problem = choose_layer(win, layer)
            if problem is not None and screenshot is not None:
                return fail(problem)
            if problem is not None:  # the window stays, on its default layer: the banner and the terminal say why
                print(f"error: {problem}", file=sys.stderr)
                win.show_error(problem)
            return
        if screenshot is None:
            timer.stop()
            return
        if win.session.loaded is None and model:
            if win.last_error is not None:
                fail(win.last_error)
            return
        view = _tab_view(win, tab, concept)
        if view is not None and win.tabs.currentWidget() is not view:
            win.tabs.setCurrentWidget(view)  # a sensitivity scan starts: idle again once it is done
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
    hook.uninstall()
    return state["rc"] or rc

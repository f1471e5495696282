"""The window's menus and its list of recently opened models (kept in the window's QSettings)."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence

from explorer.engine.plan import Plan
from explorer.engine.samples import sample_names
from explorer.gui.qt_export import STANDARD
from explorer.gui.qt_help import Help

RECENT = 8  # models kept in File -> Open recent


def _action(window, menu, text, slot, shortcut=None) -> QAction:
    a = QAction(text, window)
    if isinstance(shortcut, QKeySequence.StandardKey):
        a.setShortcuts(shortcut)  # every key the platform binds to it (Redo: Ctrl+Y and Ctrl+Shift+Z), not the first
    elif shortcut is not None:
        a.setShortcut(shortcut)
    a.triggered.connect(lambda checked=False: slot())
    menu.addAction(a)
    return a


class Menus:
    """File (open, eval data, recent, samples, exports), Plan (load, save, reset, auto), Compress (fine-tune),
    Edit (undo, redo) and Help (about, concepts, shortcuts). What needs a model (:attr:`model_actions`) is
    disabled until one is open (:meth:`model_open`)."""

    def __init__(self, window):
        self.window = window
        self.help = Help(window)
        w, bar = window, window.menuBar()
        m = bar.addMenu("&File")
        _action(w, m, "&Open model…", w.open_dialog, QKeySequence.Open)
        _action(w, m, "Open &Hugging Face folder…", w.open_folder_dialog)
        needs = [_action(w, m, "Open &eval data…", w.open_data_dialog),
                 _action(w, m, "Eval data from a &factory…", w.open_data_factory_dialog)]
        self.recent_menu = m.addMenu("Open &recent")
        samples = m.addMenu("&Samples")
        for name in sample_names():
            _action(w, samples, name, lambda n=name: w.open_model(n))
        m.addSeparator()
        export = _action(w, m, "E&xport compressed file (.cexp)…", w.exports.export_dialog, QKeySequence("Ctrl+E"))
        std = m.addMenu("Export &standard format")
        needs += [export, std.menuAction()]
        for label, ext in STANDARD:
            _action(w, std, label, lambda e=ext: w.exports.standard_dialog(e))
        m.addSeparator()
        # the platform's Quit keys; some bind none to it (Windows, offscreen): Ctrl+Q there
        quit_keys = QKeySequence.Quit if QKeySequence.keyBindings(QKeySequence.Quit) else QKeySequence("Ctrl+Q")
        _action(w, m, "&Quit", w.close, quit_keys)
        p = bar.addMenu("&Plan")
        needs += [_action(w, p, "&Load plan…", w.load_plan_dialog),
                  _action(w, p, "&Save plan…", w.save_plan_dialog, QKeySequence.Save),
                  _action(w, p, "&Reset (no compression)", lambda: w.session.set_plan(Plan()))]
        p.addSeparator()
        self.auto_action = _action(w, p, "&Auto…", w.auto.open_dialog)
        c = bar.addMenu("&Compress")
        self.finetune_action = _action(w, c, "&Fine-tune…", w.finetuning.open_dialog)
        e = bar.addMenu("&Edit")
        self.undo_action = _action(w, e, "&Undo", w.session.undo, QKeySequence.Undo)
        self.redo_action = _action(w, e, "&Redo", w.session.redo, QKeySequence.Redo)
        h = bar.addMenu("&Help")
        self.about_action = _action(w, h, "&About Compression Explorer", self.help.about)
        _action(w, h, "&Concepts", self.help.concepts, QKeySequence.HelpContents)
        _action(w, h, "&Keyboard shortcuts", self.help.shortcuts)
        self.model_actions = needs + [self.auto_action, self.finetune_action]  # undo/redo: see plan_changed
        self.refresh_recent()
        self.model_open(False)

    def recent_files(self) -> list:
        value = self.window.settings.value("recent", []) or []
        return [v for v in (value if isinstance(value, list) else [value]) if v]

    def remember(self, source: str) -> None:
        if source in sample_names():
            return
        items = [source] + [r for r in self.recent_files() if r != source]
        self.window.settings.setValue("recent", items[:RECENT])
        self.refresh_recent()

    def refresh_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.recent_files():
            _action(self.window, self.recent_menu, path, lambda p=path: self.window.open_model(p))
        self.recent_menu.setEnabled(bool(self.recent_files()))

    def model_open(self, is_open: bool) -> None:
        """Enable the actions that need a model (or not: none is open)."""
        for action in self.model_actions:
            action.setEnabled(is_open)
        self.plan_changed()

    def plan_changed(self) -> None:
        s = self.window.session
        self.undo_action.setEnabled(s.loaded is not None and s.can_undo())
        self.redo_action.setEnabled(s.loaded is not None and s.can_redo())

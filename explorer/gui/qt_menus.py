"""The window's menus and its list of recently opened models (kept in the window's QSettings)."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence

from explorer.engine.plan import Plan
from explorer.engine.samples import sample_names
from explorer.gui.qt_export import STANDARD

RECENT = 8  # models kept in File -> Open recent


def _action(window, menu, text, slot, shortcut=None) -> QAction:
    a = QAction(text, window)
    if shortcut is not None:
        a.setShortcut(shortcut)
    a.triggered.connect(lambda checked=False: slot())
    menu.addAction(a)
    return a


class Menus:
    """File (open, eval data, recent, samples, exports), Plan (load, save, reset, auto), Compress (fine-tune)
    and Edit (undo, redo)."""

    def __init__(self, window):
        self.window = window
        w, bar = window, window.menuBar()
        m = bar.addMenu("&File")
        _action(w, m, "&Open model…", w.open_dialog, QKeySequence.Open)
        _action(w, m, "Open &Hugging Face folder…", w.open_folder_dialog)
        _action(w, m, "Open &eval data…", w.open_data_dialog)
        _action(w, m, "Eval data from a &factory…", w.open_data_factory_dialog)
        self.recent_menu = m.addMenu("Open &recent")
        samples = m.addMenu("&Samples")
        for name in sample_names():
            _action(w, samples, name, lambda n=name: w.open_model(n))
        m.addSeparator()
        _action(w, m, "E&xport compressed file (.cexp)…", w.exports.export_dialog, QKeySequence("Ctrl+E"))
        std = m.addMenu("Export &standard format")
        for label, ext in STANDARD:
            _action(w, std, label, lambda e=ext: w.exports.standard_dialog(e))
        m.addSeparator()
        _action(w, m, "&Quit", w.close, QKeySequence.Quit)
        p = bar.addMenu("&Plan")
        _action(w, p, "&Load plan…", w.load_plan_dialog)
        _action(w, p, "&Save plan…", w.save_plan_dialog, QKeySequence.Save)
        _action(w, p, "&Reset (no compression)", lambda: w.session.set_plan(Plan()))
        p.addSeparator()
        self.auto_action = _action(w, p, "&Auto…", w.auto.open_dialog)
        c = bar.addMenu("&Compress")
        self.finetune_action = _action(w, c, "&Fine-tune…", w.finetuning.open_dialog)
        e = bar.addMenu("&Edit")
        self.undo_action = _action(w, e, "&Undo", w.session.undo, QKeySequence.Undo)
        self.redo_action = _action(w, e, "&Redo", w.session.redo, QKeySequence.Redo)
        self.refresh_recent()

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

    def plan_changed(self) -> None:
        self.undo_action.setEnabled(self.window.session.can_undo())
        self.redo_action.setEnabled(self.window.session.can_redo())

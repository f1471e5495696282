"""What a newcomer meets first (issue 17): the window with no model shows a page that opens a model or a
sample, with the controls and the actions that need a model disabled, and no empty plot with meaningless
axes; a failed open leaves that page usable; the Help menu's About, Concepts and Keyboard shortcuts."""

import math

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QAction, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import QApplication, QMessageBox, QTableWidget, QTextBrowser

import explorer
from explorer.engine.samples import sample_names
from explorer.gui import qt_help

TIMEOUT_MS = 30_000


def _is_settled(win):
    return win.idle() and not win.controls._timer.isActive()


def _model_shown(win, source):
    return (win.session.loaded is not None and win.session.loaded.source == source
            and win.session.results is not None and _is_settled(win))


def _y_range(plot):
    return plot.getPlotItem().getViewBox().viewRange()[1]


def _close_boxes(win):
    for box in win.findChildren(QMessageBox):
        box.close()


def test_the_empty_window_invites_and_disables_what_needs_a_model(make_window):
    win = make_window()
    page = win.empty.page
    assert win.empty.stack.currentWidget() is page and page.isVisible()
    assert not win.table.isVisible() and not win.preview.isVisible()
    assert list(page.sample_buttons) == sample_names() and sample_names()
    assert all(b.isEnabled() for b in [page.open_button, page.folder_button, *page.sample_buttons.values()])
    assert "drop" in " ".join(label.text() for label in page.findChildren(type(win.banner))).lower()
    assert not win.controls.isEnabled() and not win.controls.sparsity.isEnabled()
    assert win.menus.model_actions and not any(a.isEnabled() for a in win.menus.model_actions)
    assert not win.menus.undo_action.isEnabled() and not win.menus.redo_action.isEnabled()
    assert win.menus.about_action.isEnabled()
    # the plots, once shown, start on ranges that mean something (pyqtgraph's default for no data did not)
    assert _y_range(win.preview.plot) == [0.0, 1.0]
    assert _y_range(win.layer_view.plot) == [0.0, 1.0]


def test_a_sample_button_opens_the_sample_and_the_model_view_shows(make_window, qtbot):
    win = make_window()
    name = sample_names()[-1]
    qtbot.mouseClick(win.empty.page.sample_buttons[name], Qt.LeftButton)
    assert win.empty.page.status.text() == f"Opening {name}…"
    qtbot.waitUntil(lambda: _model_shown(win, name), timeout=TIMEOUT_MS)
    assert win.empty.stack.currentWidget() is win.empty.view and win.table.isVisible()
    assert not win.empty.page.isVisible()
    assert win.controls.isEnabled() and win.controls.sparsity.isEnabled()
    assert all(a.isEnabled() for a in win.menus.model_actions)
    assert not win.menus.undo_action.isEnabled()  # nothing to undo yet
    low, high = _y_range(win.preview.plot)
    dense = win.session.results["size"]["dense"]
    assert low == 0 and dense < high < 2 * dense
    low, high = _y_range(win.layer_view.plot)
    assert low == 0 and high > 1
    win.controls.set_sparsity(50)
    qtbot.waitUntil(lambda: _is_settled(win) and win.menus.undo_action.isEnabled(), timeout=TIMEOUT_MS)


def _drop(widget, path):
    """Drop ``path`` on ``widget`` as a file manager would (the event goes up to the widget that accepts it)."""
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    at = QPointF(widget.width() / 2, widget.height() / 2)
    for kind in (QDragEnterEvent, QDropEvent):
        event = kind(at.toPoint() if kind is QDragEnterEvent else at, Qt.CopyAction, data, Qt.LeftButton,
                     Qt.NoModifier)
        QApplication.sendEvent(widget, event)


def test_a_failed_open_leaves_the_empty_page_usable_with_the_error_shown(make_window, qtbot, tmp_path):
    bad = tmp_path / "not-a-model.pt"
    bad.write_bytes(b"\x00garbage" * 64)
    win = make_window()
    _drop(win.empty.page, bad)  # dropped on the page: the window takes it
    qtbot.waitUntil(lambda: win.last_error is not None and win.idle(), timeout=TIMEOUT_MS)
    _close_boxes(win)
    assert win.empty.stack.currentWidget() is win.empty.page and win.empty.page.isVisible()
    assert win.banner.isVisible() and bad.name in win.banner.text()
    assert win.empty.page.status.text() == ""  # no longer "Opening …"
    assert not win.controls.isEnabled() and not any(a.isEnabled() for a in win.menus.model_actions)
    name = sample_names()[0]
    qtbot.mouseClick(win.empty.page.sample_buttons[name], Qt.LeftButton)  # the page still works
    qtbot.waitUntil(lambda: _model_shown(win, name), timeout=TIMEOUT_MS)
    assert not win.banner.isVisible() and win.table.isVisible()


def _listed(win):
    table = win.menus.help.shortcuts_dialog.findChild(QTableWidget)
    return {tuple(table.item(r, c).text() for c in range(3)) for r in range(table.rowCount())}


def _keys(standard):
    """What the dialog should list for a standard key: every binding the platform has for it."""
    return ", ".join(k.toString(QKeySequence.NativeText) for k in QKeySequence.keyBindings(standard))


def test_the_shortcuts_dialog_lists_every_shortcut_the_actions_have(make_window):
    win = make_window()
    win.menus.help.shortcuts()
    dialog = win.menus.help.shortcuts_dialog
    assert dialog.isVisible() and not dialog.isModal()  # read beside the window, which stays usable
    listed = _listed(win)
    assert ("File", "Open model", _keys(QKeySequence.Open)) in listed and "Ctrl+O" in _keys(QKeySequence.Open)
    assert ("Edit", "Undo", _keys(QKeySequence.Undo)) in listed and "Ctrl+Z" in _keys(QKeySequence.Undo)
    assert ("Edit", "Redo", _keys(QKeySequence.Redo)) in listed
    assert any(row[:2] == ("Help", "Concepts") and "F1" in row[2] for row in listed)
    assert ("File", "Export compressed file (.cexp)", "Ctrl+E") in listed
    assert any(row[:2] == ("File", "Quit") and "Ctrl+Q" in row[2] for row in listed)  # on every platform
    with_keys = [a for a in win.findChildren(QAction) if not a.shortcut().isEmpty()]
    assert len(listed) == len(with_keys) >= 7
    # read from the actions themselves: a new one is listed, a removed shortcut is not
    extra = QAction("Frobnicate", win)
    extra.setShortcut(QKeySequence("Ctrl+Shift+K"))
    win.menus.undo_action.setShortcut(QKeySequence())
    win.menus.help.shortcuts()
    listed = _listed(win)
    assert ("", "Frobnicate", "Ctrl+Shift+K") in listed
    assert not any(row[1] == "Undo" for row in listed)


def test_about_names_the_version_the_licence_and_the_paper(make_window):
    win = make_window()
    win.menus.about_action.trigger()
    box = win.menus.help.about_box
    assert box.isVisible() and box.windowModality() != Qt.ApplicationModal  # open(), not exec()
    text = box.text()
    assert f"Compression Explorer {explorer.__version__}" in text
    assert "Deep Compression" in text and "ICLR 2016" in text and "1510.00149" in text
    assert "Han" in text and "Dally" in text
    assert "Licence: MIT" in text


def test_concepts_opens_the_readme_section_or_shows_it(make_window, monkeypatch, tmp_path):
    win = make_window()
    help_ = win.menus.help
    opened = []
    monkeypatch.setattr(help_, "open_url", lambda url: opened.append(url) or True)
    help_.concepts()
    assert len(opened) == 1 and opened[0].isLocalFile() and opened[0].fragment() == "concepts"
    readme = opened[0].toLocalFile()
    assert readme.endswith("README.md")
    assert qt_help.section(open(readme, encoding="utf-8").read(), "Concepts").startswith("## Concepts")
    assert help_.concepts_dialog is None  # the browser showed it

    # no browser to open it: the section's text in a dialog
    monkeypatch.setattr(help_, "open_url", lambda url: False)
    help_.concepts()
    shown = help_.concepts_dialog.findChild(QTextBrowser).toPlainText()
    assert help_.concepts_dialog.isVisible() and not help_.concepts_dialog.isModal()
    assert "Concepts" in shown and "k-means" in shown
    assert "Never lose work" not in shown  # the section only

    # no README beside the package (an installed copy): the installed description's section, or a notice
    monkeypatch.setattr(qt_help, "HOME", tmp_path)
    monkeypatch.setattr(help_, "open_url", lambda url: opened.append(url) or True)
    opened.clear()
    help_.concepts()
    shown = help_.concepts_dialog.findChild(QTextBrowser).toPlainText()
    assert not opened and help_.concepts_dialog.isVisible() and "Concepts" in shown


def test_section_is_the_heading_up_to_the_next_one():
    text = "# T\n\n## A\na\n\n## Concepts\none\n### sub\ntwo\n## B\nb\n"
    assert qt_help.section(text, "Concepts") == "## Concepts\none\n### sub\ntwo"
    assert qt_help.section(text, "Missing") is None


def test_the_compare_plot_of_one_measured_plan_is_not_a_sliver(make_window, qtbot):
    """One plan measured (right after a model opens): pyqtgraph's range of one point was 98.0555555555552 to
    98.0555555555558, bytes unlabelled. The axes now span at least two points of accuracy and a decade."""
    from explorer.gui.qt_compare import LEAST_DECADES, LEAST_QUALITY

    win = make_window("digits-mlp")
    qtbot.waitUntil(lambda: len(win.session.measured.points) == 1 and _is_settled(win), timeout=TIMEOUT_MS)
    win.tabs.setCurrentWidget(win.compare)
    (x0, x1), (y0, y1) = win.compare.plot.getPlotItem().getViewBox().viewRange()
    point = win.session.measured.points[0]
    assert y1 - y0 >= LEAST_QUALITY["accuracy"] and y0 < 100 * point.quality < y1
    assert x1 - x0 >= LEAST_DECADES and x0 < math.log10(point.file_bytes) < x1
    # zoomed by hand, the range stays through a new measurement; the auto-range button gives the fit back
    box = win.compare.plot.getViewBox()
    box.setRange(xRange=(x0, x0 + 0.1), yRange=(y0, y0 + 0.1), padding=0)
    box.sigRangeChangedManually.emit([True, True])  # what a mouse wheel or drag emits
    zoomed = box.viewRange()
    win.controls.set_sparsity(30)
    qtbot.waitUntil(lambda: len(win.session.measured.points) == 2 and _is_settled(win), timeout=TIMEOUT_MS)
    win.compare.refresh()
    assert box.viewRange() == zoomed
    box.enableAutoRange()
    win.compare.refresh()
    (x0, x1), (y0, y1) = box.viewRange()
    assert all(y0 < 100 * p.quality < y1 and x0 < math.log10(p.file_bytes) < x1 for p in win.session.measured.points)


def test_fit_span_pads_and_widens_about_the_middle():
    from explorer.gui.qt_compare import PAD, fit_span

    assert fit_span([98.0, 98.0], 2.0) == (98.0 - (1 + PAD), 98.0 + (1 + PAD))
    lo, hi = fit_span([10.0, 90.0], 2.0)
    assert lo == 50 - 40 * (1 + PAD) and hi == 50 + 40 * (1 + PAD)

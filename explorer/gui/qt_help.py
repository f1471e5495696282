"""Help → About (version, licence, the paper), Concepts (the README's section on what the controls mean) and
Keyboard shortcuts (read from the window's actions themselves, so the list cannot go stale). None blocks:
About is opened with ``open()`` (the event loop and the workers keep running), Concepts and the shortcuts are
not modal at all, so they can be read beside the window while it is used."""

from __future__ import annotations

import html
import importlib.metadata
import tomllib
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QMenu, QMessageBox, QTableWidget, QTableWidgetItem,
                               QTextBrowser, QVBoxLayout)

import explorer

DISTRIBUTION = "compression-explorer"
HOME = Path(explorer.__file__).resolve().parents[1]  # beside the package: README.md and pyproject.toml, if there
PAPER = ('Song Han, Huizi Mao and William J. Dally, "Deep Compression: Compressing Deep Neural Networks with '
         'Pruning, Trained Quantization and Huffman Coding", ICLR 2016')
ARXIV = "https://arxiv.org/abs/1510.00149"
CONCEPTS = "Concepts"  # the README's section (its anchor: #concepts)
SHORTCUTS_SLACK = 48  # pixels beside the shortcuts table's columns: the dialog's margins and a scroll bar


def licence(home: Path = HOME) -> str:
    """The licence as pyproject.toml declares it, else as the installed package's metadata says."""
    try:
        declared = tomllib.loads((home / "pyproject.toml").read_text())["project"]["license"]
        return declared["text"] if isinstance(declared, dict) else str(declared)
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        pass
    try:
        return importlib.metadata.metadata(DISTRIBUTION).get("License") or "unknown"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def section(markdown: str, title: str) -> Optional[str]:
    """The ``## title`` section of ``markdown`` (its heading included, up to the next ``## ``), or None."""
    lines = markdown.splitlines()
    try:
        start = lines.index(f"## {title}")
    except ValueError:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()


def _plain(text: str) -> str:
    return text.replace("&", "").rstrip("…").strip()


def shortcuts(window) -> list:
    """``(menu, action, keys)`` for every QAction of ``window`` that has a shortcut, in menu order."""
    rows = []
    for action in window.findChildren(QAction):
        keys = [k.toString(QKeySequence.NativeText) for k in action.shortcuts() if not k.isEmpty()]
        if keys:
            menus = [m.title() for m in action.associatedObjects() if isinstance(m, QMenu)]
            rows.append((_plain(menus[0]) if menus else "", _plain(action.text()), ", ".join(keys)))
    return rows


class Help:
    """The Help menu's three dialogs for ``window`` (made when first asked for, then shown again)."""

    def __init__(self, window):
        self.window = window
        self.about_box: Optional[QMessageBox] = None
        self.concepts_dialog: Optional[QDialog] = None
        self.shortcuts_dialog: Optional[QDialog] = None

    def about_text(self) -> str:
        return (f"<h3>Compression Explorer {html.escape(explorer.__version__)}</h3>"
                "<p>See and tune neural-network compression layer by layer: pruning, quantization (uniform and "
                "k-means weight sharing), low-rank factorisation and Huffman coding, with the bytes as stored "
                "and the accuracy as measured.</p>"
                f"<p>After {html.escape(PAPER)} (<a href='{ARXIV}'>arXiv:1510.00149</a>).</p>"
                f"<p>Licence: {html.escape(licence())}</p>")

    def about(self) -> None:
        if self.about_box is None:
            self.about_box = QMessageBox(QMessageBox.Information, "About Compression Explorer", self.about_text(),
                                         QMessageBox.Ok, self.window)
        self.about_box.open()

    # -- concepts
    def open_url(self, url: QUrl) -> bool:
        """Open ``url`` in the desktop's browser (tests patch this)."""
        return QDesktopServices.openUrl(url)

    def concepts(self) -> None:
        """The README's Concepts section: in the browser when README.md is beside the package, else its text
        (from the installed package's description) in a dialog."""
        readme = HOME / "README.md"
        if readme.is_file():
            url = QUrl.fromLocalFile(str(readme))
            url.setFragment(CONCEPTS.lower())
            if self.open_url(url):
                return
        self.show_concepts(section(_description(readme), CONCEPTS) or
                           "The Concepts section of the README is not installed with this copy.")

    def show_concepts(self, markdown: str) -> None:
        if self.concepts_dialog is None:
            browser = QTextBrowser()
            browser.setOpenExternalLinks(True)  # the paper's arXiv page
            self.concepts_dialog = _dialog(self.window, "Concepts", browser, 720, 600)
        browser = self.concepts_dialog.findChild(QTextBrowser)
        browser.setMarkdown(markdown)
        _show(self.concepts_dialog)

    # -- shortcuts
    def shortcuts(self) -> None:
        rows = shortcuts(self.window)
        if self.shortcuts_dialog is None:
            table = QTableWidget(0, 3)
            table.setHorizontalHeaderLabels(["menu", "action", "keys"])
            table.verticalHeader().setVisible(False)
            table.setEditTriggers(QTableWidget.NoEditTriggers)
            table.horizontalHeader().setStretchLastSection(True)
            self.shortcuts_dialog = _dialog(self.window, "Keyboard shortcuts", table, 460, 320)
        table = self.shortcuts_dialog.findChild(QTableWidget)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                table.setItem(r, c, QTableWidgetItem(text))
        table.resizeColumnsToContents()
        room = table.horizontalHeader().length() + 2 * table.frameWidth() + SHORTCUTS_SLACK  # every key in view
        self.shortcuts_dialog.resize(max(room, self.shortcuts_dialog.width()), self.shortcuts_dialog.height())
        _show(self.shortcuts_dialog)


def _description(readme: Path) -> str:
    """The README's text: the file, else the installed package's long description (the README too)."""
    try:
        return readme.read_text(encoding="utf-8")
    except OSError:
        pass
    try:
        return importlib.metadata.metadata(DISTRIBUTION).get_payload() or ""
    except importlib.metadata.PackageNotFoundError:
        return ""


def _show(dialog: QDialog) -> None:
    """Show ``dialog`` without modality (the window stays usable beside it), in front."""
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()


def _dialog(window, title: str, body, width: int, height: int) -> QDialog:
    dialog = QDialog(window)
    dialog.setWindowTitle(title)
    dialog.resize(width, height)
    lay = QVBoxLayout(dialog)
    lay.addWidget(body)
    buttons = QDialogButtonBox(QDialogButtonBox.Close)
    buttons.rejected.connect(dialog.close)
    lay.addWidget(buttons)
    return dialog

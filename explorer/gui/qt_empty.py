"""What the window shows until a model is open: a page that says what the explorer does and opens a model, a
Hugging Face folder or a bundled sample (or takes a file dropped on the window), in place of the layer table,
the controls and the plots, which have nothing to show yet and would show empty axes with meaningless ranges.
The compression controls and the menu actions that need a model stay disabled until one is open."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

from explorer.engine.errors import LoadError
from explorer.engine.samples import sample_info, sample_names

WHAT = ("See how pruning, k-means quantization, low-rank factorisation and Huffman coding shrink a PyTorch "
        "model, layer by layer: the bytes as stored, the MACs as counted, the accuracy as measured.")
DROP = "You can also drop a model file (.pt, .pth, .safetensors, .onnx, .cexp) or a model folder on this window."
TERMS = "New to these methods? Help → Concepts (F1) says what each control means."
PAGE_WIDTH = 720  # pixels: the page's text and buttons, centred in the window


def sample_line(name: str) -> str:
    """What sample ``name`` is, in a line: its description, parameters and accuracy as its metadata says."""
    try:
        info = sample_info(name)
    except LoadError as exc:
        return str(exc)
    facts = []
    if info.get("params"):
        facts.append(f"{info['params']:,} parameters")
    if info.get("baseline_accuracy") is not None:
        facts.append(f"{info['baseline_accuracy']:.1%} test accuracy")
    said = info.get("description", "").rstrip(".")
    return f"{said} ({', '.join(facts)})" if facts else said


def _row(*buttons) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addStretch(1)
    for b in buttons:
        row.addWidget(b)
    row.addStretch(1)
    return row


def _button(text: str, slot, tip: str = "") -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    b.setMinimumWidth(180)
    b.clicked.connect(lambda checked=False: slot())
    return b


def _label(text: str, style: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setAlignment(Qt.AlignCenter)
    label.setStyleSheet(style)
    return label


class EmptyPage(QWidget):
    """The invitation: what the explorer does, Open model…, Open Hugging Face folder…, one button a bundled
    sample, and the note that a file can be dropped here. ``window``: what the buttons call (its
    ``open_dialog``, ``open_folder_dialog`` and ``open_model``)."""

    def __init__(self, window, parent=None):
        super().__init__(parent)
        self.open_button = _button("Open model…", window.open_dialog,
                                   "a PyTorch file, safetensors (with --factory), ONNX or a .cexp")
        self.folder_button = _button("Open Hugging Face folder…", window.open_folder_dialog,
                                     "a folder with config.json and model.safetensors")
        self.sample_buttons = {name: _button(name, lambda n=name: window.open_model(n), f"open the sample {name}")
                               for name in sample_names()}
        box = QWidget()
        box.setFixedWidth(PAGE_WIDTH)
        lay = QVBoxLayout(box)
        lay.setSpacing(16)
        lay.addWidget(_label("<h1>Compression Explorer</h1>"))
        lay.addWidget(_label(WHAT))
        lay.addLayout(_row(self.open_button, self.folder_button))
        self.status = _label("", "color: #c60")  # what is being opened, until it is (or could not be)
        self.status.setVisible(False)
        lay.addWidget(self.status)
        if self.sample_buttons:
            lay.addWidget(_label("or start with a bundled sample:"))
            grid = QGridLayout()
            for i, (name, b) in enumerate(self.sample_buttons.items()):
                grid.addWidget(b, i, 0)
                about = QLabel(sample_line(name))
                about.setWordWrap(True)
                grid.addWidget(about, i, 1)
            grid.setColumnStretch(1, 1)
            lay.addLayout(grid)
        lay.addWidget(_label(DROP, "color: #666"))
        lay.addWidget(_label(TERMS, "color: #666"))
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        outer.addLayout(_row(box))
        outer.addStretch(2)


class EmptyState:
    """Shows ``window``'s :class:`EmptyPage` or its ``view`` (the table, controls and plots) in ``stack``, as
    the session has a model or not, and enables what needs one (the controls, the menus' model actions)."""

    def __init__(self, window, view: QWidget):
        self.window = window
        self.page = EmptyPage(window)
        self.view = view
        self.stack = QStackedWidget()
        self.stack.addWidget(self.page)
        self.stack.addWidget(view)
        window.session.on("model", self.update)

    def opening(self, source) -> None:
        """Say on the page that ``source`` is being opened (None: nothing is, e.g. it could not be)."""
        self.page.status.setText(f"Opening {source}…" if source else "")
        self.page.status.setVisible(bool(source))  # no gap in the page when there is nothing to say

    @property
    def empty(self) -> bool:
        return self.window.session.loaded is None

    def update(self) -> None:
        """Called once the window's menus exist, then on every new model."""
        empty = self.empty
        self.stack.setCurrentWidget(self.page if empty else self.view)
        self.window.controls.setEnabled(not empty)
        self.window.menus.model_open(not empty)

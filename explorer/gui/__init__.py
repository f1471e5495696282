"""The PySide6 + pyqtgraph window. Only :mod:`explorer.gui.workers` starts threads; only
:mod:`explorer.gui.main_window` wires views to the session."""

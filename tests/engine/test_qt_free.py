import subprocess
import sys


def test_engine_imports_no_qt():
    code = ("import sys, explorer.engine, explorer.engine.compress, explorer.engine.evaluate, explorer.cli\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'PySide6', 'PyQt5', 'PyQt6', 'shiboken6', 'pyqtgraph', 'superqt', 'qtpy'})\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"Qt modules loaded by the engine: {out.stdout.strip()}"

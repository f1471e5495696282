"""Starting the window: what is said when Qt could not open one (Qt itself aborts the process)."""

import subprocess
import sys

import pytest

from explorer.gui.app import display_problem, xcb_plugin


def found():
    return None


def missing():
    return "libxcb-cursor.so.0: cannot open shared object file: No such file or directory"


def test_a_missing_display_or_x11_library_is_named_before_qt_aborts():
    x11 = {"DISPLAY": ":0"}
    assert display_problem(x11, "linux", found) is None
    said = display_problem(x11, "linux", missing)
    assert "libxcb-cursor.so.0 is missing" in said and "apt install libxcb-cursor0" in said
    assert "libxcb-cursor.so.0" in display_problem(dict(x11, QT_QPA_PLATFORM="xcb"), "linux", missing)
    assert "DISPLAY is not set" in display_problem({}, "linux", found)
    other = display_problem(x11, "linux", lambda: "libEGL.so.1: cannot open shared object file: No such file")
    assert "libEGL.so.1 is missing" in other and "provides it" in other and "apt install" not in other
    # a plugin that exists but fails otherwise (a symbol, an ELF class): Qt says what it is
    assert display_problem(x11, "linux", lambda: "/x/libqxcb.so: undefined symbol: foo") is None
    # other platforms need neither
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux", missing) is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux", missing) is None
    assert display_problem({}, "darwin", missing) is None


def test_gui_without_a_display_exits_with_one_line():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run([sys.executable, "-m", "explorer", "gui"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line
    assert out.stderr.startswith("error: no display")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's X11 plugin is Linux's")
def test_the_x11_plugin_is_where_the_check_looks():
    """Else the check would quietly say nothing (a PySide6 layout change must fail here)."""
    assert xcb_plugin() is not None

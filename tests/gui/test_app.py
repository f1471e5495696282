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


@pytest.mark.parametrize("case", ["missing-model", "corrupt-model", "bad-plan"])
def test_screenshot_of_a_failed_load_exits_2_with_the_message(case, tmp_path):
    """Issue 12, item 7: ``gui --screenshot`` rendered the error banner and exited 0 when the model or the
    plan named on the command line did not load. No one reads that banner: it fails as every verb does."""
    import os

    png = tmp_path / "shot.png"
    args = [sys.executable, "-m", "explorer", "gui"]
    if case == "missing-model":
        args += [str(tmp_path / "nothing.pt")]
        expect = "no such file"
    elif case == "corrupt-model":
        bad = tmp_path / "bad.cexp"
        bad.write_bytes(b"\x89CEX\r\n\x1a\n" + b"\0" * 40)
        args += [str(bad)]
        expect = "bad.cexp"
    else:
        plan = tmp_path / "plan.json"
        plan.write_text('{"layers": {"nope": {"prune": {"amount": 0.5}}}}')
        args += ["digits-mlp", "--plan", str(plan)]
        expect = "matches no compressible layer"
    out = subprocess.run(args + ["--screenshot", str(png)], capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], out.stderr
    assert not png.exists()

"""The README's command-line examples are what the commands print today (a changed number fails here)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def examples():
    """(command, printed output) for every ``$ compression-explorer ...`` line of the README's blocks."""
    blocks, current = [], None
    for line in open(os.path.join(ROOT, "README.md"), encoding="utf-8"):
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    out = []
    for block in blocks:
        parts = re.split(r"^\$ compression-explorer (.*)$", block, flags=re.M)
        for command, printed in zip(parts[1::2], parts[2::2]):
            out.append((command, printed))
    return out


def test_the_readme_has_examples():
    commands = [c.split()[0] for c, _ in examples()]
    assert {"inspect", "evaluate", "compress", "info"} <= set(commands)


@pytest.mark.parametrize("command, printed", examples(), ids=[c for c, _ in examples()])
def test_a_readme_example_prints_what_it_shows(command, printed, tmp_path):
    args = command.split()
    os.symlink(os.path.join(ROOT, "sample_models"), tmp_path / "sample_models")  # the README's relative paths
    env = dict(os.environ, PYTHONPATH=ROOT)
    writers = {c.split()[c.split().index("-o") + 1]: c.split() for c, _ in examples() if "-o" in c.split()}
    if args[0] in ("info", "evaluate") and args[1] in writers:  # reads the file an example before it wrote
        subprocess.run([sys.executable, "-m", "explorer", *writers[args[1]]],
                       cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, "-m", "explorer", *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip("\n") == printed.strip("\n")

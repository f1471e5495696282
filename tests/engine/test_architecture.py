"""The layering holds (issue 13): import-linter's contracts (pyproject.toml), no import cycles among
explorer's modules (imports inside functions counted), imports inside functions only where they defer a
heavy or platform-bound dependency and say why, every engine module importable without Qt."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import explorer.engine

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "explorer"
QT = {"PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "superqt", "qtpy"}

#: what may be imported inside a function: heavy or optional dependencies deferred to where they are used,
#: and the window (Qt) deferred by the CLI's gui verb and by the display check before Qt starts
DEFERRED = {"onnx", "onnxscript", "ray", "transformers", "onnx2torch", "sklearn", "torch._dynamo", "PySide6",
            "ctypes", "explorer.gui",
            # the numba kernels, deferred by the registries that info and --help read (test_cli_start.py)
            "explorer.engine.storage.bitstream", "explorer.engine.storage.entropy", "explorer.engine.storage.coding"}


def _modules() -> dict:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path, tree) -> list:
    """(target, node, inside a function) for every import of ``name``'s source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node, id(node) in inside) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node, id(node) in inside))
            out += [(f"{target}.{a.name}", node, id(node) in inside) for a in node.names]
    return out


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "broken" not in out.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_no_import_cycles_counting_imports_inside_functions():
    mods = _modules()
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        for target, _, _ in _imports(m, path, ast.parse(path.read_text())):
            if target in mods and target != m and not m.startswith(target + "."):
                edges[m].add(target)
    # depth-first search for a back edge, iteratively
    colour, cycles = {m: 0 for m in mods}, []
    for start in mods:
        if colour[start]:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        colour[start], path = 1, [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                cycles.append(path[path.index(child):] + [child])
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges[child]))))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_only_defer_what_is_heavy_and_say_why():
    bad = []
    for m, path in _modules().items():
        lines = path.read_text().splitlines()
        for target, node, inside in _imports(m, path, ast.parse(path.read_text())):
            if not inside or target == "":
                continue
            top = target.split(".")[0]
            deferred = any(target == d or target.startswith(d + ".") for d in DEFERRED) or top in DEFERRED
            if target.startswith("explorer.gui") and not (m == "explorer.cli" or m.startswith("explorer.gui")):
                deferred = False
            if m == "explorer.cli" and (top == "torch" or target.startswith("explorer.engine.")):
                deferred = True  # the CLI parses (and answers --help) before torch is imported: its verbs import
                #                  the engine when they run (test_cli_start.py)
            said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            if not (deferred and said):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}"
                           + ("" if deferred else " (not a deferred dependency)") + ("" if said else " (no reason)"))
    assert not bad, "imports inside functions:\n" + "\n".join(sorted(set(bad)))


def test_every_engine_module_imports_without_qt():
    """Every module of the engine (walked, not listed) and the session, in a fresh interpreter."""
    names = sorted(m.name for m in pkgutil.walk_packages(explorer.engine.__path__, "explorer.engine."))
    assert len(names) > 20
    code = ("import sys, importlib\n"
            f"for name in {names + ['explorer.session', 'explorer.units', 'explorer.cli']!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(QT)!r})))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", f"Qt modules loaded by the engine: {out.stdout.strip()}"


def test_the_cli_imports_the_window_only_in_its_gui_verb():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    named = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in top_level
             for a in (n.names if isinstance(n, ast.Import) else [None])]
    assert not [m for m in named if m and (m.startswith("explorer.gui") or m.split(".")[0] in QT)]


MAX_FUNCTION_LINES = 100
MAX_CLASS_LINES = 300


def test_no_function_over_100_lines_and_no_class_over_300_in_explorer():
    too_long = []
    for name, path in sorted(_modules().items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines = node.end_lineno - node.lineno + 1
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                if lines > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines (> {limit})")
    assert not too_long, "split these:\n  " + "\n  ".join(too_long)


def test_no_module_imports_another_modules_private_names():
    """What modules share is public: a name imported from another explorer module never starts with _."""
    private = []
    for name, path in sorted(_modules().items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("explorer"):
                private += [f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, "\n  ".join(["private names imported:"] + private)

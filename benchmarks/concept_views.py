"""How long the Concepts tab holds the GUI thread when a view arrives from the background (issue 18: every
view updates from the background results with the same stall budget as today, <= 50 ms).

For each model (the bundled samples digits-cnn and digits-mlp under their sample plans; with ``--model
resnet18`` also an untrained ResNet-18 for MNIST, ``resnet_mnist:resnet18``, under a Deep Compression plan,
with MNIST's test images from ../shared/data/mnist-t10k for the teacher/student view) the engine computes
every view first, off the timing: each layer view (granularity element, filter and channel, storage,
quantization, entropy, low rank) of every layer, the pipeline, the model graph and the teacher/student
outputs. Then only the GUI thread's part is timed, on the Concepts tab's own pages
(:class:`~explorer.gui.qt_concepts.ConceptsView`) in a 1400x900 window laid out as the explorer's (the same
splitters and tab widgets around it, stand-ins for the other views; the tab gets ~750x500 of it; ``--alone``:
the tab alone at 1400x900, more to paint), offscreen: what the window does when a view arrives, i.e. the
plot's ``draw(...)`` and the explanation label's text (``page.say(view.explain())``; for the pipeline also
``pipeline_view`` of the results, for the graph ``graph_values`` of the chosen measure: the window computes
those on the GUI thread too), then ``app.processEvents()`` until the layouts and paints it caused are done.
Two measures:

- draw: that sequence timed as one block (draw + label + layout + paint: an upper bound of the stall), in
  wall time and in the GUI thread's own CPU time (the difference: waiting for a core another program holds);
- loop gap: the same posted as one event into a running event loop with a 5 ms heartbeat
  (:class:`gui_latency.Heartbeat`), which paints when Qt paints; the longest gap between two beats is the
  longest time the window does not respond (the draw and its paint may fall into different gaps).

Every draw is repeated ``--rounds`` times each way, the rounds going over the layers in turn (each draw shows
other data than the one before it, as when a user steps through the layers); "first" is the first draw of a
row for a model (for the first model the first draw of its page: the window does not warm these up).

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/concept_views.py [--rounds 5] [--model resnet18]
        [--alone] [--quick] [--strict]

``--quick``: digits-mlp only, one round (a smoke test, ~10 s). ``--strict``: exit 1 when the longest draw
exceeds the budget. Prints a table (not a test otherwise: nothing here asserts). The default run takes about
30 s on 2 cores, with ``--model resnet18`` about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gui_latency, and the factory 'resnet_mnist:resnet18'

import torch  # noqa: E402
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, qInstallMessageHandler  # noqa: E402
from PySide6.QtWidgets import (QApplication, QMainWindow, QSplitter, QStackedWidget, QTableWidget,  # noqa: E402
                               QTabWidget, QVBoxLayout, QWidget)

from explorer.engine.inspect import inspect_model  # noqa: E402
from explorer.engine.measure.preview import Previewer  # noqa: E402
from explorer.engine.model.loading import load_model  # noqa: E402
from explorer.engine.plan import Plan, uniform_plan  # noqa: E402
from explorer.engine.teach.layer import LAYER_VIEWS, layer_concept  # noqa: E402
from explorer.engine.teach.model import MEASURES, graph_values, model_graph, outputs_view, pipeline_view  # noqa: E402
from explorer.gui.qt_concepts import ConceptsView  # noqa: E402
from explorer.gui.qt_errors import quiet_offscreen  # noqa: E402
from gui_latency import Heartbeat, wait_until  # noqa: E402

BUDGET_MS = 50.0
SAMPLES = ("digits-cnn", "digits-mlp")
RESNET = "resnet_mnist:resnet18"
MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte.gz"
RESNET_PLAN = {"prune": {"amount": 0.7, "granularity": "element"},  # Deep Compression's pipeline, every layer
               "quantize": {"bits": 5, "method": "kmeans", "init": "linear"}}
GRANULARITIES = ("element", "filter", "channel")
SIZE = (1400, 900)
SETTLE_S = 0.03  # the event loop runs on this long after a posted draw, for its paint and the beats after it
PAINT_EVENTS = {QEvent.Paint, QEvent.UpdateRequest, QEvent.LayoutRequest, QEvent.MetaCall}


@dataclass
class Draw:
    """One view's arrival on its page: ``run(page)`` is what the window does then on the GUI thread."""
    row: str  # the table's view column
    page: str  # the Concepts page it is drawn on
    layer: str  # "" for a model view
    run: Callable
    prepare: Optional[Callable] = None  # ``prepare(page)`` before it, off the timing (a choice the user made)
    draw_ms: list = field(default_factory=list)
    cpu_ms: list = field(default_factory=list)  # the GUI thread's own CPU time in each draw (wall minus preemption)
    gap_ms: list = field(default_factory=list)


# ------------------------------------------------------------------------- what the window does on arrival


def show(view, page) -> None:
    """A layer view or the outputs arriving (``Concepts._show``: a view with nothing to draw hides the plot)."""
    page.plot.setVisible(getattr(view, "drawable", True))
    page.plot.draw(view)
    page.say(view.explain())


def show_pipeline(results: dict, page) -> None:
    """The pipeline is drawn from the session's results on the GUI thread (``Concepts._pipeline``)."""
    view = pipeline_view(results)
    page.plot.draw(view)
    page.say(view.explain())


def show_graph(graph, results: dict, measure: str, sensitivity: dict, selected: str, page) -> None:
    """The graph (computed once per model) drawn with the measure's values (``Concepts._draw_graph``)."""
    values = graph_values(results, measure, sensitivity)
    page.plot.draw(graph, values, selected)
    page.say(graph.explain(values, measure))


def choose_measure(measure: str, page) -> None:
    page.plot.measure.setCurrentIndex(MEASURES.index(measure))


# ------------------------------------------------------------------------------ the engine's part (untimed)


def open_model(name: str):
    """(loaded model, plan, label) of a sample under its plan, or of ResNet-18 with MNIST eval data."""
    if name != "resnet18":
        return load_model(name), Plan.load(ROOT / "sample_models" / f"{name}.plan.json"), name
    data = str(MNIST) if MNIST.exists() else None  # without it: no teacher/student view
    return load_model(RESNET, data=data, limit=256 if data else None), uniform_plan(**RESNET_PLAN), "resnet18"


def layer_draws(loaded, info, previewer, plan) -> list:
    """Every layer view of every layer, in the order the rounds go through them (layers inside a row)."""
    shapes: dict = {}
    rows: dict = {}
    for layer in info.layers:
        if layer.shared_with:
            continue
        settings = plan.settings_for(layer.name)
        for key in LAYER_VIEWS:
            for g in GRANULARITIES if key == "granularity" else (None,):
                view = layer_concept(key, loaded, info, previewer, layer.name, settings, g, shapes, plan=plan)
                row = f"granularity ({g})" if g else key
                rows.setdefault(row, []).append(Draw(row, key, layer.name, functools.partial(show, view)))
    return [d for draws in rows.values() for d in draws]


def model_draws(loaded, info, previewer, plan, results: dict) -> list:
    """The pipeline, the graph coloured by each measure, the outputs of two and of three models."""
    names = [l.name for l in info.layers]
    out = [Draw("pipeline", "pipeline", "", functools.partial(show_pipeline, results))]
    graph = model_graph(loaded.model, info)
    # the Sensitivity tab's spread per layer: not scanned here, a made-up spread so the layers are coloured
    sensitivity = {n: 0.004 * (i % 7 + 1) for i, n in enumerate(names)}
    for m in MEASURES:
        run = functools.partial(show_graph, graph, results, m, sensitivity, names[0])
        out.append(Draw(f"graph ({m})", "graph", "", run, functools.partial(choose_measure, m)))
    ev = loaded.eval_data
    if ev is None or not len(ev):
        return out
    student = previewer.build(plan, count=False).model
    teacher = "teacher (original)"
    two = outputs_view({teacher: loaded.model, "compressed (this plan)": student}, ev)
    # after fine-tuning the page shows three models; the compressed model stands in for the fine-tuned one
    three = outputs_view({teacher: loaded.model, "compressed, before fine-tuning": student, "fine-tuned": student}, ev)
    out.append(Draw("outputs", "outputs", "", functools.partial(show, two)))
    out.append(Draw("outputs (3 models)", "outputs", "", functools.partial(show, three)))
    return out


def compute(name: str) -> tuple:
    """(label, layer count, draws, seconds) of one model: every view computed by the engine."""
    t0 = time.perf_counter()
    loaded, plan, label = open_model(name)
    info = inspect_model(loaded.model, loaded.example_input)
    plan.resolve([l.name for l in info.layers])
    previewer = Previewer(loaded)
    results = previewer.measure(plan)
    draws = layer_draws(loaded, info, previewer, plan) + model_draws(loaded, info, previewer, plan, results)
    return label, len(info.layers), draws, time.perf_counter() - t0


# -------------------------------------------------------------------------------- the GUI thread's part


def window_frame(view) -> QMainWindow:
    """A 1400x900 window laid out as the explorer's (``MainWindow._lay_out``: the same splitters, sizes and
    nesting), the Concepts tab in its tab widget and empty stand-ins for the other views: the tab gets the
    window's share of the area, and a relayout it causes climbs the same widgets."""
    win = QMainWindow()
    tabs = QTabWidget()
    for title in ("Layer histogram", "Centroid comparison", "Sensitivity", "Compare plans"):
        tabs.addTab(QWidget(), title)
    tabs.addTab(view, "Concepts")
    tabs.setCurrentWidget(view)
    left = QSplitter(Qt.Vertical)
    left.addWidget(QTableWidget(12, 6))
    left.addWidget(QWidget())
    left.setSizes([520, 300])
    right = QSplitter(Qt.Vertical)
    right.addWidget(tabs)
    right.addWidget(QWidget())  # the preview panel
    right.setSizes([520, 360])
    main = QSplitter(Qt.Horizontal)
    main.addWidget(left)
    main.addWidget(right)
    main.setSizes([640, 760])
    stack = QStackedWidget()  # the empty page's stack (qt_empty.EmptyState), showing the splitter
    stack.addWidget(main)
    central = QWidget()
    lay = QVBoxLayout(central)
    lay.setContentsMargins(4, 4, 4, 4)
    lay.addWidget(stack, 1)
    win.setCentralWidget(central)
    win.resize(*SIZE)
    return win


class PaintCounter(QObject):
    """Counts the events a redraw goes through (layouts, queued scene updates, update requests, paints)."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() in PAINT_EVENTS:
            self.seen += 1
        return False


def drain(app, counter: PaintCounter, passes: int = 40) -> None:
    """``app.processEvents()`` until a pass meets no layout, update or paint: a redraw's events post the
    next ones (a scene's queued update -> the viewport's update request -> its paint), and a new label text
    climbs the widget tree to the window one layout request per pass (each tab widget on the way repaints
    what it holds)."""
    for _ in range(passes):
        counter.seen = 0
        app.processEvents()
        if not counter.seen:
            return


def bring_up(app, view, d: Draw, counter: PaintCounter):
    """The draw's page in sight, with what the user chose, painted (off the timing)."""
    page = view.pages[d.page]
    view.select(d.page)
    if d.prepare is not None:
        d.prepare(page)
    drain(app, counter)
    return page


def time_draw(app, view, d: Draw, counter: PaintCounter) -> None:
    """The draw, the label and the paint they cause, as one block."""
    page = bring_up(app, view, d, counter)
    t0, c0 = time.perf_counter(), time.thread_time()
    d.run(page)
    drain(app, counter)
    d.draw_ms.append((time.perf_counter() - t0) * 1000)
    d.cpu_ms.append((time.thread_time() - c0) * 1000)


def time_gap(app, view, d: Draw, counter: PaintCounter, beat: Heartbeat) -> None:
    """The draw and the label as one posted event, the event loop running on (painting when Qt paints) with
    the heartbeat: the longest gap between two beats from the one before the draw on."""
    page = bring_up(app, view, d, counter)
    state: dict = {}

    def run():
        beat.phase = "draw"
        d.run(page)
        state["done"] = time.perf_counter()

    beat.phase = "before"
    beat.gaps.clear()
    beat.resume()  # the gap before is the benchmark's own work (bringing the page up)
    QTimer.singleShot(0, run)
    wait_until(lambda: "done" in state and time.perf_counter() - state["done"] > SETTLE_S, timeout_s=60)
    d.gap_ms.append(beat.longest("draw")[0])
    beat.phase = "between"


def time_model(app, view, draws: list, rounds: int, counter: PaintCounter, beat: Heartbeat) -> float:
    """Every draw ``rounds`` times each way; returns the seconds it took."""
    t0 = time.perf_counter()
    for _ in range(rounds):
        for d in draws:
            time_draw(app, view, d, counter)
        beat.start()
        for d in draws:
            time_gap(app, view, d, counter, beat)
        beat.stop()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ report


def rows_of(label: str, draws: list) -> list:
    """One table row per view: (sample, view, layers, first, median, max, loop gap, slowest layer, max CPU)."""
    out = []
    for row in dict.fromkeys(d.row for d in draws):
        group = [d for d in draws if d.row == row]
        times = [t for d in group for t in d.draw_ms]
        worst = max(group, key=lambda d: max(d.draw_ms))
        layers = str(len(group)) if group[0].layer else "model"
        out.append((label, row, layers, group[0].draw_ms[0], statistics.median(times), max(times),
                    max(g for d in group for g in d.gap_ms), worst.layer or "–",
                    max(c for d in group for c in d.cpu_ms)))
    return out


def print_table(rows: list) -> None:
    head = ("sample", "view", "layers", "first ms", "median ms", "max ms", "max cpu ms", "loop gap ms",
            "slowest layer")
    cells = [head] + [(s, v, n, f"{a:.1f}", f"{b:.1f}", f"{c:.1f}", f"{u:.1f}", f"{g:.1f}", w)
                      for s, v, n, a, b, c, g, w, u in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    right = {2, 3, 4, 5, 6, 7}

    def line(r):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"

    print(line(head))
    print("| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |")
    for r in cells[1:]:
        print(line(r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="draws of every view each way (default 5)")
    ap.add_argument("--model", action="append", choices=["resnet18"], default=[],
                    help="also ResNet-18 for MNIST (resnet_mnist:resnet18, untrained; 21 layers)")
    ap.add_argument("--alone", action="store_true", help="the Concepts tab alone at 1400x900 (default: in a "
                    "window laid out as the explorer's, where it gets about 760x520)")
    ap.add_argument("--quick", action="store_true", help="digits-mlp only, one round (a smoke test)")
    ap.add_argument("--strict", action="store_true", help=f"exit 1 when a draw exceeds {BUDGET_MS:.0f} ms")
    args = ap.parse_args(argv)
    if "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    return run(args)


def run(args) -> int:
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    if os.environ.get("QT_QPA_PLATFORM", "").startswith("offscreen"):
        qInstallMessageHandler(quiet_offscreen)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    counter = PaintCounter()
    app.installEventFilter(counter)
    view = ConceptsView()
    top = view if args.alone else window_frame(view)
    top.resize(*SIZE)
    top.show()
    beat = Heartbeat()  # runs in the loop-gap passes only
    models = (["digits-mlp"] if args.quick else list(SAMPLES)) + args.model
    rounds = 1 if args.quick else args.rounds
    rows, notes = [], []
    for name in models:
        label, n_layers, draws, engine_s = compute(name)
        drawing_s = time_model(app, view, draws, rounds, counter, beat)
        rows += rows_of(label, draws)
        notes.append(f"{label}: {n_layers} layers, {len(draws)} views computed by the engine in {engine_s:.1f} s, "
                     f"drawn {rounds}x each way in {drawing_s:.1f} s")
    where = "alone" if args.alone else "in a window laid out as the explorer's"
    print(f"Concepts tab {where}, {view.width()}x{view.height()} of {SIZE[0]}x{SIZE[1]}, "
          f"{os.environ.get('QT_QPA_PLATFORM', 'default')} platform; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, 1-min load average {load_start:.2f} at the "
          f"start, {os.getloadavg()[0]:.2f} at the end (other programs on the host show in the times); {rounds} rounds")
    for n in notes:
        print("  " + n)
    print()
    print_table(rows)
    print()
    worst = summarise(rows)
    print(f"ran in {time.perf_counter() - t_start:.0f} s")
    print(f"max GUI-thread stall: {worst[5]:.0f} ms (budget {BUDGET_MS:.0f} ms; {worst[0]} {worst[1]}, "
          f"{worst[7]})")
    top.close()
    return 1 if args.strict and worst[5] > BUDGET_MS else 0


def summarise(rows: list) -> tuple:
    """The lines under the table; returns the row with the longest draw."""
    worst = max(rows, key=lambda r: r[5])
    gap = max(rows, key=lambda r: r[6])
    cpu = max(rows, key=lambda r: r[8])
    print(f"longest event-loop gap (5 ms heartbeat, the draw posted as one event): {gap[6]:.0f} ms "
          f"({gap[0]} {gap[1]})")
    print(f"most GUI-thread CPU time in one draw: {cpu[8]:.0f} ms ({cpu[0]} {cpu[1]}); a draw's wall time beyond "
          "its CPU time is the thread waiting for a core (another program's load)")
    over = [f"{r[0]} {r[1]} ({r[5]:.0f} ms, cpu {r[8]:.0f} ms, {r[7]})" for r in rows if r[5] > BUDGET_MS]
    print("over the budget: " + ("; ".join(over) if over else "none"))
    return worst


if __name__ == "__main__":
    raise SystemExit(main())

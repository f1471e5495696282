"""The handout: ``compression-explorer report MODEL --plan PLAN -o report.html`` writes one standalone HTML
page with every concept view of the Concepts tab, drawn by the same plotting classes offscreen, each with its
explanation in the model's own numbers and its help (what it shows, why it matters, the formula, the
reference). The pictures are embedded (PNG, base64): the page needs nothing beside it."""

from __future__ import annotations

import base64
import html
import os
import time
from typing import Callable, Optional

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt, qInstallMessageHandler
from PySide6.QtWidgets import QApplication

from explorer.engine.errors import ExplorerError
from explorer.engine.inspect import inspect_model
from explorer.engine.measure.evaluate import quality
from explorer.engine.measure.preview import Previewer
from explorer.engine.storage.atomic import atomic_write_bytes
from explorer.engine.teach.help import HELP
from explorer.engine.teach.layer import LAYER_VIEWS, layer_concept
from explorer.engine.teach.model import graph_values, model_graph, outputs_view, pipeline_view
from explorer.gui.qt_concept_layer import EntropyPlot, GranularityPlot, QuantizationPlot, SpectrumPlot, StoragePlot
from explorer.gui.qt_concept_model import GraphPlot, OutputsPlot, PipelinePlot
from explorer.gui.qt_errors import quiet_offscreen
from explorer.units import human_bytes

PLOTS = {"granularity": GranularityPlot, "storage": StoragePlot, "quantization": QuantizationPlot,
         "entropy": EntropyPlot, "lowrank": SpectrumPlot, "pipeline": PipelinePlot, "graph": GraphPlot,
         "outputs": OutputsPlot}
SIZE = (960, 460)  # pixels of each picture
LAYERS_ALL = 6  # a model with at most this many layers gets every layer's views; a larger one its largest
LAYERS_LARGEST = 3
STYLE = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}figure{margin:1em 0}
img{max-width:100%;border:1px solid #ddd}figcaption{margin-top:.4em}
.help{background:#f6f6f6;padding:.6em 1em;border-radius:4px}.help p{margin:.3em 0}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"""


def png_of(widget) -> str:
    """The widget rendered offscreen at :data:`SIZE`, as base64 PNG."""
    widget.resize(*SIZE)
    widget.setAttribute(Qt.WA_DontShowOnScreen, True)
    widget.setVisible(True)
    QApplication.processEvents()
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.WriteOnly)
    widget.grab().save(buf, "PNG")
    widget.setVisible(False)
    return base64.b64encode(bytes(data)).decode("ascii")


def report_layers(info, chosen: Optional[list]) -> list:
    if chosen:
        unknown = [n for n in chosen if n not in {l.name for l in info.layers}]
        if unknown:
            raise ExplorerError(f"no layer {unknown[0]!r} (the layers: {', '.join(l.name for l in info.layers)})")
        return list(chosen)
    names = [l.name for l in info.layers if not l.shared_with]
    if len(names) <= LAYERS_ALL:
        return names
    largest = sorted(info.layers, key=lambda l: -l.weight_params)[:LAYERS_LARGEST]
    return [l.name for l in info.layers if l in largest]


def _figure(png: Optional[str], caption: str) -> str:
    """A picture with its explanation under it; the explanation alone where there is nothing to draw."""
    img = f'<img alt="{html.escape(caption[:80])}" src="data:image/png;base64,{png}">' if png else ""
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _help(key: str) -> str:
    h = HELP[key]
    return (f"<h2>{html.escape(h.title)}</h2><div class='help'><p><b>What it shows.</b> {html.escape(h.shows)}</p>"
            f"<p><b>Why it matters.</b> {html.escape(h.why)}</p><p><b>Formula.</b> {html.escape(h.formula)}</p>"
            f"<p><b>Reference.</b> {html.escape(h.reference)}</p></div>")


def _head(loaded, plan, summary: dict, q: Optional[dict]) -> str:
    size = summary["size"]
    rows = "".join(f"<tr><th style='text-align:left'>{s}</th><td>{size[s]:,}</td><td>{human_bytes(size[s])}</td>"
                   f"<td>{size['dense'] / size[s]:.1f}×</td></tr>" for s in ("dense", "pruned", "quantized", "coded", "file")
                   if size.get(s))
    acc = ""
    if q and "before" in q:
        acc = (f"<p>Accuracy on {html.escape(q['data'])} ({q['samples']:,} samples): {q['before']:.2%} dense → "
               f"{q['after']:.2%} compressed, no fine-tuning.</p>")
    elif q:
        acc = f"<p>Output cosine against the original on {html.escape(q['data'])}: {q['cosine']:.4f}.</p>"
    return (f"<h1>Compressing {html.escape(str(loaded.source))}</h1>"
            f"<p>Plan: {html.escape(plan.description or 'as given')}</p>"
            f"<table><tr><th>stage</th><th>bytes</th><th></th><th>ratio</th></tr>{rows}</table>{acc}"
            f"<p>Every number below was measured by Compression Explorer's engine on this model and plan "
            f"({time.strftime('%Y-%m-%d')}).</p>")


def write_report(loaded, plan, path: str, layers: Optional[list] = None,
                 say: Callable[[str], None] = lambda _: None) -> dict:
    """Measure ``plan`` on ``loaded``, draw every concept view and write the page to ``path`` (atomically).
    Returns ``{"path", "bytes", "figures", "layers"}``."""
    if QApplication.instance() is None:
        if os.environ.get("QT_QPA_PLATFORM", "").startswith("offscreen"):
            qInstallMessageHandler(quiet_offscreen)
        QApplication([])
    say("inspecting the model")
    info = inspect_model(loaded.model, loaded.example_input)
    plan.resolve([l.name for l in info.layers])
    previewer = Previewer(loaded)
    say("measuring the plan")
    summary = previewer.measure(plan)
    built = previewer.build(plan, count=False)
    q = quality(loaded, built.model)
    names = report_layers(info, layers)
    settings = plan.resolve(previewer.names)
    parts, figures, shapes = [_head(loaded, plan, summary, q)], 0, {}
    for key in LAYER_VIEWS:
        parts.append(_help(key))
        plot = PLOTS[key]()
        for name in names:
            say(f"{HELP[key].title.lower()}: {name}")
            for g in _granularities(key, info.layer(name), settings[name]):
                view = layer_concept(key, loaded, info, previewer, name, settings[name], g, shapes, plan=plan)
                if not view.drawable:  # e.g. the storage of a layer without element pruning: its text says why
                    parts.append(_figure(None, view.explain()))
                    continue
                plot.draw(view)
                parts.append(_figure(png_of(plot), view.explain()))
                figures += 1
    say("the pipeline and the model graph")
    for key, view, draw in _model_views(loaded, info, summary, built.model):
        parts.append(_help(key))
        plot = PLOTS[key]()
        text = draw(plot, view)
        parts.append(_figure(png_of(plot), text))
        figures += 1
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Compression report: "
            f"{html.escape(os.path.basename(str(loaded.source)))}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    data = page.encode("utf-8")
    atomic_write_bytes(path, data)
    return {"path": path, "bytes": len(data), "figures": figures, "layers": names}


def _granularities(key: str, layer, settings) -> list:
    """The granularities a layer's granularity figure is drawn for: the plan's, and filters beside it where
    they can go (what whole-row removal takes with it); one figure (None) for the other views."""
    if key != "granularity":
        return [None]
    planned = settings.prune.granularity if settings.prune is not None else "element"
    return [planned] + (["filter"] if layer.filter_ok and planned != "filter" else [])


def _model_views(loaded, info, summary: dict, student) -> list:
    """(key, view, draw) of the model-level pages; ``draw(plot, view)`` draws and returns the explanation."""
    graph = model_graph(loaded.model, info)
    values = graph_values(summary, "ratio")

    def draw_graph(plot, g):
        plot.draw(g, values)
        return g.explain(values, "ratio")

    def draw(plot, view):
        plot.draw(view)
        return view.explain()

    out = [("pipeline", pipeline_view(summary), draw), ("graph", graph, draw_graph)]
    ev = loaded.eval_data
    if ev is not None and len(ev):
        out.append(("outputs", outputs_view({"teacher (original)": loaded.model, "compressed (this plan)": student},
                                            ev), draw))
    return out

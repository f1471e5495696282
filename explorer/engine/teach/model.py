"""The concepts seen on the whole model: the Deep Compression pipeline as a waterfall of the bytes each
stage leaves (read off the engine's measured summary, never recomputed), the model as a graph of its layers
(from an fx trace) coloured by a measure, and the outputs of the teacher (the original model) beside its
students (the compressed model, before and after fine-tuning) on sample inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from explorer.engine.measure.metrics import compressible_layers, fidelity, model_outputs
from explorer.engine.modules import trace
from explorer.engine.progress import ProgressFn, report
from explorer.units import human_bytes

PIPELINE = ("dense", "pruned", "quantized", "coded", "file")
STAGE_TEXT = {"dense": "dense float32", "pruned": "pruned", "quantized": "quantized", "coded": "entropy-coded",
              "file": "the file"}


# ----------------------------------------------------------------------------------------- pipeline
@dataclass
class PipelineView:
    """Bytes after each stage of the pipeline (Deep Compression's Figure 1 with this model's numbers)."""
    totals: dict  # stage -> bytes (the file: as written, header and all)
    layers: list  # (name, {stage: bits}) per compressible layer, dense .. coded
    other: dict  # stage -> bits of what stays float (biases, norms)

    def ratio(self, stage: str) -> Optional[float]:
        b = self.totals.get(stage)
        return self.totals["dense"] / b if b else None

    def explain(self) -> str:
        steps = [f"{STAGE_TEXT[s]} {human_bytes(self.totals[s])}" + (f" ({self.ratio(s):.1f}×)" if s != "dense" else "")
                 for s in PIPELINE if self.totals.get(s) is not None]
        text = " → ".join(steps)
        if self.layers:
            name, bits = max(self.layers, key=lambda t: t[1]["dense"])
            coded = sum(b["coded"] for _, b in self.layers) + self.other["coded"]
            text += (f". The largest layer, {name}, goes from {human_bytes(bits['dense'] // 8)} to "
                     f"{human_bytes((bits['coded'] + 7) // 8)}: {bits['coded'] / max(coded, 1):.0%} of the coded bytes")
        if self.totals.get("file") is not None and self.totals.get("coded"):
            text += (f"; the file adds {human_bytes(max(self.totals['file'] - self.totals['coded'], 0))} of "
                     "headers, shapes and the model's structure")
        return text


def pipeline_view(summary: dict) -> PipelineView:
    """The pipeline of a measured plan, from its summary (:func:`~explorer.engine.measure.evaluate.summarize`)."""
    totals = {s: summary["size"][s] for s in PIPELINE[:-1]}
    totals["file"] = summary["size"].get("file")
    layers = [(l["name"], dict(l["bits"])) for l in summary["layers"]]
    other = {s: summary["size_bits"][s] - sum(b[s] for _, b in layers) for s in PIPELINE[:-1]}
    return PipelineView(totals, layers, other)


# ----------------------------------------------------------------------------------------- graph
MERGES = {"add", "iadd", "sub", "mul", "cat", "concat", "stack", "matmul", "bmm", "einsum"}
MEASURES = ("ratio", "sparsity", "bits", "share", "sensitivity")
MEASURE_TEXT = {"ratio": "compression ratio (dense ÷ coded)", "sparsity": "share of weights pruned",
                "bits": "coded bits per weight of the layer", "share": "share of the coded bytes",
                "sensitivity": "accuracy spread over the sensitivity scan (best − worst point)"}


@dataclass
class GraphNode:
    id: int
    label: str
    kind: str  # input, layer (compressible), module, merge, output
    layer: Optional[str] = None  # the compressible layer it is
    op: str = ""
    depth: int = 0
    lane: float = 0.0
    fixed: Optional[str] = None  # why its filters cannot be removed (compressible layers only)
    held: int = 1  # compressible layers it stands for (an LSTM's weight matrices: several)


@dataclass
class ModelGraph:
    nodes: list
    edges: list  # (from id, to id)
    traced: bool = True
    reason: str = ""  # why it is a list (tracing failed)

    def node_of(self, layer: str) -> Optional[GraphNode]:
        return next((n for n in self.nodes if n.layer == layer), None)

    def explain(self, values: dict, measure: str) -> str:
        layers = [n for n in self.nodes if n.kind == "layer"]
        merges = [n for n in self.nodes if n.kind == "merge"]
        head = (f"{sum(n.held for n in layers)} compressible layers" + (f" in {len(layers)} modules"
                                                                       if any(n.held > 1 for n in layers) else "") + (f", {len(merges)} merges ({', '.join(sorted({n.op for n in merges}))})"
                                                         if merges else "")
                + ("" if self.traced else f", drawn as a list ({self.reason})"))
        fixed = [n.layer for n in layers if n.fixed]
        if fixed:
            head += f"; {len(fixed)} whose filters cannot be removed (outlined red): {', '.join(fixed[:4])}" + \
                    ("…" if len(fixed) > 4 else "")
        shown = {k: v for k, v in values.items() if v is not None}
        if not shown:
            return f"{head}. No {MEASURE_TEXT[measure]} measured yet"
        top = max(shown, key=shown.get)
        low = min(shown, key=shown.get)
        return (f"{head}. Coloured by {MEASURE_TEXT[measure]}: highest {top} ({_value(measure, shown[top])}), "
                f"lowest {low} ({_value(measure, shown[low])})")


def _value(measure: str, v: float) -> str:
    if measure == "ratio":
        return f"{v:.1f}×"
    if measure == "bits":
        return f"{v:.2f} bits"
    return f"{v:.1%}"


def _target_name(node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def model_graph(model: nn.Module, info, progress: ProgressFn = None) -> ModelGraph:
    """The model's layers as a graph from an fx trace (modules, merges such as residual adds and
    concatenations, the input and output; single-input functions such as relu or flatten folded into their
    edges), laid out by depth; a list of the compressible layers where tracing fails."""
    fixed = {l.name: (None if l.filter_ok else (l.filter_reason or "fixed")) for l in info.layers}
    layer_names = dict.fromkeys(name for name, _ in compressible_layers(model))  # in the model's order
    report(progress, 0.1, "tracing the model")
    try:
        traced = trace(model)
    except Exception as exc:  # any trace failure: the layers as a list, and why
        first = str(exc).strip().splitlines()
        nodes = [GraphNode(i, l.name, "layer", l.name, l.type, i, 0.0, fixed.get(l.name)) for i, l in enumerate(info.layers)]
        return ModelGraph(nodes, [(i, i + 1) for i in range(len(nodes) - 1)], False,
                          f"fx cannot trace it: {type(exc).__name__}: {first[0][:120] if first else ''}")
    nodes, edges, ids = [], set(), {}
    through: dict = {}  # folded node -> the kept nodes it stands for
    modules = dict(traced.named_modules())
    for fx_node in traced.graph.nodes:
        sources = set()
        for a in fx_node.all_input_nodes:
            sources |= {ids[a]} if a in ids else through.get(a, set())
        kind = _kind(fx_node, modules, layer_names)
        if kind is None:
            through[fx_node] = sources
            continue
        target = _target_name(fx_node)
        label = target if fx_node.op == "call_module" else ("input" if kind == "input" else
                                                            "output" if kind == "output" else target)
        layer = (target if target in layer_names else _first_slot(target, layer_names)) if kind == "layer" else None
        n = GraphNode(len(nodes), label, kind, layer,
                      type(modules[target]).__name__ if fx_node.op == "call_module" else target,
                      fixed=fixed.get(layer) if kind == "layer" else None)
        if layer is not None and layer != target:
            n.held = sum(1 for name in layer_names if name.startswith(target + "."))
        ids[fx_node] = n.id
        nodes.append(n)
        edges |= {(s, n.id) for s in sources}
    _lay_out(nodes, sorted(edges))
    return ModelGraph(nodes, sorted(edges))


def _kind(fx_node, modules, layer_names) -> Optional[str]:
    if fx_node.op == "placeholder":
        return "input"
    if fx_node.op == "output":
        return "output"
    if fx_node.op == "call_module":  # a layer, or a module holding several (an LSTM's weight matrices)
        t = fx_node.target
        return "layer" if t in layer_names or _first_slot(t, layer_names) else "module"
    if fx_node.op in ("call_function", "call_method"):
        tensors = [a for a in fx_node.all_input_nodes if a.op != "get_attr"]
        if _target_name(fx_node).strip("_") in MERGES and len(tensors) >= 2:
            return "merge"
    return None


def _first_slot(module: str, layer_names) -> Optional[str]:
    """The first compressible weight matrix module ``module`` holds (``lstm.weight_ih_l0``), if any."""
    return next((n for n in layer_names if n.startswith(module + ".")), None)


def _lay_out(nodes: list, edges: list) -> None:
    """Depth = the longest path from an input; lanes within a depth ordered by their sources' lanes."""
    preds = {n.id: [] for n in nodes}
    for a, b in edges:
        preds[b].append(a)
    by_id = {n.id: n for n in nodes}
    for n in nodes:  # fx nodes come in topological order
        n.depth = 1 + max((by_id[p].depth for p in preds[n.id]), default=-1)
    levels: dict = {}
    for n in nodes:
        levels.setdefault(n.depth, []).append(n)
    for depth in sorted(levels):
        row = levels[depth]
        row.sort(key=lambda n: np.mean([by_id[p].lane for p in preds[n.id]]) if preds[n.id] else 0.0)
        for i, n in enumerate(row):
            n.lane = i - (len(row) - 1) / 2


def graph_values(summary: Optional[dict], measure: str, sensitivity: Optional[dict] = None) -> dict:
    """Per compressible layer, the ``measure`` (:data:`MEASURES`) of a measured plan: the summary's numbers."""
    if measure == "sensitivity":
        return dict(sensitivity or {})
    if not summary:
        return {}
    out = {}
    coded = max(summary["size_bits"]["coded"], 1)
    for l in summary["layers"]:
        b = l["bits"]
        if l.get("shared_with"):
            out[l["name"]] = None
        elif measure == "ratio":
            out[l["name"]] = b["dense"] / b["coded"] if b["coded"] else None
        elif measure == "sparsity":
            out[l["name"]] = 1 - l["nonzero"] / l["params_before"] if l["params_before"] else None
        elif measure == "bits":
            out[l["name"]] = b["coded"] / l["params_before"] if l["params_before"] else None
        else:
            out[l["name"]] = b["coded"] / coded
    return out


# ----------------------------------------------------------------------------------------- outputs
TOP = 5


@dataclass
class OutputsView:
    """Teacher (the original model) and students on the same inputs. A classifier (one score per class and
    input): the teacher's top classes with each model's probability for them, and each model's own top class;
    agreement with the teacher's top class over ``n`` inputs (accuracy too where labels are known). Anything
    else (regression, per-token outputs): the first outputs, and how close each student's outputs are to the
    teacher's (:func:`~explorer.engine.measure.metrics.fidelity`: cosine similarity, relative error)."""
    models: list  # labels, the teacher first
    samples: list = field(default_factory=list)  # {"index", "label", "outputs": {model: [(class, p)] or [values]},
    #                                                "top": {model: (class, p)}}
    agreement: dict = field(default_factory=dict)  # model -> share of the n inputs whose top class is the teacher's
    accuracy: dict = field(default_factory=dict)  # model -> top-1 accuracy over the n inputs (labels known)
    fidelity: dict = field(default_factory=dict)  # model -> {"cosine", "rel_error"} against the teacher
    n: int = 0
    classifier: bool = True
    data: str = ""

    def explain(self) -> str:
        if len(self.models) < 2:
            return "No student yet: measure a plan (and fine-tune it) to compare its outputs with the teacher's"
        if not self.classifier:
            parts = [f"{m}'s outputs have cosine similarity {f['cosine']:.4f} with the teacher's, relative error "
                     f"{f['rel_error']:.2%}" for m, f in ((m, self.fidelity[m]) for m in self.models[1:])]
            return f"On the first {self.n:,} inputs of {self.data}: " + "; ".join(parts)
        parts = []
        for m in self.models[1:]:
            acc = self.accuracy.get(m)
            parts.append(f"{m} agrees with the teacher's top class on {self.agreement[m]:.1%}" +
                         (f" (accuracy {acc:.1%} against the teacher's {self.accuracy[self.models[0]]:.1%})"
                          if acc is not None else ""))
        text = f"On the first {self.n:,} inputs of {self.data}: " + "; ".join(parts)
        if self.samples:
            first = self.samples[0]
            t, s = first["top"][self.models[0]], first["top"][self.models[-1]]
            text += (f". Input {first['index']}: the teacher says {t[0]} with p = {t[1]:.2f}, "
                     f"{self.models[-1]} {s[0]} with p = {s[1]:.2f}")
        return text


def outputs_view(models: dict, eval_data, samples: int = 4, n: int = 256, progress: ProgressFn = None) -> OutputsView:
    """``models``: label -> model, the teacher first. Runs each on the first ``n`` inputs of ``eval_data``."""
    labels = list(models)
    view = OutputsView(labels, n=min(n, len(eval_data)), data=eval_data.name)
    x = eval_data.inputs[: view.n]
    outs = {}
    for i, (label, model) in enumerate(models.items()):
        report(progress, i / (len(models) + 1), f"running {label}")
        outs[label] = model_outputs(model, x, eval_data).detach().float()
    teacher = outs[labels[0]]
    view.classifier = teacher.dim() == 2 and teacher.shape[-1] > 1  # one score per class and input
    if not view.classifier:
        for label, model in list(models.items())[1:]:
            view.fidelity[label] = fidelity(model, models[labels[0]], x)
    y = eval_data.labels[: view.n] if eval_data.labels is not None and eval_data.labels.dim() == 1 else None
    if view.classifier:
        top_t = teacher.argmax(-1)
        for label, out in outs.items():
            view.agreement[label] = float((out.argmax(-1) == top_t).float().mean())
            if y is not None:
                view.accuracy[label] = float((out.argmax(-1) == y).float().mean())
    for i in range(min(samples, view.n)):
        view.samples.append(_sample(view, outs, labels, i, y))
    report(progress, 1.0, "outputs compared")
    return view


def _sample(view: OutputsView, outs: dict, labels: list, i: int, y) -> dict:
    """Input ``i``: each model's probabilities at the teacher's top classes and its own top class (a
    classifier), or its first outputs."""
    row = {"index": i, "label": int(y[i]) if view.classifier and y is not None else None, "outputs": {}, "top": {}}
    if not view.classifier:
        for label, out in outs.items():
            row["outputs"][label] = [float(v) for v in out[i].reshape(-1)[:8]]
        return row
    p_teacher = torch.softmax(outs[labels[0]][i], -1)
    classes = torch.topk(p_teacher, min(TOP, p_teacher.numel())).indices
    for label, out in outs.items():
        p = torch.softmax(out[i], -1)
        row["outputs"][label] = [(int(c), float(p[c])) for c in classes]
        row["top"][label] = (int(p.argmax()), float(p.max()))
    return row


__all__ = ["PipelineView", "pipeline_view", "ModelGraph", "GraphNode", "model_graph", "graph_values", "MEASURES",
           "OutputsView", "outputs_view", "PIPELINE"]

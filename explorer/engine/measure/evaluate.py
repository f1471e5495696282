"""One measurement of a plan on a loaded model: size by stage, MACs, accuracy (or output fidelity).

This is what ``compression-explorer evaluate`` prints and what the window previews; both show these
numbers as measured here, never recomputed elsewhere.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from explorer.engine.compress import compress
from explorer.engine.errors import ExplorerError
from explorer.engine.measure.metrics import accuracy, fidelity, model_macs, resident_bytes
from explorer.engine.plan import Plan
from explorer.engine.progress import ProgressFn, scaled
from explorer.engine.storage import fileformat


def preview_plan(loaded, plan: Plan, progress: ProgressFn = None, cache=None):
    """Size by stage (and the file's bytes), MACs and per-layer details of ``plan``, without accuracy.

    Returns ``(summary, compressed)``: the JSON-ready dict :func:`evaluate_plan` builds on, and the
    :class:`~explorer.engine.compress.Compressed` result (whose model an accuracy job can measure).
    """
    result = compress(loaded.model, plan, loaded.example_input, progress=scaled(progress, 0.0, 0.9), cache=cache)
    return summarize(result, loaded), result


def summarize(result, loaded) -> dict:
    """The JSON-ready summary of a :class:`~explorer.engine.compress.Compressed` result, with each layer's
    settings described and the bytes its file would take (``size.file``; None with ``file_error`` when
    no file can be written)."""
    out = result.summary()
    for layer in out["layers"]:
        layer["settings_summary"] = result.layers[layer["name"]].settings.describe()
    try:
        out["size"]["file"] = fileformat.predicted_bytes(result, loaded)
    except ExplorerError as exc:  # e.g. a trusted pickle that cannot be scripted: no file can be written
        out["size"]["file"] = None
        out["file_error"] = str(exc)
    return out


def evaluate_plan(loaded, plan: Plan, progress: ProgressFn = None, limit: Optional[int] = None) -> dict:
    """Compress ``loaded.model`` with ``plan`` and measure it.

    Returns a JSON-ready dict: ``size`` (bytes per stage: dense, pruned, quantized, coded), ``size_bits``,
    ``ratio`` (dense / stage), ``macs`` and ``flops`` (before, after, effective), ``accuracy`` (before,
    after, data) when the eval data has labels, else ``fidelity`` (cosine, rel_error, data) of the
    compressed model against the original, and ``layers`` (per-layer details).
    """
    out, result = preview_plan(loaded, plan, scaled(progress, 0.0, 0.4, "compress (1/2)"))
    q = quality(loaded, result.model, scaled(progress, 0.4, 1.0, "measure (2/2)"), limit=limit)
    out["accuracy"] = q if (q is not None and "before" in q) else None
    out["fidelity"] = q if (q is not None and "cosine" in q) else None
    return out


def quality(loaded, model, progress: ProgressFn = None, limit: Optional[int] = None,
            before: Optional[float] = None, batch_size: int = 256) -> Optional[dict]:
    """Accuracy of ``model`` (and of the original, unless ``before`` is given) on the eval data —
    ``{"before", "after", "data", "samples"}`` — or, for data without labels (or only an example input),
    output fidelity against the original: ``{"cosine", "rel_error", "data", "samples"}``. None if there is
    nothing to measure on."""
    ev = loaded.eval_data
    if ev is not None and len(ev):
        if ev.labels is not None:
            half = 0.0 if before is not None else 0.5  # the dense model's half of the work, when it is measured
            if before is None:
                before = accuracy(loaded.model, ev, scaled(progress, 0.0, 0.5, "dense model"), limit=limit,
                                  batch_size=batch_size)
            after = accuracy(model, ev, scaled(progress, half, 1.0, "compressed model"), limit=limit,
                             batch_size=batch_size)
            n = len(ev) if limit is None else min(limit, len(ev))
            return {"before": before, "after": after, "data": ev.name, "samples": n}
        inputs = ev.inputs if limit is None else ev.inputs[:limit]
        return dict(fidelity(model, loaded.model, inputs, progress, batch_size=batch_size), data=ev.name,
                    samples=int(inputs.shape[0]))
    if isinstance(loaded.example_input, torch.Tensor):
        x = loaded.example_input
        return dict(fidelity(model, loaded.model, x, progress), data="example input", samples=int(x.shape[0]))
    return None


def evaluate_loaded(loaded, progress: ProgressFn = None, limit: Optional[int] = None) -> dict:
    """Measure a model as it is (e.g. one loaded from a compressed file): its file size if it came from one,
    MACs, and accuracy (or nothing to compare fidelity with)."""
    out: dict = {"file_bytes": os.path.getsize(loaded.source) if loaded.kind == "compressed" else None}
    manifest = loaded.meta.get("manifest") or {}
    if manifest.get("accounting"):
        acc = manifest["accounting"]
        out["dense_bytes"] = (acc["dense_bits"] + 7) // 8
        out["ratio"] = out["dense_bytes"] / out["file_bytes"] if out["file_bytes"] else None
    out["macs"] = model_macs(loaded.model, loaded.example_input) if loaded.example_input is not None else None
    out["resident_bytes"] = resident_bytes(loaded.model)
    ev = loaded.eval_data
    out["accuracy"] = None
    if ev is not None and ev.labels is not None and len(ev):
        n = len(ev) if limit is None else min(limit, len(ev))
        out["accuracy"] = {"value": accuracy(loaded.model, ev, progress, limit=limit), "data": ev.name, "samples": n}
    return out

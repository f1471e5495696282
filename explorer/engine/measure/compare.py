"""Measured plans side by side: the Pareto front of (file bytes, accuracy) points and a layer's settings in
short, as the window's Compare tab draws them. Pure functions of what was measured; nothing is measured here.
"""

from __future__ import annotations

from typing import Callable, Sequence

from explorer.engine.methods.granularities import SALIENCY
from explorer.engine.methods.quantize import QUANTIZERS
from explorer.engine.plan import LayerSettings

NONE = "–"


def _first(p):
    return p[0]


def _second(p):
    return p[1]


def pareto_front(points: Sequence, size: Callable = _first, quality: Callable = _second) -> list:
    """The points no other one beats: none is at most as large and at least as accurate, one of the two
    strictly. Smallest first, so accuracy rises along the front; of equal points, the first is kept.

    ``size(p)`` and ``quality(p)`` read a point (default: ``p[0]`` and ``p[1]``, e.g. ``(bytes, accuracy)``).
    """
    order = sorted(range(len(points)), key=lambda i: (size(points[i]), -quality(points[i]), i))
    front, best = [], float("-inf")
    for i in order:  # by size: a point is on the front when it beats every point at most as large
        q = quality(points[i])
        if q > best:
            front.append(points[i])
            best = q
    return front


def staircase(front: Sequence, size: Callable = _first, quality: Callable = _second) -> tuple:
    """The front (smallest first) as a step line ``(xs, ys)``: the best accuracy within a size holds from one
    point of the front to the next, where it steps up."""
    xs, ys = [], []
    for i, p in enumerate(front):
        if i:
            xs.append(size(p))
            ys.append(quality(front[i - 1]))
        xs.append(size(p))
        ys.append(quality(p))
    return xs, ys


def settings_cells(settings: LayerSettings) -> tuple:
    """A layer's (pruning, quantization, low rank) in short, e.g. ``('95%', '5b kmeans/linear', '–')`` or
    ``('4 filters', '–', 'tucker2 50% of weights')`` (an int amount is a count); ``'–'`` where a section is off."""
    p, q, r = settings.prune, settings.quantize, settings.lowrank
    prune = NONE
    if p is not None and p.amount:
        element = p.granularity == "element"
        prune = f"{p.amount:.0%}" if isinstance(p.amount, float) else f"{p.amount}" + (" removed" if element else "")
        if not element:
            prune += f" {p.granularity}s"
        if p.criterion in SALIENCY:
            prune += f" by {p.criterion}"
    quant = QUANTIZERS[q.method].describe(q) if q is not None else NONE
    rank = r.describe() if r is not None else NONE
    return prune, quant, rank

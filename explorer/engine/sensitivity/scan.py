"""Per-layer sensitivity: how a layer's accuracy (or agreement with the uncompressed model, for data without
labels) falls as that layer alone is pruned, quantized to fewer bits or factorized, every other layer left as
it is, with the bytes the file would hold at each point.

Sizes come from the window's previewer (its exact sweep of sizes); accuracy is measured on a fixed subset of
the evaluation data (``limit`` samples, the first ones). Each measured point is cached under (the model's
weights, the data, the layer, its settings): a second scan, or the window, finds it again. A point is put in
the cache only once measured whole, so a cancelled scan leaves no partial entry.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import weakref
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch

from explorer.engine.cache import Recent
from explorer.engine.errors import Cancelled, ExplorerError, PlanError
from explorer.engine.executor import InProcess, Workload
from explorer.engine.measure.metrics import accuracy
from explorer.engine.measure.preview import Previewer
from explorer.engine.plan import LayerSettings, Plan
from explorer.engine.progress import ProgressFn, report
from explorer.engine.sensitivity.grid import BITS, DEFAULT_LIMIT, KINDS, RANKS, SPARSITIES  # noqa: F401 (re-exported)

_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (stamp, hash): gone with it
CACHE = Recent(limit_bytes=8 << 20)  # (weights, data, layer, settings) -> (metric, layer bytes, file bytes)


@dataclass
class Point:
    layer: str
    kind: str  # "sparsity", "bits" or "rank"
    value: float  # the sparsity, the bits or the fraction of parameters kept
    settings: dict  # the layer's settings at this point (the base plan's, with the scanned section changed)
    metric: Optional[float]  # accuracy (or agreement) on the subset; None where the point is not possible
    layer_bytes: Optional[int]  # the layer's weights as coded (bytes)
    file_bytes: Optional[int]  # the whole file, every other layer as the base plan has it
    note: str = ""  # why a point could not be taken (e.g. a rank whose factors outgrow the layer)

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint_model(model) -> str:
    """A hash of the model's weights, computed again only when a tensor was replaced or changed in place
    (its storage or its version counter moved): the window's scans ask for it once per layer and kind."""
    state = model.state_dict()
    stamp = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    known = _FINGERPRINTS.get(model)
    if known is not None and known[0] == stamp:
        return known[1]
    h = hashlib.blake2b(digest_size=16)
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    _FINGERPRINTS[model] = (stamp, h.hexdigest())
    return _FINGERPRINTS[model][1]


def _fingerprint_data(data) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(data.inputs.contiguous().numpy().tobytes())
    if data.labels is not None:
        h.update(data.labels.numpy().tobytes())
    return h.hexdigest()


def _patch(kind: str, value, base: LayerSettings) -> dict:
    """The edit of one point: the scanned section only (the layer's other sections stay as the base plan has
    them, so a sparsity point of a quantized layer is quantized as the plan says, and the point of the plan's
    own setting is the plan)."""
    if kind == "sparsity":
        p = base.prune
        gran = p.granularity if p is not None else "element"
        return {"prune": {"amount": float(value), "granularity": gran} if value else None}
    if kind == "bits":
        q = base.quantize
        method = q.method if q is not None else "kmeans"
        return {"quantize": {"bits": int(value), "method": method}}
    return {"lowrank": None if value >= 1.0 else {"rank": float(value)}}


def _agreement(model, reference, inputs) -> float:
    with torch.no_grad():
        return float((model(inputs).argmax(1) == reference(inputs).argmax(1)).float().mean())


def sensitivity(loaded, base: Optional[Plan] = None, layers: Optional[str] = None, kinds=KINDS,
                limit: int = DEFAULT_LIMIT, progress: ProgressFn = None, previewer: Optional[Previewer] = None,
                sparsities=SPARSITIES, bits=BITS, ranks=RANKS, executor=None) -> list:
    """Scan every layer matching the glob ``layers`` (all by default) over ``kinds``; a list of :class:`Point`.

    ``base``: the plan the other layers keep and whose settings of the scanned layer give its granularity and
    quantization method (default: nothing compressed). ``executor``: where the points not in the cache are
    measured (:mod:`explorer.engine.executor`; in this process by default). Raises :class:`Cancelled` when
    ``progress`` says stop; the points measured whole until then stay cached.
    """
    data = loaded.eval_data
    if data is None or not len(data):
        raise ExplorerError("a sensitivity scan needs evaluation data (give --data)")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise PlanError(f"unknown sensitivity kind '{unknown[0]}' (known: {', '.join(KINDS)})")
    base = base or Plan()
    pv = previewer or Previewer(loaded)
    names = [n for n in pv.names if layers is None or fnmatch.fnmatchcase(n, layers)]
    if not names:
        raise PlanError(f"no layer matches {layers!r} (layers: {', '.join(pv.names)})")
    grid = {"sparsity": sparsities, "bits": bits, "rank": ranks}
    jobs = []  # (layer, kind, value, the edit of the layer there)
    for name in names:
        for kind in kinds:
            jobs += [(name, kind, v, _patch(kind, v, base.settings_for(name))) for v in grid[kind]]
    hits = measure_edits(loaded, [(n, st) for n, _, _, st in jobs], base, limit, progress, pv, executor)
    report(progress, 1.0, "done")
    return [Point(n, k, float(v), _settings_at(base, n, st), *hit) for (n, k, v, st), hit in zip(jobs, hits)]


def describe_edit(edit: tuple) -> str:
    """``(layer, edit)`` as progress says it, e.g. ``fc1: prune 50%``."""
    name, patch = edit
    parts = []
    for section, v in patch.items():
        if v is None:
            parts.append(f"no {section}")
        elif section == "prune":
            parts.append(f"prune {v['amount']:.0%}")
        elif section == "quantize":
            parts.append(f"{v['bits']} bits")
        else:
            parts.append(f"rank {v['rank']}")
    return f"{name}: {', '.join(parts)}"


def measure_edits(loaded, edits: list, base: Optional[Plan] = None, limit: int = DEFAULT_LIMIT,
                  progress: ProgressFn = None, previewer: Optional[Previewer] = None, executor=None) -> list:
    """Each ``(layer, edit)`` measured alone (the other layers as ``base`` has them): ``(metric, layer bytes,
    file bytes, note)`` each, from the cache where it was measured before; the others run by ``executor``
    and cached once measured whole."""
    data = loaded.eval_data
    if data is None or not len(data):
        raise ExplorerError("a sensitivity scan needs evaluation data (give --data)")
    base = base or Plan()
    pv = previewer or Previewer(loaded)
    subset = data if limit is None or limit >= len(data) else data.subset(int(limit))
    key0 = (fingerprint_model(loaded.model), _fingerprint_data(subset), base.to_json())
    keys = [key0 + (n, json.dumps(st, sort_keys=True)) for n, st in edits]  # the others as the base has them
    hits = [CACHE.get(k) for k in keys]
    todo = [i for i, h in enumerate(hits) if h is None]
    work = Workload(setup=scan_setup, task=scan_point, state=ScanState(pv, loaded.model, subset, base),
                    payload=ScanPayload(shippable(loaded), subset, base), label=describe_edit,
                    key="scan:" + json.dumps(key0))
    if todo:
        for i, hit in (executor or InProcess()).map(work, [edits[i] for i in todo], progress):
            hits[todo[i]] = hit
            CACHE.put(keys[todo[i]], hit)  # whole points only: a cancelled scan keeps what it finished
    return hits


def _settings_at(base: Plan, name: str, patch: dict) -> dict:
    """The layer's whole settings at a point (the base's, with the point's edit)."""
    try:
        return base.merged([name], patch).settings_for(name).to_dict()
    except ExplorerError:  # a setting the layer cannot take (its point says why): the edit alone
        return patch


@dataclass
class ScanPayload:
    """What a worker needs for a scan: the model (without its data), the subset and the base plan."""

    loaded: object
    subset: object
    base: Plan


@dataclass
class ScanState:
    previewer: Previewer
    reference: object  # the uncompressed model, for agreement on data without labels
    subset: object
    base: Plan


def shippable(loaded):
    """``loaded`` without its evaluation data (a worker gets only the subset it measures on)."""
    return replace(loaded, eval_data=None)


def scan_setup(payload: ScanPayload) -> ScanState:
    return ScanState(Previewer(payload.loaded), payload.loaded.model, payload.subset, payload.base)


def scan_point(state: ScanState, job: tuple) -> tuple:
    """One point, ``job`` = (layer, edit): (metric, layer bytes, file bytes, note); a setting the layer cannot
    take gives the reason."""
    name, settings = job
    try:
        return _measure(state.previewer, state.reference, state.base.merged([name], settings), name, state.subset)
    except Cancelled:  # (an ExplorerError too): nothing of this point is kept
        raise
    except ExplorerError as exc:  # a point this layer cannot take: kept, with the reason
        return None, None, None, str(exc)


def _measure(pv: Previewer, reference, plan: Plan, name: str, subset) -> tuple:
    summary = pv.measure(plan)
    layer = next(l for l in summary["layers"] if l["name"] == name)
    model = pv.build(plan, count=False).model
    if subset.labels is not None:
        metric = accuracy(model, subset)
    else:
        metric = _agreement(model, reference, subset.inputs)
    return metric, (layer["bits"]["coded"] + 7) // 8, summary["size"]["file"], ""

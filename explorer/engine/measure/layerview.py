"""What the window draws for one layer, computed by the engine: the weight histogram split into kept and
pruned weights, the pruning threshold, the quantization levels, and the comparison of k-means
initialisations (Deep Compression's Figure 4). Cheap enough to recompute on every slider release. Not so
the accuracy of the model with a layer quantized by each init (:func:`init_accuracies`, Deep Compression's
Figure 8): a run over the eval data per init, in the background.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from explorer.engine.methods.channels import ChannelRanking, channel_ranking
from explorer.engine.methods.prune import magnitude_mask, threshold_for
from explorer.engine.methods.saliency import SALIENCY, element_mask
from explorer.engine.errors import ExplorerError
from explorer.engine.compress import compress_weight
from explorer.engine.layers import weight_key
from explorer.engine.measure.metrics import LAYER_TYPES, accuracy, compressible_layers
from explorer.engine.methods.lowrank import factorize, resolve_method
from explorer.engine.methods.quantize import TOP_FRACTION, compare_inits, quantize_kmeans, quantize_tensor
from explorer.engine.plan import LayerSettings
from explorer.engine.progress import ProgressFn, report, scaled


@dataclass
class LayerPreview:
    name: str
    numel: int
    edges: np.ndarray  # histogram bin edges (bins + 1)
    kept: np.ndarray  # counts of surviving weights per bin
    pruned: np.ndarray  # counts of pruned weights per bin
    threshold: Optional[float]  # magnitude below which weights are pruned (element pruning), else None
    levels: Optional[np.ndarray]  # the distinct values the quantized weights take (incl. 0 when pruned)
    quant_mse: Optional[float] = None
    info: dict = field(default_factory=dict)
    # a large layer is drawn from a sample: kept and pruned count every ``stride``-th weight only (see
    # display_stride); ``n_pruned`` is the whole layer's pruned count (None: pruned.sum(), nothing sampled)
    stride: int = 1
    n_pruned: Optional[int] = None
    # filter or channel pruning: the channels' norms and which go (drawn instead of the ±t lines)
    ranking: Optional[ChannelRanking] = None
    ranking_error: Optional[str] = None  # why a structured layer has no ranking (its channels cannot go)

    @property
    def pruned_count(self) -> int:
        """Pruned weights of the whole layer (the histogram may count a sample)."""
        return int(self.pruned.sum()) if self.n_pruned is None else self.n_pruned


# a layer with more weights is drawn (histogram, centroid comparison) from every ``display_stride``-th
# weight, labelled so in the window: counting all of 100 M weights is a pass of ~0.3 s per release
DISPLAY_MAX = 1 << 22


def display_stride(n: int) -> int:
    """1, or the step of the sample a layer of ``n`` weights is drawn from (at most DISPLAY_MAX of them)."""
    return max(1, -(-n // DISPLAY_MAX))


def _weight(module_or_tensor) -> torch.Tensor:
    w = getattr(module_or_tensor, "weight", module_or_tensor)
    return w.detach()


def layer_preview(name: str, module_or_tensor, settings: LayerSettings, bins: int = 120,
                  progress: ProgressFn = None, channels: Optional[int] = None) -> LayerPreview:
    """Histogram, threshold and quantization levels of one layer's weights under ``settings``.

    The histogram shows element pruning and quantization; filter/channel pruning is described by the
    channels' ranking (:func:`explorer.engine.methods.channels.channel_ranking`, ``channels`` as there), its
    effect on the other layers is in the whole-model preview. A factorised layer is drawn as its factors'
    weights (:func:`factor_preview`).
    """
    if settings.lowrank is not None and isinstance(module_or_tensor, nn.Module):
        return factor_preview(name, module_or_tensor, settings, bins, progress)
    w = _weight(module_or_tensor)
    flat = w.reshape(-1).to(torch.float64).cpu().numpy()
    report(progress, 0.0, f"{name}: histogram")
    lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    p = settings.prune
    mask = None
    threshold = None
    if p is not None and p.granularity == "element" and p.amount:
        mask = element_mask(w, p.amount, p.criterion, name)
        # by saliency there is no magnitude below which weights go
        threshold = None if p.criterion in SALIENCY else threshold_for(w, p.amount)
    if mask is None:
        kept, _ = np.histogram(flat, edges)
        pruned = np.zeros_like(kept)
    else:
        kept, _ = np.histogram(flat[mask], edges)
        pruned, _ = np.histogram(flat[~mask], edges)
    levels = None
    mse = None
    info = {}
    report(progress, 0.4, f"{name}: quantizing")
    if settings.quantize is not None:
        q = quantize_tensor(w, settings.quantize, mask)
        levels = np.unique(q.decoded.reshape(-1).to(torch.float64).cpu().numpy())
        if levels.size > 4096:  # e.g. per-channel uniform: too many to draw as lines
            levels = None
        mse = q.mse
        info = {"method": q.method, "bits": q.bits, "rel_error": q.rel_error}
    ranking = None
    if p is not None and p.granularity != "element" and p.amount:
        ranking = channel_ranking(w, p.granularity, p.amount, p.criterion, channels, name)
    report(progress, 1.0, f"{name}: done")
    if mask is not None and p.criterion in SALIENCY:
        info["criterion"] = p.criterion
    return LayerPreview(name, int(flat.size), edges, kept.astype(np.int64), pruned.astype(np.int64), threshold,
                        levels, mse, info, ranking=ranking)


def factor_preview(name: str, module: nn.Module, settings: LayerSettings, bins: int = 120,
                   progress: ProgressFn = None) -> LayerPreview:
    """The histogram of what the file stores for a factorised layer: the weights of its factors (SVD's two
    matrices, a tensor train's cores, the circulant blocks' vectors, ...), each pruned and quantized on its own as
    :func:`~explorer.engine.compress.compress_weight` does in the file. There is no single threshold (each factor
    has its own: ``threshold`` None); ``levels`` are the values of every factor's codebook in use.
    ``info["factors"]``: ``(tensor name, shape)`` of each factor; ``info["layer_weights"]``: the layer's own."""
    lr = settings.lowrank
    method = resolve_method(module, lr.method)
    report(progress, 0.0, f"{name}: factorising ({method})")
    seq, finfo = factorize(module, method, lr.rank, name=name, grow=False)  # what the file takes, or why not
    factors = [(f"{name}.{sub}", m) for sub, m in seq.named_modules() if sub and isinstance(m, LAYER_TYPES)]
    only = LayerSettings(prune=settings.prune if settings.prune is not None and settings.prune.granularity == "element"
                         else None, quantize=settings.quantize)
    values, kept_flags, decoded, sq_err = [], [], [], 0.0
    for i, (tname, m) in enumerate(factors):
        report(progress, 0.2 + 0.7 * i / len(factors), f"{name}: {tname}")
        result, new = compress_weight(weight_key(tname, m), m.weight, only)
        flat = m.weight.detach().reshape(-1).to(torch.float64).cpu().numpy()
        values.append(flat)
        kept_flags.append(np.ones(flat.size, bool) if result.mask is None else np.asarray(result.mask).reshape(-1))
        if result.quant is not None:
            q = result.quant
            decoded.append(np.unique(q.decoded.reshape(-1).to(torch.float64).cpu().numpy()))
            sq_err += q.mse * flat.size
    flat, keep = np.concatenate(values), np.concatenate(kept_flags)
    lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    kept, _ = np.histogram(flat[keep], edges)
    pruned, _ = np.histogram(flat[~keep], edges)
    levels = np.unique(np.concatenate(decoded)) if decoded else None
    if levels is not None and levels.size > 4096:
        levels = None
    info = {"lowrank": method, "ranks": finfo["ranks"], "factors": [(t, tuple(m.weight.shape)) for t, m in factors],
            "layer_weights": int(module.weight.numel()), "lowrank_error": finfo["rel_error"]}
    if settings.quantize is not None:
        info.update(method=settings.quantize.method, bits=settings.quantize.bits)
    report(progress, 1.0, f"{name}: done")
    return LayerPreview(name, int(flat.size), edges, kept.astype(np.int64), pruned.astype(np.int64), None, levels,
                        sq_err / flat.size if decoded else None, info)


@dataclass
class InitComparison:
    name: str
    bits: int
    values: np.ndarray  # the surviving weights, sorted (for the CDF)
    results: dict  # init -> {"initial", "final", "mse_initial", "mse_final", "iterations", "top_error"}
    stride: int = 1  # computed on every stride-th weight of a large layer (display_stride)
    top_fraction: float = TOP_FRACTION  # of the surviving weights, the largest, that "top_error" is over

    @property
    def top_count(self) -> int:
        """How many of the largest surviving weights ``top_error`` is over."""
        return max(1, int(round(self.top_fraction * self.values.size))) if self.values.size else 0

    def lowest_mse(self) -> Optional[str]:
        """The init with the lowest mean squared error after k-means (None: nothing compared)."""
        return min(self.results, key=lambda i: self.results[i]["mse_final"]) if self.results else None

    def best_top(self) -> Optional[str]:
        """The init that keeps the largest weights best: the lowest largest error over the top
        ``top_fraction`` of them by magnitude (``compare_inits``' ``top_error``)."""
        return min(self.results, key=lambda i: self.results[i]["top_error"]) if self.results else None


@dataclass
class InitAccuracies:
    """Accuracy of the model with one layer quantized by each k-means init (the others dense)."""
    name: str
    bits: int
    accuracies: dict  # init -> top-1 accuracy in [0, 1]
    before: float  # the dense model's
    data: str  # the eval data's name
    samples: int


def init_comparison(name: str, module_or_tensor, settings: LayerSettings, bits: Optional[int] = None,
                    max_iter: int = 50, progress: ProgressFn = None,
                    inits=("forgy", "density", "linear")) -> InitComparison:
    """The k-means initialisations of one layer at ``bits`` (default: the layer's quantization bits, else 5),
    before and after k-means, with their errors; pruned weights are excluded as in compression. A layer of
    more than :data:`DISPLAY_MAX` weights is compared on every ``stride``-th of them (pruned as the sample:
    an illustration of the inits, not the layer's own codebook)."""
    w = _weight(module_or_tensor)
    n, stride = w.numel(), display_stride(w.numel())
    p = settings.prune
    amount = p.amount if p is not None else None
    if p is not None and p.granularity == "element" and amount and p.criterion in SALIENCY:
        mask = element_mask(w, amount, p.criterion, name)[::stride]  # the layer's own ranking, sampled
        w = w.reshape(-1)[::stride].contiguous() if stride > 1 else w
    else:
        if stride > 1:
            w = w.reshape(-1)[::stride].contiguous()
        if stride > 1 and isinstance(amount, int):  # a count of the whole layer: the same fraction of the sample
            amount = amount / n
        mask = magnitude_mask(w, amount) if (p is not None and p.granularity == "element" and amount) else None
    if bits is None:
        bits = settings.quantize.bits if settings.quantize is not None else 5
    report(progress, 0.1, f"{name}: comparing initialisations")
    results = compare_inits(w, mask, bits=bits, max_iter=max_iter, inits=inits)
    flat = w.reshape(-1).to(torch.float64).cpu().numpy()
    values = np.sort(flat if mask is None else flat[mask])
    report(progress, 1.0, f"{name}: done")
    return InitComparison(name, bits, values, results, stride)


def _copy_but(model: nn.Module, weight: torch.Tensor, key: str):
    """A copy of ``model`` sharing every parameter but ``weight`` (a layer's, under ``key``), which it holds
    as its own copy, to be overwritten: (copy, that parameter). The original is never changed (other work
    may be running it), and a large model costs one layer's weight rather than a copy of all of them."""
    if isinstance(model, torch.jit.ScriptModule):  # deepcopy of a scripted module takes no memo
        copied = copy.deepcopy(model)
        return copied, dict(copied.named_parameters(remove_duplicate=False))[key]
    own = nn.Parameter(weight.detach().clone(), requires_grad=False)
    memo = {id(p): p for p in model.parameters()}
    memo[id(weight)] = own
    return copy.deepcopy(model, memo), own


def init_accuracies(loaded, name: str, settings: LayerSettings, bits: Optional[int] = None, max_iter: int = 50,
                    progress: ProgressFn = None, inits=("forgy", "density", "linear"), before: Optional[float] = None,
                    limit: Optional[int] = None, batch_size: int = 256, seed: int = 0) -> InitAccuracies:
    """Top-1 accuracy on ``loaded.eval_data`` of ``loaded.model`` with layer ``name`` quantized by each
    k-means init, as :func:`init_comparison` compares them (the same bits, ``max_iter`` and seed; pruned
    weights excluded and zero, element pruning as in ``settings``), every other layer dense. The whole
    layer is quantized, even where the comparison draws a sample of it. ``before``: the dense model's
    accuracy, if known (else measured too). Deep Compression's Figure 8 compares the inits so.

    The model is copied once, sharing all but this layer's weight (:func:`_copy_but`); ``progress``
    is reported before each init and within each evaluation, and may cancel (:mod:`explorer.engine.progress`).
    """
    ev = loaded.eval_data
    if ev is None or not len(ev) or ev.labels is None:
        raise ExplorerError("init accuracies need eval data with labels")
    layers = dict(compressible_layers(loaded.model))
    if name not in layers:
        raise ExplorerError(f"no layer {name!r}")
    w = _weight(layers[name])
    if bits is None:
        bits = settings.quantize.bits if settings.quantize is not None else 5
    p = settings.prune
    mask = element_mask(w, p.amount, p.criterion, name) if (p is not None and p.granularity == "element"
                                                             and p.amount) else None
    steps = len(inits) + (before is None)
    if before is None:
        before = accuracy(loaded.model, ev, scaled(progress, 0.0, 1 / steps, "dense model"), batch_size, limit)
    report(progress, (steps - len(inits)) / steps, f"{name}: copying the model")
    model, target = _copy_but(loaded.model, layers[name].weight, weight_key(name, layers[name]))
    out = {}
    for i, init in enumerate(inits):
        start = (i + steps - len(inits)) / steps
        report(progress, start, f"{name}: quantizing ({init})")
        q = quantize_kmeans(w, mask, bits, init, max_iter, seed)
        with torch.no_grad():
            target.copy_(q.decoded)
        out[init] = accuracy(model, ev, scaled(progress, start, start + 1 / steps, init), batch_size, limit)
    report(progress, 1.0, f"{name}: done")
    n = len(ev) if limit is None else min(limit, len(ev))
    return InitAccuracies(name, bits, out, before, ev.name, n)

"""Incremental measurement of plans on one model: what the window shows after every slider release.

A :class:`Previewer` belongs to one loaded model. It keeps what does not depend on the plan (the
model's MACs, each layer's histogram bins) and, per weight tensor and settings, the result of pruning
and quantizing it, so a new plan costs only the tensors whose settings changed:

- :meth:`Previewer.measure` returns the same summary as :func:`explorer.engine.measure.evaluate.preview_plan`
  (size by stage, the file's bytes, MACs, per-layer details; a test checks they are equal). When no
  layer is structurally pruned or factorised, the model's shapes do not change, so nothing is copied or
  traced: the sizes are summed from the per-tensor results and the MACs follow from the dense counts
  and each layer's non-zero weights. A changed tensor is measured by its
  :class:`~explorer.engine.measure.sweep.TensorSweep` where that covers the settings (element pruning, k-means):
  the same sizes without building the pruned and quantized tensor. Otherwise it runs
  :func:`~explorer.engine.compress.compress`.
- :meth:`Previewer.build` returns the runnable compressed model (for accuracy and export), reusing the
  same per-tensor results.
- :meth:`Previewer.layer` returns a layer's histogram view from the same results.

Methods may be called from several threads at once; none of them modifies the loaded model.
"""

from __future__ import annotations

import json
import marshal
import math
import threading
from dataclasses import replace
from typing import Optional

import numpy as np
import torch
from numba import njit
from torch import nn

from explorer.engine.cache import TENSOR_CACHE_BYTES, Recent, TensorCache
from explorer.engine.compress import (FP32_BITS, Compressed, LayerResult, TensorResult, check_layer_amount,
                                      check_settings, compress, compress_weight_cached, set_layer_macs)
from explorer.engine.errors import ExplorerError
from explorer.engine.inspect import stored_numel, weight_owners
from explorer.engine.layers import weight_key
from explorer.engine.measure.evaluate import summarize
from explorer.engine.measure.layerview import (DISPLAY_MAX, LayerPreview, display_stride, factor_preview,
                                               init_comparison)
from explorer.engine.measure.metrics import compressible_layers, count_macs, layer_type
from explorer.engine.measure.sweep import TensorSweep
from explorer.engine.methods.channels import layer_ranking
from explorer.engine.methods.prune import keep_count
from explorer.engine.methods.saliency import SALIENCY
from explorer.engine.model.loading import LoadedModel
from explorer.engine.plan import LayerSettings, Plan, PruneSettings, validate_settings
from explorer.engine.progress import ProgressFn, report, scaled

HIST_BINS = 120
PREPARED_AMOUNTS = tuple(p / 100.0 for p in range(1, 100))  # what the window's sparsity slider gives
SWEEP_MAX_NUMEL = 1 << 28  # larger tensors are measured by compress_weight (the state: 4 bytes/weight + 4 per bucket count)
# What a Previewer keeps, each a byte budget (a Recent: the least recently used entries go first; the one
# put last is always kept, however large):
# - sweep state (sorted magnitudes, 4 bytes per weight, and k-means bucket groups, 4 bytes per weight each,
#   up to sweep.GROUP_BYTES per layer): two layers' of ResNet-18's largest (2.4 M weights: ~105 MB each),
#   the one being tuned and the one before; more of smaller layers. (VGG-16's classifier.0, 102.8 M weights,
#   holds 822 MB: kept alone, as the entry put last always is)
SWEEP_BYTES = 256 << 20
# - sizes-only results of the sweeps (~9 KB each): the 99 slider amounts of a dozen layers and settings
MEASURED_BYTES = 12 << 20
# - whole-plan summaries, kept marshalled (~5 KB each on digits-cnn, ~22 KB on ResNet-18)
SUMMARY_BYTES = 2 << 20
# - histogram bins of the layers looked at (a byte per weight drawn: at most layerview.DISPLAY_MAX per layer):
#   every layer of ResNet-18 (11.7 MB)
BINS_BYTES = 64 << 20
# - full per-tensor results (TensorCache: mask, codes and decoded weight, ~13 bytes per weight when
#   quantized): TENSOR_PLANS whole plans' worth of the model, at least cache.TENSOR_CACHE_BYTES and
#   at most TENSOR_MAX_BYTES
TENSOR_PLANS = 3
TENSOR_BYTES_PER_WEIGHT = 13
TENSOR_MAX_BYTES = 1 << 30


def plan_key(plan: Plan) -> str:
    """The plan as the file stores it, keys sorted: plans that differ only in key order are the same."""
    return json.dumps(plan.to_dict(), sort_keys=True)


class Previewer:
    """Measures plans on ``loaded`` (a :class:`~explorer.engine.model.loading.LoadedModel`)."""

    def __init__(self, loaded, cache: Optional[TensorCache] = None):
        self.loaded = loaded
        model = loaded.model
        self.layers = compressible_layers(model)
        self.names = [n for n, _ in self.layers]
        self.modules = dict(self.layers)
        self.owners = weight_owners(model)
        self.cache = cache if cache is not None else TensorCache(limit_bytes=tensor_cache_bytes(self.layers))
        self._lock = threading.Lock()
        self._macs: Optional[tuple] = None
        self._other: Optional[int] = None
        self._last: Optional[tuple] = None  # (plan JSON, Compressed, MACs counted) of the last build
        self._bins = Recent(limit_bytes=BINS_BYTES)  # layer -> (edges, bin of every weight)
        self._sweeps = Recent(limit_bytes=SWEEP_BYTES, cost=_sweep_cost)  # layer -> (weight identity, TensorSweep)
        self._measured = Recent(limit_bytes=MEASURED_BYTES)  # TensorCache key -> sizes-only TensorResult
        # (plan key, weight versions) -> measure()'s summary, marshalled (see _pack)
        self._summaries = Recent(limit_bytes=SUMMARY_BYTES)

    # ------------------------------------------------------------------------------ plan-independent
    def macs_before(self) -> tuple:
        """``count_macs`` of the original model (per layer, total), measured once."""
        if self.loaded.example_input is None:
            return {}, None
        with self._lock:
            if self._macs is None:
                self._macs = count_macs(self.loaded.model, self.loaded.example_input)
            return self._macs

    def _other_bits(self) -> int:
        """Bits of everything but the layers' weights (biases, norms, buffers) in fp32; no plan without
        shape changes touches them."""
        if self._other is None:
            weights = sum(m.weight.numel() for n, m in self.layers if self.owners[n] == n)
            self._other = FP32_BITS * (stored_numel(self.loaded.model) - weights)
        return self._other

    # ------------------------------------------------------------------------------ per tensor
    def tensor(self, name: str, settings: LayerSettings):
        """``(TensorResult, new weight or None)`` of layer ``name``'s own weight under ``settings``
        (element pruning and quantization only), from the cache when it was computed before."""
        weight = self.modules[name].weight
        return compress_weight_cached(self.cache, weight, name, self.modules[name], weight, settings)

    def sweep(self, name: str) -> Optional[TensorSweep]:
        """The :class:`~explorer.engine.measure.sweep.TensorSweep` of layer ``name``'s weight (None for tensors too
        large to keep its state for). The most recently used layers' are kept, up to :data:`SWEEP_BYTES`."""
        weight = self.modules[name].weight
        key = (name, id(weight), weight._version)
        hit = self._sweeps.get(name)
        if hit is not None and hit[0] == key:
            self._sweeps.refresh(name)  # its state fills in as it is used: what it holds now
            return hit[1]
        if weight.numel() > SWEEP_MAX_NUMEL:
            return None
        sweep = TensorSweep(weight)
        self._sweeps.put(name, (key, sweep))
        return sweep

    def sorted_magnitudes(self, name: str) -> np.ndarray:
        """|w| of layer ``name``'s weights, ascending (what turns a dragged threshold into a sparsity, in
        whole percent), in the weights' dtype; for a layer above the histogram's sample size, those of the
        sample it is drawn from (every ``display_stride``-th weight: 4 M values, whose percentiles are the
        layer's to within 0.05 points), not a sorted copy of 100 M weights. The pruning itself never reads
        these: its thresholds are the sweep's or the pruner's, exact."""
        values = self._values(name)
        if display_stride(values.size) > 1:
            values = self._layer_bins(name)[2]
        return np.sort(np.abs(values))

    def prepare(self, name: str, settings: LayerSettings, progress: ProgressFn = None,
                amounts=PREPARED_AMOUNTS) -> None:
        """Measure layer ``name`` ahead of time at the pruning ``amounts`` a slider gives (1..99 %, the
        nearest to its current amount first) with its other settings as they are, so that a release on any
        of them finds its exact result measured. First the sweep state (magnitude counts, k-means buckets).
        Reports progress after each step: the window cancels it when a measurement of its own starts.
        (Measuring the nearest amounts' whole plans ahead too was tried: their summaries are Python work
        that, on a background thread, slowed the window's own releases more than the lookups saved.)"""
        if name not in self.modules or self.owners[name] != name:
            return
        p = settings.prune
        if p is not None and p.granularity != "element":
            return
        sweep = self.sweep(name)
        if sweep is None:
            return
        sweep.prepare(settings, scaled(progress, 0.0, 0.2))
        self._sweeps.refresh(name)
        here = p.amount if p is not None and isinstance(p.amount, float) else 0.0
        at = [replace(settings, prune=replace(p, amount=a) if p is not None else PruneSettings(amount=a))
              for a in amounts]
        first = sweep.grouping(settings) or 1
        # nearest first, those of the current k-means grouping before the others (one grouping at a time)
        todo = sorted(zip(amounts, at), key=lambda t: (abs(math.log2((sweep.grouping(t[1]) or 1) / first)),
                                                       abs(t[0] - here), t[0]))
        for i, (amount, s) in enumerate(todo):
            if sweep.measure_covers(s):
                self._swept(name, s, TensorCache.key(self.modules[name].weight, name, s))
            report(progress, 0.2 + 0.8 * (i + 1) / len(todo), f"{name}: {amount:.0%} measured")
        sweep.trim()  # what the amounts needed beyond the budget (a large layer's buckets): they are measured
        self._sweeps.refresh(name)
        report(progress, 1.0, f"{name}: prepared")

    def _measured_tensor(self, name: str, settings: LayerSettings):
        """The TensorResult the size preview needs: the full one if it was computed, else the sweep's
        sizes-only one, else the full one computed now."""
        weight = self.modules[name].weight
        key = TensorCache.key(weight, name, settings)
        hit = self.cache.get(key)
        if hit is not None:
            return hit[0]
        fast = self._swept(name, settings, key)
        return fast if fast is not None else self.tensor(name, settings)[0]

    def _swept(self, name: str, settings: LayerSettings, key) -> Optional[TensorResult]:
        """The sweep's sizes-only TensorResult of layer ``name`` under ``settings`` (kept), or None where
        the sweep does not cover them."""
        fast = self._measured.get(key)
        if fast is not None:
            return fast
        p = settings.prune
        if p is None or p.granularity != "element" or not p.amount or p.criterion in SALIENCY:
            return None  # not the sweep's case (it ranks by magnitude): making one would push out a large layer's
        sweep = self.sweep(name)
        r = sweep.measure(settings) if sweep is not None else None
        if r is None:
            return None
        weight = self.modules[name].weight
        fast = TensorResult(weight_key(name, self.modules[name]), tuple(weight.shape), None, r.quant, r.sizes,
                            r.nonzero, sizes_only=True)
        self._measured.put(key, fast)
        return fast

    # ------------------------------------------------------------------------------ whole plan
    def measure(self, plan: Plan, progress: ProgressFn = None) -> dict:
        """Size by stage, the file's bytes, MACs and per-layer details of ``plan`` (no accuracy). The most
        recently measured summaries are kept, up to :data:`SUMMARY_BYTES` (a plan measured again, e.g.
        after an undo, is a lookup); read the dict returned, do not change it."""
        # the eval data too: a saliency criterion ranks by it (new data, new masks)
        key = (plan_key(plan), tuple(m.weight._version for _, m in self.layers), id(self.loaded.eval_data))
        hit = self._summaries.get(key)
        if hit is not None:
            return _unpack(hit)
        summary = self._measure(plan, progress)
        self._summaries.put(key, _pack(summary))
        return summary

    def _measure(self, plan: Plan, progress: ProgressFn = None) -> dict:
        settings = plan.resolve(self.names)
        if any(s.changes_shapes for s in settings.values()):
            return summarize(self.build(plan, progress), self.loaded)
        model = self.loaded.model
        check_settings(model, self.layers, settings, self.owners)
        results = {}
        for i, (name, orig) in enumerate(self.layers):
            s = settings[name]
            shared = self.owners[name] != name
            lr = LayerResult(name, layer_type(orig), s, 0 if shared else orig.weight.numel(),
                             shared_with=self.owners[name] if shared else None)
            if not shared:
                report(progress, 0.9 * i / len(self.layers), f"compressing {name}")
                lr.tensors.append(self._measured_tensor(name, s))
            results[name] = lr
        before, total = self.macs_before()
        # no shape changed: each layer runs the MACs it ran before (TorchScript: none measured per layer)
        set_layer_macs(results, before, None if isinstance(model, torch.jit.ScriptModule) else before)
        other = self._other_bits()
        compressed = Compressed(model, plan, results, other_bits_before=other, other_bits_after=other,
                                macs_before=total, macs_after=total)
        report(progress, 0.95, "file size")
        return summarize(compressed, self.loaded)

    def build(self, plan: Plan, progress: ProgressFn = None, count: bool = True) -> Compressed:
        """The compressed model of ``plan`` (runnable; to run or save, never to train or change: it shares
        tensors with the loaded model and the cache), reusing the per-tensor results; ``count=False``
        skips tracing its MACs (for a job that only runs the model). The last result is kept: a plan that
        changes shapes is built once for its sizes and reused for its accuracy and export."""
        key = (plan_key(plan), id(self.loaded.eval_data))  # the data: a saliency criterion ranks by it
        with self._lock:
            last = self._last
        if last is not None and last[0] == key and (last[2] or not count):
            return last[1]
        # the model shares the loaded one's unchanged tensors and the cache's new ones: it is only run and saved
        result = compress(self.loaded.model, plan, self.loaded.example_input, progress=progress, cache=self.cache,
                          macs_before=self.macs_before() if count else None, count=count, share=True)
        with self._lock:
            self._last = (key, result, count)
        return result

    # ------------------------------------------------------------------------------ one layer
    def layer(self, name: str, settings: LayerSettings, progress: ProgressFn = None) -> LayerPreview:
        """The histogram of layer ``name``'s weights split into kept and pruned, the pruning threshold and
        the levels its quantized weights take, from the same result the size preview uses. Equal to
        :func:`explorer.engine.measure.layerview.layer_preview` (tested)."""
        if name not in self.modules:
            raise ExplorerError(f"no layer '{name}'")
        module = self.modules[name]
        if settings.lowrank is not None and isinstance(module, nn.Module):  # the file stores its factors
            return factor_preview(name, module, settings, progress=progress)
        report(progress, 0.0, f"{name}: histogram")
        edges, bins, _ = self._layer_bins(name)
        p = settings.prune
        element = p is not None and p.granularity == "element" and p.amount
        if not element and settings.quantize is None:
            result, new = None, None
        else:
            check_layer_amount(name, module, settings)
            only = LayerSettings(prune=p if element else None, quantize=settings.quantize)
            result, new = self._layer_tensor(name, only)
        values = self._values(name)
        stride = display_stride(values.size)  # > 1: drawn from every stride-th weight
        mask = None if result is None else result.mask
        threshold = n_pruned = None
        if result is not None and result.sizes_only:  # the sweep's: its mask from the sorted magnitudes
            sweep = self.sweep(name)
            mask = sweep.mask(p.amount, stride, self._layer_bins(name)[2].view(np.uint32) if stride > 1 else None)
            if stride > 1:
                k = keep_count(values.size, p.amount)
                n_pruned = values.size - k
                threshold = sweep.threshold(k)[0] if 0 < k < values.size else None
                threshold = 0.0 if threshold is None else float(np.uint32(threshold).view(np.float32))
        elif mask is not None and stride > 1:
            n_pruned = mask.size - int(np.count_nonzero(mask))
            threshold = float(np.abs(values[mask]).min()) if n_pruned and n_pruned < mask.size else 0.0
            mask = mask[::stride]
        report(progress, 0.5, f"{name}: counting")
        sample = values if stride == 1 else self._layer_bins(name)[2]
        kept, pruned, smallest = _split_counts(bins, mask if mask is not None else np.ones(0, bool), sample,
                                               edges.size - 1)
        if mask is not None and stride == 1:  # the smallest kept magnitude; 0 when the amount rounds to pruning nothing
            threshold = float(smallest) if pruned.any() else 0.0
        if p is not None and p.criterion in SALIENCY:
            threshold = None  # by saliency no magnitude divides the kept from the pruned
        levels = mse = None
        info = {}
        if result is not None and result.quant is not None:
            q = result.quant
            if new is None:  # the sweep's codebook holds exactly the values in use, and the pruned zero
                levels = np.unique(q.codebook.astype(np.float64))
            else:
                levels = _levels(q, mask, new.detach().reshape(-1).cpu())
            mse = q.mse
            info = {"method": q.method, "bits": q.bits, "rel_error": q.rel_error}
        ranking = ranking_error = None
        if p is not None and p.granularity != "element" and p.amount and self.loaded.example_input is not None:
            try:  # the channels counted as the pruner counts them (a flatten: one channel, a block of inputs)
                ranking = layer_ranking(self.loaded.model, self.loaded.example_input, name, p.granularity,
                                        p.amount, p.criterion)
            except ExplorerError as e:  # the size preview reports it; the view says why it has no ranking
                ranking_error = str(e)
        report(progress, 1.0, f"{name}: done")
        if p is not None and p.criterion in SALIENCY and mask is not None:
            info["criterion"] = p.criterion
        return LayerPreview(name, int(values.size), edges, kept, pruned, threshold, levels, mse, info, stride,
                            n_pruned, ranking, ranking_error)

    def _layer_tensor(self, name: str, settings: LayerSettings):
        """``(TensorResult, new weight or None)`` for the layer view: the full result if it was computed,
        else the size preview's (sizes only: new is None), else the full one computed now."""
        result = self._measured_tensor(name, settings)
        return (result, None) if result.sizes_only else self.tensor(name, settings)  # the latter: cached

    def _values(self, name: str) -> np.ndarray:
        """The layer's weights, flat: a view of the tensor where numpy can hold its dtype (no copy)."""
        w = self.modules[name].weight.detach().reshape(-1).cpu()
        if w.dtype not in (torch.float32, torch.float64):
            w = w.to(torch.float64)
        return w.numpy()

    def _layer_bins(self, name: str):
        hit = self._bins.get(name)
        if hit is not None:
            return hit
        values = self._values(name)  # float32 or float64: min and max exact without a float64 copy
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        # the weights drawn, kept contiguous: a strided read of a large layer touches all its memory
        sample = values if values.size <= DISPLAY_MAX else np.ascontiguousarray(values[::display_stride(values.size)])
        bins = _bin_of(sample.astype(np.float64), edges)
        self._bins.put(name, (edges, bins, sample if sample is not values else None))
        return edges, bins, sample


def tensor_cache_bytes(layers) -> int:
    """The byte budget of a Previewer's :class:`~explorer.engine.cache.TensorCache` for a model's
    compressible ``layers`` (name, module): :data:`TENSOR_PLANS` whole plans' worth of their full
    per-tensor results (a build for accuracy reuses every unchanged layer's; undo and redo the ones
    before), within [TENSOR_CACHE_BYTES, TENSOR_MAX_BYTES]."""
    weights = sum({id(m.weight): m.weight.numel() for _, m in layers}.values())  # a tied weight once
    return int(min(max(TENSOR_PLANS * TENSOR_BYTES_PER_WEIGHT * weights, TENSOR_CACHE_BYTES), TENSOR_MAX_BYTES))


def _sweep_cost(value) -> int:
    """What a ``_sweeps`` entry ``(weight identity, TensorSweep)`` holds: the sweep's own state."""
    return value[1].held_bytes() + 256


def _pack(summary: dict):
    """A summary as the Previewer keeps it: marshalled (plain data: dicts, lists, strings and numbers), a
    tenth of the memory of the dicts themselves and its cost a length, not a walk over a thousand
    objects on the release's path; as it is if it holds anything else."""
    try:
        return marshal.dumps(summary)
    except ValueError:
        return summary


def _unpack(kept):
    return marshal.loads(kept) if isinstance(kept, bytes) else kept


def _bin_of(flat: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The histogram bin of every value, exactly as ``np.histogram(flat, edges)`` assigns it (bins are
    half-open [a, b), the last one closed)."""
    nb = edges.size - 1
    idx = np.searchsorted(edges, flat, side="right") - 1
    idx[flat == edges[-1]] = nb - 1
    return np.clip(idx, 0, nb - 1).astype(np.uint8 if nb <= 255 else np.int32)


@njit(cache=True, nogil=True)
def _split_counts(bins, mask, flat, nb):
    """Per-bin counts of kept and pruned values (all kept when ``mask`` is empty) and the smallest kept
    magnitude (the pruning threshold). No branch on the mask: after magnitude pruning it is in no order."""
    kept = np.zeros(nb, np.int64)
    pruned = np.zeros(nb, np.int64)
    smallest = np.inf
    if mask.size == 0:
        for i in range(bins.size):
            kept[bins[i]] += 1
        return kept, pruned, smallest
    for i in range(bins.size):
        kk = np.int64(mask[i])
        b = bins[i]
        kept[b] += kk
        pruned[b] += 1 - kk
        a = abs(flat[i]) if kk else np.inf
        smallest = min(smallest, a)
    return kept, pruned, smallest


def _levels(q, mask, decoded: torch.Tensor):
    """The distinct values the quantized weights take, ascending (None beyond 4096: too many to draw).

    Each kept weight's value is a function of its code (and, for per-channel scales, its channel), so the
    first weight seen with each (channel, code) pair gives every level without sorting the tensor; pruned
    weights add 0."""
    n = decoded.numel()
    groups = 1 if q.scales is None else max(int(np.asarray(q.scales).size), 1)
    values = None
    if decoded.dtype == torch.float32 and n % groups == 0 and groups * int(q.alphabet_size) <= 1 << 24:
        values = _first_values(q.codes, decoded.numpy(), mask if mask is not None else np.ones(0, bool),
                               n // groups, groups, int(q.alphabet_size))
    if values is None:  # other dtypes or unexpected codes: the plain way
        values = decoded.to(torch.float64).numpy()
    levels = np.unique(values.astype(np.float64))
    return None if levels.size > 4096 else levels


@njit(cache=True, nogil=True)
def _first_values(codes, decoded, mask, per_group, groups, alphabet):
    # one slot per (group, code), one more for the pruned weights (which decode to 0); the mask is read
    # without a branch (after magnitude pruning it is in no order)
    pruned_slot = groups * alphabet
    seen = np.zeros(pruned_slot + 1, np.bool_)
    out = np.empty(min(pruned_slot + 1, codes.size + 1), np.float32)
    m = 0
    group = 0
    left = per_group  # weights left in the current group
    masked = mask.size > 0
    for i in range(codes.size):
        c = codes[i]
        if c < 0 or c >= alphabet:
            return None
        kk = mask[i] if masked else True
        slot = group * alphabet + c if kk else pruned_slot
        if not seen[slot]:
            seen[slot] = True
            out[m] = decoded[i] if kk else np.float32(0.0)
            m += 1
        left -= 1
        if left == 0:
            group += 1
            left = per_group
    return out[:m]


_warm = threading.Event()


def warm_up() -> None:
    """Run the kernels the window uses once on a small layer, so that numba loads (or compiles) them now
    rather than in the middle of the first slider release: loading holds the GIL for a few hundred ms.
    Does the work once per process."""
    if _warm.is_set():
        return
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    pv = Previewer(LoadedModel(nn.Sequential(layer)))
    for raw in ({"prune": {"amount": 0.5}, "quantize": {"bits": 5}},
                {"quantize": {"bits": 4, "method": "uniform", "per_channel": True, "symmetric": False}},
                {"prune": {"amount": 0.3}, "quantize": {"method": "ternary"}}):
        pv.layer("0", validate_settings("warm-up", raw))
    init_comparison("0", layer, validate_settings("warm-up", {"prune": {"amount": 0.5}}), bits=3)
    # the sweep's kernels (k-means buckets need more than 32,768 survivors)
    sweep = TensorSweep(torch.randn(256, 256))
    for raw in ({"prune": {"amount": 0.3}}, {"prune": {"amount": 0.3}, "quantize": {"bits": 5}},
                {"prune": {"amount": 0.4}, "quantize": {"bits": 4, "init": "density"}}):
        s = validate_settings("warm-up", raw)
        sweep.prepare(s)
        sweep.measure(s)
    _warm.set()

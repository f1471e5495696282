"""Applying a plan to a model.

``compress`` applies a :class:`~explorer.engine.plan.Plan` and returns a
:class:`Compressed`: a new runnable model (the original is untouched) plus, per layer, everything a
compressed file stores (masks, codes, codebooks or scales, low-rank factors, kept channels) and the
size of each storage stage. Order of operations: see :mod:`explorer.engine.plan`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from explorer.engine.cache import TensorCache
from explorer.engine.errors import CompressionError, ExplorerError, PlanError
from explorer.engine.inspect import stored_numel, weight_owners
from explorer.engine.layers import find_layer, layer_of_key, refusal, weight_key
from explorer.engine.measure.metrics import LAYER_TYPES, compressible_layers, count_macs, layer_type, run_model
from explorer.engine.methods import channels as _structure
from explorer.engine.methods import lowrank as _lowrank
from explorer.engine.methods.prune import GRANULARITIES, removed_count
from explorer.engine.methods.saliency import SALIENCY, element_mask
from explorer.engine.methods.saliency import token as saliency_token
from explorer.engine.methods.quantize import QuantResult, quantize_tensor
from explorer.engine.plan import LayerSettings, Plan
from explorer.engine.progress import ProgressFn, report
from explorer.engine.storage.size import TensorSizes, tensor_sizes

STAGES = ("dense", "pruned", "quantized", "coded")
FP32_BITS = 32


# ------------------------------------------------------------------------------------------ compress


@dataclass
class TensorResult:
    name: str  # parameter path in the compressed model, e.g. "fc1.weight" or "fc1.1.weight"
    shape: tuple
    mask: Optional[np.ndarray]  # flat bool, None = nothing element-pruned
    quant: Optional[QuantResult]
    sizes: TensorSizes
    nonzero: int
    sizes_only: bool = False  # measured without mask or codes (explorer.engine.measure.sweep): never written to a file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class LayerResult:
    name: str
    type: str
    settings: LayerSettings
    params_before: int  # weight parameters of the original layer
    tensors: list = field(default_factory=list)
    structural: Optional[dict] = None  # {"granularity", "kept", "removed"}
    lowrank: Optional[dict] = None  # factorize() info
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None
    macs_effective: Optional[int] = None
    shared_with: Optional[str] = None

    @property
    def params_after(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nonzero(self) -> int:
        return sum(t.nonzero for t in self.tensors)

    @property
    def bits(self) -> dict:
        out = {"dense": FP32_BITS * self.params_before}
        for stage in STAGES[1:]:
            out[stage] = sum(t.sizes.bits[stage] for t in self.tensors)
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "settings": self.settings.to_dict(),
                "params_before": self.params_before, "params_after": self.params_after, "nonzero": self.nonzero,
                "structural": None if self.structural is None else
                {k: v for k, v in self.structural.items() if k != "kept"},
                "lowrank": self.lowrank, "shared_with": self.shared_with, "macs": {"before": self.macs_before, "after": self.macs_after,
                                                  "effective": self.macs_effective},
                "bits": self.bits,
                "tensors": [{"name": t.name, "shape": list(t.shape), "nonzero": t.nonzero,
                             "quant": None if t.quant is None else
                             {"method": t.quant.method, "bits": t.quant.bits, "mse": t.quant.mse,
                              "rel_error": t.quant.rel_error},
                             "storage": t.sizes.to_dict()} for t in self.tensors]}


@dataclass
class Compressed:
    model: nn.Module
    plan: Plan
    layers: dict  # name -> LayerResult, in model order
    other_bits_before: int  # biases, norms and other stored values, fp32
    other_bits_after: int
    macs_before: Optional[int] = None  # whole model, FlopCounterMode / 2
    macs_after: Optional[int] = None

    @property
    def bits(self) -> dict:
        layer_bits = [layer.bits for layer in self.layers.values()]
        out = {}
        for stage in STAGES:
            other = self.other_bits_before if stage == "dense" else self.other_bits_after
            out[stage] = other + sum(b[stage] for b in layer_bits)
        return out

    @property
    def bytes(self) -> dict:
        return {stage: (bits + 7) // 8 for stage, bits in self.bits.items()}

    @property
    def macs_effective(self) -> Optional[int]:
        """Whole-model MACs after, less what zero weights save in each layer; None where a layer's MACs
        could not be measured (TorchScript runs no hooks)."""
        if self.macs_after is None or any(l.macs_after is None for l in self.layers.values()):
            return None
        saved = sum(l.macs_after - l.macs_effective for l in self.layers.values())
        return max(self.macs_after - saved, 0)

    def summary(self) -> dict:
        bits = self.bits
        b = {stage: (v + 7) // 8 for stage, v in bits.items()}
        return {"size": b, "size_bits": bits,
                "ratio": {s: (b["dense"] / b[s] if b[s] else None) for s in STAGES},
                "macs": {"before": self.macs_before, "after": self.macs_after, "effective": self.macs_effective},
                "flops": {k: (None if v is None else 2 * v) for k, v in
                          {"before": self.macs_before, "after": self.macs_after,
                           "effective": self.macs_effective}.items()},
                "layers": [layer.to_dict() for layer in self.layers.values()]}


def _weight_modules(name: str, module: nn.Module) -> list:
    """The weight-bearing modules that now stand for layer ``name`` (itself, or its factors)."""
    if layer_type(module) is not None:
        return [(name, module)]
    return [(f"{name}.{sub}", m) for sub, m in module.named_modules() if sub and isinstance(m, LAYER_TYPES)]


def _submodule(model: nn.Module, name: str):
    # get_submodule is not available on TorchScript modules; find_layer walks attributes (works for both)
    # and gives a WeightSlot for a weight matrix of an LSTM or MultiheadAttention
    return find_layer(model, name)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = _submodule(model, parent_name) if parent_name else model
    setattr(parent, attr, new)


def _copy_model(model: nn.Module, memo: Optional[dict] = None) -> nn.Module:
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:
        raise CompressionError(f"cannot copy the model to compress it: {type(exc).__name__}: {exc}") from None


def check_settings(model: nn.Module, layers: list, settings: dict, owners: dict) -> None:
    """Reject settings that cannot be applied to ``model``, naming the layer (tied weights, counts that
    remove everything, shape changes that the model or a TorchScript graph does not allow)."""
    scripted = isinstance(model, torch.jit.ScriptModule)
    for name, mod in layers:
        s = settings[name]
        owner = owners[name]
        if owner != name and s != settings[owner] and not s.is_empty:
            raise CompressionError(f"layer '{name}': its weight is the same tensor as layer '{owner}' (tied "
                                   f"weights), which it follows; give it the same settings as '{owner}' or "
                                   "none (null sections)")
        check_layer_amount(name, mod, s)
        if owners[name] != name or any(owners[o] == name for o in owners if o != name):
            if s.changes_shapes:
                raise CompressionError(f"layer '{name}': low-rank and structured pruning cannot change a tied "
                                       "weight (it is shared with another layer)")
        for method, asked in (("lowrank", s.lowrank is not None), ("structured", s.removes_channels)):
            why = refusal(mod, method) if asked else None
            if why:
                what = "low-rank" if method == "lowrank" else f"{s.prune.granularity} pruning"
                raise CompressionError(f"layer '{name}' ({layer_type(mod)}): {what} does not apply: {why}")
        parent = _submodule(model, name.rpartition(".")[0]) if "." in name else model
        if s.lowrank is not None and isinstance(parent, nn.MultiheadAttention):
            raise CompressionError(f"layer '{name}': nn.MultiheadAttention reads this projection's weight "
                                   "directly, so it cannot be replaced by factors")
        if s.lowrank is not None and scripted:
            raise CompressionError(f"layer '{name}': low-rank needs to replace layers, which a TorchScript "
                                   "graph does not allow; load the model as a state_dict with its factory")
        if s.removes_channels and scripted:
            raise CompressionError(f"layer '{name}': {s.prune.granularity} pruning needs to change layer shapes, "
                                   "which a TorchScript graph does not allow; use element pruning")


def compress(model: nn.Module, plan: Plan, example_input: Any = None, progress: ProgressFn = None,
             cache: Optional[TensorCache] = None, macs_before: Optional[tuple] = None,
             count: bool = True, share: bool = False) -> Compressed:
    """Apply ``plan`` to a copy of ``model``.

    Parameters
    ----------
    model : nn.Module
        The original; never modified.
    plan : Plan
        Per-layer settings; entries that match no layer are an error.
    example_input : optional
        Needed for structured pruning (the graph is traced on it) and for MACs.
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels (raises ``Cancelled``).
    cache : TensorCache, optional
        Reuse the pruning/quantization of tensors whose weight and settings did not change.
    macs_before : tuple, optional
        ``count_macs(model, example_input)`` when already known (it is the same for every plan).
    count : bool
        Count the MACs before and after (False: leave them None, e.g. when only the model is wanted).
    share : bool
        The new model shares the original's parameters that the plan leaves as they are, and its pruned
        and quantized weights are the per-tensor results themselves (held by ``cache`` too), instead of
        copying every tensor: a VGG-16 is then not held twice. Only where no shape changes; for a model
        that is only run or saved (accuracy, export), never trained or changed in place.

    Returns
    -------
    Compressed
    """
    report(progress, 0.0, "planning")
    layers = compressible_layers(model)
    settings = plan.resolve([n for n, _ in layers])
    owners = weight_owners(model)
    check_settings(model, layers, settings, owners)
    if macs_before is not None:
        before_macs, total_before = macs_before
    elif count and example_input is not None:
        before_macs, total_before = count_macs(model, example_input)
    else:
        before_macs, total_before = {}, None
    first = {}
    if not isinstance(model, torch.jit.ScriptModule) and not any(s.changes_shapes for s in settings.values()):
        # the new weights first, then a copy holding them in place of the old ones: never the model, its
        # copy and the new weights at once (VGG-16's classifier.0 alone is 411 MB)
        first = _tensors_first(layers, settings, owners, cache, progress)
        work = _copy_model(model, memo=_replacing(model, layers, first, share, cache is not None))
        work.eval() if not model.training else work.train()
        structural = {}
    else:
        work, structural = _remove_channels(model, settings, example_input, progress)  # 1.
    lowrank_info = _factorize_layers(work, layers, settings, example_input, progress)  # 2.
    results = _compress_tensors(work, layers, settings, owners, structural, lowrank_info, cache, progress,
                                first)  # 3+4.
    total_after = None
    if example_input is not None and count:
        report(progress, 0.96, "counting MACs")
        after, total_after = count_macs(work, example_input)
        set_layer_macs(results, before_macs, None if isinstance(model, torch.jit.ScriptModule) else after)
    weights_before = sum(m.weight.numel() for n, m in layers if owners[n] == n)
    weights_after = sum(lr.params_after for lr in results.values())
    out = Compressed(work, plan, results,
                     other_bits_before=FP32_BITS * (stored_numel(model) - weights_before),
                     other_bits_after=FP32_BITS * (stored_numel(work) - weights_after),
                     macs_before=total_before, macs_after=total_after)
    report(progress, 1.0, "done")
    return out


def channel_requests(settings: dict) -> dict:
    """The structured-pruning requests of resolved per-layer ``settings``: ``layer -> (granularity, amount,
    criterion)`` for every layer whose channels the plan removes (what stage 1 hands to ``prune_structured``)."""
    return {n: (s.prune.granularity, s.prune.amount, s.prune.criterion) for n, s in settings.items()
            if s.removes_channels}


def _remove_channels(model: nn.Module, settings: dict, example_input: Any, progress: ProgressFn) -> tuple:
    """Stage 1, structured pruning: ``(work, structural)``, the copy of ``model`` the next stages change
    (a new, smaller model when channels are removed) and, per layer, what was kept and removed."""
    requests = channel_requests(settings)
    structural = {}
    if requests:
        if example_input is None:
            raise CompressionError("structured pruning needs an example input to trace the model "
                                   "(give a factory that returns one, eval data, or --input-shape)")
        report(progress, 0.02, "removing channels")
        work, structural = _structure.prune_structured(model, example_input, requests)
    else:
        work = _copy_model(model)
    work.eval() if not model.training else work.train()
    return work, structural


def _factorize_layers(work: nn.Module, layers: list, settings: dict, example_input: Any,
                      progress: ProgressFn) -> dict:
    """Stage 2, low-rank factorization: replaces layers of ``work`` by their factors, checks the model
    still runs, and returns each factorized layer's ``factorize()`` info."""
    lowrank_info = {}
    for name, _ in layers:
        lr = settings[name].lowrank
        if lr is None:
            continue
        module = _submodule(work, name)
        method = _lowrank.resolve_method(module, lr.method)
        report(progress, 0.05, f"factorising {name}")
        try:
            replacement, info = _lowrank.factorize(module, method, lr.rank, name=name, grow=False)
        except (CompressionError, PlanError) as exc:
            msg = str(exc) if name in str(exc) else f"layer '{name}': {exc}"
            raise type(exc)(msg) from None
        _set_submodule(work, name, replacement)
        lowrank_info[name] = info
    if lowrank_info and example_input is not None:
        try:
            run_model(work, example_input)
        except ExplorerError as exc:
            raise CompressionError(f"after low-rank replacement of {', '.join(lowrank_info)} the model no longer "
                                   f"runs ({exc}); its forward probably reads the layer's weight directly") from None
    return lowrank_info


def _tensors_first(layers: list, settings: dict, owners: dict, cache: Optional[TensorCache],
                   progress: ProgressFn) -> dict:
    """Where no shape changes: each own weight's ``(TensorResult, new)`` under its settings, before the
    model is copied (from ``cache`` where it holds them), by layer name."""
    done = {}
    for i, (name, orig) in enumerate(layers):
        if owners[name] != name:
            continue
        report(progress, 0.1 + 0.85 * i / max(len(layers), 1), f"compressing {name}")
        done[name] = compress_weight_cached(cache, orig.weight, name, orig, orig.weight, settings[name])
    return done


def _replacing(model: nn.Module, layers: list, done: dict, share: bool, cached: bool) -> dict:
    """A deepcopy memo: each weight that :func:`_tensors_first` changed stands for a parameter holding its
    new values (a tied weight stays tied), so the copy never copies the old ones; with ``share``, every
    other parameter of ``model`` stands for itself too. Without ``share`` the new values are the copy's
    own: cloned where ``cached`` (the cache holds them for other builds), else the result's own tensor
    (nothing else holds it)."""
    memo = {id(p): p for p in model.parameters()} if share else {}
    for name, orig in layers:
        hit = done.get(name)
        if hit is not None and hit[1] is not None:
            values = hit[1].clone() if cached and not share else hit[1]
            memo[id(orig.weight)] = nn.Parameter(values, requires_grad=orig.weight.requires_grad)
    return memo


def _compress_tensors(work: nn.Module, layers: list, settings: dict, owners: dict, structural: dict,
                      lowrank_info: dict, cache: Optional[TensorCache], progress: ProgressFn,
                      first: Optional[dict] = None) -> dict:
    """Stages 3 and 4, element pruning and quantization of every weight tensor of ``work`` (in place):
    a :class:`LayerResult` per layer, in model order. ``first``: results computed already, by layer name
    (where no shape changes: the copy holds their new weights already)."""
    results = {}
    total_tensors = sum(len(_weight_modules(n, _submodule(work, n))) for n, _ in layers)
    done = 0
    for name, orig in layers:
        s = settings[name]
        shared = owners[name] != name
        lr = LayerResult(name, layer_type(orig), s, 0 if shared else orig.weight.numel(),
                         structural=structural.get(name), lowrank=lowrank_info.get(name),
                         shared_with=owners[name] if shared else None)
        results[name] = lr
        if shared:  # stored once, with its owner
            continue
        for tname, mod in _weight_modules(name, _submodule(work, name)):
            if not first:  # else each was reported as it was computed, before the copy
                report(progress, 0.1 + 0.85 * done / max(total_tensors, 1), f"compressing {tname}")
            # structured pruning changes the shape of every layer it touches (coupled ones too): only a
            # tensor with the original's shape, not factorised, still holds the original's values
            untouched = name not in lowrank_info and mod.weight.shape == orig.weight.shape
            p = s.prune
            if p is not None and p.granularity == "element" and p.amount and p.criterion in SALIENCY and not untouched:
                raise CompressionError(
                    f"layer '{name}': criterion {p.criterion} ranks the layer's original weights, which "
                    + ("its factorisation replaces" if name in lowrank_info else "the removal of channels changes")
                    + ": prune its elements with criterion l1")
            if first and name in first:  # computed before the copy, which holds its new weight
                lr.tensors.append(first[name][0])
                done += 1
                continue
            result, new = compress_weight_cached(cache, orig.weight if untouched else None, tname, mod, mod.weight, s)
            if new is not None:
                with torch.no_grad():
                    mod.weight.copy_(new)
            lr.tensors.append(result)
            done += 1
    return results


def set_layer_macs(results: dict, before: dict, after: Optional[dict]) -> None:
    """Fill each LayerResult's MACs before / after / effective from per-module MAC counts (``after`` is
    None where none could be measured: TorchScript runs no hooks). Effective MACs scale each weight
    tensor's MACs by its fraction of non-zero weights."""
    for name, lr in results.items():
        lr.macs_before = before.get(name)
        if after is None:
            continue
        tensors = results[lr.shared_with].tensors if lr.shared_with else lr.tensors
        if lr.shared_with:  # the tied layer runs its own MACs with the owner's (compressed) weight
            subs = [(t, after.get(name, 0)) for t in tensors]
        else:
            subs = [(t, after.get(layer_of_key(t.name), 0)) for t in tensors]
        lr.macs_after = sum(m for _, m in subs)
        lr.macs_effective = int(round(sum(m * t.nonzero / max(t.numel, 1) for t, m in subs)))


def check_layer_amount(name: str, module: nn.Module, s: LayerSettings) -> None:
    """A pruning count must leave something of layer ``name``: a weight, an output or an input channel
    (:func:`~explorer.engine.methods.prune.removed_count`, the one check of an amount)."""
    p = s.prune
    if p is None or not p.amount:
        return
    g = GRANULARITIES[p.granularity]
    removed_count(p.amount, g.total(module.weight), f"layer '{name}'", g.unit)


def compress_weight_cached(cache: Optional[TensorCache], original: Optional[torch.Tensor], name: str,
                           mod: nn.Module, weight: torch.Tensor, s: LayerSettings):
    """:func:`compress_weight` of module ``mod``'s ``weight`` (stored as ``name``), from ``cache`` when it holds
    the result for the tensor ``original`` under ``s``, and kept there when computed. ``original`` None (no
    cache, or a weight whose values are no longer the original's): computed, not cached."""
    key = TensorCache.key(original, name, s) if (cache is not None and original is not None) else None
    if key is not None and s.prune is not None and s.prune.criterion in SALIENCY:
        key = (key, saliency_token(original))  # the ranking depends on the data and the other weights too
    hit = cache.get(key) if key is not None else None
    if hit is None:
        hit = compress_weight(weight_key(name, mod), weight, s, original)
        if key is not None:
            cache.put(key, hit)
    return hit


def compress_weight(key: str, weight: torch.Tensor, s: LayerSettings, ranked: Optional[torch.Tensor] = None):
    """Element pruning and quantization of one weight tensor (left unchanged). ``ranked``: the loaded model's
    tensor whose saliency ranks it (``weight`` itself by default), for criteria obd and taylor.

    Returns ``(TensorResult, new)`` where ``new`` is the compressed weight (same shape and dtype), or
    None when the settings leave it as it is. ``key`` is the weight's state_dict key (``fc1.weight``).
    """
    mask = None
    if s.prune is not None and s.prune.granularity == "element" and s.prune.amount:
        mask = element_mask(weight, s.prune.amount, s.prune.criterion, layer_of_key(key), ranked=ranked)
    quant = None
    with torch.no_grad():
        if s.quantize is not None:
            try:
                quant = quantize_tensor(weight, s.quantize, mask)
            except CompressionError as exc:
                raise CompressionError(f"tensor '{layer_of_key(key)}': {exc}") from None
            new = quant.decoded.to(weight.dtype)
        elif mask is not None:
            # where, not weight * mask: no float copy of the mask (freed under the GIL), and a pruned weight is
            # +0.0 as the file decodes it (a negative one times 0 was -0.0)
            keep = torch.from_numpy(mask.reshape(tuple(weight.shape))).to(weight.device)
            new = torch.where(keep, weight, weight.new_zeros(()))
        else:
            new = None
    out = (new if new is not None else weight).detach()
    # torch's count releases the GIL (numpy's holds it: 93 ms on a 102.8 M-weight layer, a stall of the
    # window's event loop while a worker builds a model for its accuracy), at about the same speed
    nonzero = int(torch.count_nonzero(out))
    sizes = tensor_sizes(weight.numel(), mask, quant.tensor_code() if quant is not None else None)
    return TensorResult(key, tuple(weight.shape), mask, quant, sizes, nonzero), new

"""Inspecting a model and applying a plan to it.

``inspect_model`` lists the compressible layers with their shapes, parameters, MACs and whether their
channels can really be removed. ``compress`` applies a :class:`~explorer.engine.plan.Plan` and returns a
:class:`Compressed`: a new runnable model (the original is untouched) plus, per layer, everything a
compressed file stores (masks, codes, codebooks or scales, low-rank factors, kept channels) and the
size of each storage stage. Order of operations: see :mod:`explorer.engine.plan`.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from . import lowrank as _lowrank
from . import structure as _structure
from .errors import CompressionError, ExplorerError
from .metrics import LAYER_TYPES, compressible_layers, count_macs, layer_type, run_model
from .errors import PlanError
from .plan import LayerSettings, Plan
from .progress import ProgressFn, report
from .prune import magnitude_mask
from .quantize import QuantResult, quantize_tensor
from .size import TensorSizes, tensor_sizes

STAGES = ("dense", "pruned", "quantized", "coded")
FP32_BITS = 32


# ------------------------------------------------------------------------------------------ inspect


@dataclass
class LayerInfo:
    name: str
    type: str
    shape: tuple  # weight shape
    weight_params: int
    bias_params: int
    macs: Optional[int]  # for the example input; None when it could not be measured
    filter_ok: bool = False
    filter_reason: Optional[str] = None
    channel_ok: bool = False
    channel_reason: Optional[str] = None
    coupled: list = field(default_factory=list)
    shared_with: Optional[str] = None  # the earlier layer whose weight tensor this one reuses (tied weights)

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    @property
    def bytes(self) -> int:
        return 4 * self.params

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "shape": list(self.shape), "params": self.params,
                "weight_params": self.weight_params, "bias_params": self.bias_params, "macs": self.macs,
                "bytes": self.bytes, "shared_with": self.shared_with,
                "structured": {"filter": self.filter_ok, "filter_reason": self.filter_reason,
                               "channel": self.channel_ok, "channel_reason": self.channel_reason,
                               "coupled": list(self.coupled)}}


@dataclass
class ModelInfo:
    layers: list
    total_params: int  # every parameter and floating-point buffer (BatchNorm statistics included)
    macs: Optional[int]  # whole model, FlopCounterMode / 2
    input_shape: Optional[tuple]

    @property
    def layer_params(self) -> int:
        """Parameters of the layers, a tied weight counted once."""
        return sum(layer.params - (layer.weight_params if layer.shared_with else 0) for layer in self.layers)

    @property
    def other_params(self) -> int:
        return self.total_params - self.layer_params

    @property
    def bytes(self) -> int:
        return 4 * self.total_params

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        layer_macs_sum = sum(l.macs or 0 for l in self.layers)
        return {"layers": [l.to_dict() for l in self.layers],
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "total": {"params": self.total_params, "layer_params": self.layer_params,
                          "other_params": self.other_params, "bytes": self.bytes,
                          "macs": self.macs, "flops": None if self.macs is None else 2 * self.macs,
                          "layer_macs": layer_macs_sum}}


def stored_numel(model: nn.Module) -> int:
    """Floating-point elements a model stores: its state_dict (parameters and persistent buffers such as
    BatchNorm running statistics), a tensor shared under two names counted once."""
    seen, n = set(), 0
    for t in model.state_dict().values():
        if not t.is_floating_point():
            continue
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride())) if t.numel() else id(t)
        if key not in seen:
            seen.add(key)
            n += t.numel()
    return n


def _bias_numel(module) -> int:
    b = getattr(module, "bias", None)
    return b.numel() if isinstance(b, torch.Tensor) else 0


def weight_owners(model: nn.Module) -> dict:
    """For every compressible layer, the first layer holding the same weight tensor (itself unless tied)."""
    first, owners = {}, {}
    for name, mod in compressible_layers(model):
        owners[name] = first.setdefault(id(mod.weight), name)
    return owners


def _input_shape(example) -> Optional[tuple]:
    return tuple(example.shape) if isinstance(example, torch.Tensor) else None


def inspect_model(model: nn.Module, example_input: Any = None, progress: ProgressFn = None) -> ModelInfo:
    """Describe the compressible layers of ``model`` (MACs need ``example_input``)."""
    macs, total = {}, None
    struct = {}
    scripted = isinstance(model, torch.jit.ScriptModule)
    report(progress, 0.0, "counting MACs")
    if example_input is not None:
        macs, total = count_macs(model, example_input)
        report(progress, 0.3, "tracing channel couplings")
        if not scripted:
            struct = _structure.analyze(model, example_input)
    report(progress, 1.0, "done")
    layers = []
    owners = weight_owners(model)
    for name, mod in compressible_layers(model):
        info = LayerInfo(name, layer_type(mod), tuple(mod.weight.shape), mod.weight.numel(), _bias_numel(mod),
                         macs.get(name) if macs else None)
        if owners[name] != name:
            info.shared_with = owners[name]
        s = struct.get(name)
        if s is not None:
            info.filter_ok, info.filter_reason = s.filter_ok, s.filter_reason
            info.channel_ok, info.channel_reason = s.channel_ok, s.channel_reason
            info.coupled = list(s.coupled)
        else:
            why = ("TorchScript graph cannot be rewritten" if scripted else "no example input to trace the model")
            info.filter_reason = info.channel_reason = why
        layers.append(info)
    return ModelInfo(layers, stored_numel(model), total, _input_shape(example_input))


# ------------------------------------------------------------------------------------------ compress


@dataclass
class TensorResult:
    name: str  # parameter path in the compressed model, e.g. "fc1.weight" or "fc1.1.weight"
    shape: tuple
    mask: Optional[np.ndarray]  # flat bool, None = nothing element-pruned
    quant: Optional[QuantResult]
    sizes: TensorSizes
    nonzero: int
    sizes_only: bool = False  # measured without mask or codes (explorer.engine.sweep): never written to a file

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


def _submodule(model: nn.Module, name: str) -> nn.Module:
    # get_submodule is not available on TorchScript modules; walking attributes works for both
    module = model
    for part in name.split("."):
        module = getattr(module, part)
    return module


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = _submodule(model, parent_name) if parent_name else model
    setattr(parent, attr, new)


def _copy_model(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise CompressionError(f"cannot copy the model to compress it: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------------------ caches

DEFAULT_CACHE_BYTES = 64 << 20  # a Recent given no byte budget of its own
TENSOR_CACHE_BYTES = 64 << 20  # TensorCache(): full per-tensor results (mask, codes, decoded weight)
_OBJECT_BYTES = 56  # an ndarray's or tensor's own header, beyond its buffer (a rough figure)


def held_bytes(value) -> int:
    """The memory ``value`` holds, in bytes: what a cache entry costs.

    Counts the buffers of numpy arrays and torch tensors (a tensor's storage; each buffer once, a view as
    the array or tensor it views), and the Python objects around them (``sys.getsizeof``), walking
    containers, dataclasses, ``__slots__`` and attributes. An object whose type has a ``held_bytes()``
    method says its own (e.g. a :class:`Recent` inside a value: what it holds now). Functions, classes
    and modules are not walked. A container or object reached twice is counted once; strings and numbers
    are counted where they occur (a small overestimate for shared ones, e.g. dict keys)."""
    getsizeof = sys.getsizeof
    seen: set = set()
    buffers: set = set()
    total = 0
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        obj = pop()
        t = type(obj)
        if t in _ATOMS:
            total += getsizeof(obj)
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if t is dict:
            total += getsizeof(obj)
            extend(obj.keys())
            extend(obj.values())
        elif t is list or t is tuple:
            total += getsizeof(obj)
            extend(obj)
        elif isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            total += _OBJECT_BYTES
            if base.base is not None and isinstance(base.base, (torch.Tensor, bytes, bytearray)):
                push(base.base)  # a view of a tensor's (or a bytes object's) memory
                continue
            key = (base.__array_interface__["data"][0], base.nbytes)
            if key not in buffers:
                buffers.add(key)
                total += base.nbytes
        elif isinstance(obj, torch.Tensor):
            total += _OBJECT_BYTES
            try:
                storage = obj.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
            except (RuntimeError, NotImplementedError, TypeError):  # sparse, meta, ...: its elements
                key = (id(obj), obj.numel() * obj.element_size())
            if key not in buffers:
                buffers.add(key)
                total += key[1]
        elif isinstance(obj, (str, bytes, bytearray, int, float, complex, np.generic)):
            total += getsizeof(obj)
        elif isinstance(obj, memoryview):
            total += getsizeof(obj) + obj.nbytes
        elif isinstance(obj, _OPAQUE):
            continue
        else:
            own = getattr(t, "held_bytes", None)
            if callable(own):
                total += int(own(obj))
                continue
            total += getsizeof(obj)
            if isinstance(obj, dict):
                extend(obj.keys())
                extend(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset)):
                extend(obj)
            else:
                d = getattr(obj, "__dict__", None)
                if isinstance(d, dict):
                    total += getsizeof(d)
                    extend(d.values())
                for slot in _slots(t):
                    push(getattr(obj, slot, None))
    return total


_ATOMS = frozenset({str, int, float, bool, type(None), bytes, complex})
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


@functools.lru_cache(maxsize=None)  # one entry per class: bounded by the program's classes
def _slots(cls) -> tuple:
    out = []
    for klass in cls.__mro__:
        slots = getattr(klass, "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__"):
                out.append(slot)
    return tuple(out)


class Recent:
    """A thread-safe LRU dict bounded by the bytes its entries hold: the least recently used entries are
    dropped first once their costs add up to more than ``limit_bytes`` (and, if ``limit`` is given, once
    there are more than ``limit`` entries). The entry put last is always kept, even when it alone is over
    the budget (the caller is about to use it). An entry costs ``cost(value)`` (:func:`held_bytes` by
    default) plus ``held_bytes(key)``, measured when it is put; a value that grows after that (e.g. a
    sweep state filling in) is measured again by :meth:`refresh`. ``Recent(16)`` (an entry count alone)
    keeps the default byte budget too. Every operation is one dict operation under a lock, the cost
    measured outside it."""

    def __init__(self, limit: Optional[int] = None, limit_bytes: Optional[int] = DEFAULT_CACHE_BYTES,
                 cost: Callable[[Any], int] = held_bytes):
        if limit is None and limit_bytes is None:
            raise ValueError("Recent needs a byte budget (limit_bytes) or an entry count (limit)")
        self.limit, self.limit_bytes, self.cost = limit, limit_bytes, cost
        self._items: dict = {}  # key -> value, least recently used first
        self._costs: dict = {}  # key -> bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evicted = 0

    def get(self, key, default=None):
        """The value under ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            value = self._items.pop(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
                return default
            self._items[key] = value  # most recent last
            self.hits += 1
            return value

    def put(self, key, value) -> None:
        cost = int(self.cost(value)) + held_bytes(key)
        with self._lock:
            if key in self._items:
                del self._items[key]
                self._bytes -= self._costs.pop(key)
            self._items[key] = value
            self._costs[key] = cost
            self._bytes += cost
            self._evict()

    def refresh(self, key) -> None:
        """Measure the value under ``key`` again (it has grown or shrunk since it was put) and drop the
        least recently used others if it no longer fits."""
        with self._lock:
            value = self._items.get(key, _MISSING)
        if value is _MISSING:
            return
        cost = int(self.cost(value)) + held_bytes(key)
        with self._lock:
            if self._items.get(key, _MISSING) is value:
                self._bytes += cost - self._costs[key]
                self._costs[key] = cost
                self._evict()

    def _evict(self) -> None:
        while len(self._items) > 1 and ((self.limit_bytes is not None and self._bytes > self.limit_bytes)
                                        or (self.limit is not None and len(self._items) > self.limit)):
            oldest = next(iter(self._items))
            del self._items[oldest]
            self._bytes -= self._costs.pop(oldest)
            self.evicted += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._costs.clear()
            self._bytes = 0

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """What the entries hold, in bytes (as their costs were measured)."""
        return self._bytes

    def held_bytes(self) -> int:
        """For :func:`held_bytes` of a value that holds this cache: what its entries hold."""
        return self._bytes


_MISSING = object()


class TensorCache(Recent):
    """Results of element pruning + quantization per weight tensor — ``(TensorResult, new weight or
    None)`` — reused by the next :func:`compress` of the same model when a tensor and its settings are
    unchanged (the window re-measures after every slider release; usually one layer changed). Keys hold
    the identity and version of the original weight, so a tensor that structured pruning or low-rank
    replaced is never matched. A :class:`Recent`: the least recently used results go first once their
    masks, codes and decoded weights add up to more than ``limit_bytes``. Safe to share between threads."""

    def __init__(self, limit: Optional[int] = None, limit_bytes: int = TENSOR_CACHE_BYTES):
        super().__init__(limit=limit, limit_bytes=limit_bytes)

    @staticmethod
    def key(source: torch.Tensor, tname: str, s: LayerSettings):
        return (tname, id(source), source._version, tuple(source.shape), s.prune, s.quantize)


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
        _check_amount(name, mod, s)
        if owners[name] != name or any(owners[o] == name for o in owners if o != name):
            if s.changes_shapes:
                raise CompressionError(f"layer '{name}': low-rank and structured pruning cannot change a tied "
                                       "weight (it is shared with another layer)")
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
             count: bool = True) -> Compressed:
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

    Returns
    -------
    Compressed
    """
    report(progress, 0.0, "planning")
    scripted = isinstance(model, torch.jit.ScriptModule)
    layers = compressible_layers(model)
    settings = plan.resolve([n for n, _ in layers])
    owners = weight_owners(model)
    check_settings(model, layers, settings, owners)
    if macs_before is not None:
        before_macs, total_before = macs_before
    elif not count:
        before_macs, total_before = {}, None
    else:
        before_macs, total_before = count_macs(model, example_input) if example_input is not None else ({}, None)

    # 1. structured pruning (returns a new model) -----------------------------------------------
    requests = {n: (s.prune.granularity, s.prune.amount, s.prune.criterion) for n, s in settings.items()
                if s.removes_channels}
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

    # 2. low-rank factorisation --------------------------------------------------------------------
    lowrank_info = {}
    for name, _ in layers:
        lr = settings[name].lowrank
        if lr is None:
            continue
        module = _submodule(work, name)
        method = lr.method
        if method == "auto":
            method = "svd" if isinstance(module, (nn.Linear, nn.Embedding)) else "tucker2"
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

    # 3 + 4. element pruning and quantization of every weight tensor --------------------------------
    results = {}
    total_tensors = sum(len(_weight_modules(n, _submodule(work, n))) for n, _ in layers)
    done = 0
    for name, orig in layers:
        s = settings[name]
        shared = owners[name] != name
        lr = LayerResult(name, layer_type(orig), s, 0 if shared else orig.weight.numel(),
                         structural=structural.get(name), lowrank=lowrank_info.get(name),
                         shared_with=owners[name] if shared else None)
        if shared:  # stored once, with its owner
            results[name] = lr
            continue
        for tname, mod in _weight_modules(name, _submodule(work, name)):
            report(progress, 0.1 + 0.85 * done / max(total_tensors, 1), f"compressing {tname}")
            # structured pruning changes the shape of every layer it touches (coupled ones too): only a
            # tensor with the original's shape, not factorised, still holds the original's values
            untouched = name not in lowrank_info and mod.weight.shape == orig.weight.shape
            key = TensorCache.key(orig.weight, tname, s) if (cache is not None and untouched) else None
            hit = cache.get(key) if key is not None else None
            if hit is not None:
                result, new = hit
            else:
                result, new = compress_weight(tname, mod.weight, s)
                if key is not None:
                    cache.put(key, (result, new))
            if new is not None:
                with torch.no_grad():
                    mod.weight.copy_(new)
            lr.tensors.append(result)
            done += 1
        results[name] = lr

    # MACs after ---------------------------------------------------------------------------------
    total_after = None
    if example_input is not None and count:
        report(progress, 0.96, "counting MACs")
        after, total_after = count_macs(work, example_input)
        set_layer_macs(results, before_macs, None if scripted else after)

    weights_before = sum(m.weight.numel() for n, m in layers if owners[n] == n)
    weights_after = sum(lr.params_after for lr in results.values())
    out = Compressed(work, plan, results,
                     other_bits_before=FP32_BITS * (stored_numel(model) - weights_before),
                     other_bits_after=FP32_BITS * (stored_numel(work) - weights_after),
                     macs_before=total_before, macs_after=total_after)
    report(progress, 1.0, "done")
    return out


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
            subs = [(t, after.get(t.name[: -len(".weight")], 0)) for t in tensors]
        lr.macs_after = sum(m for _, m in subs)
        lr.macs_effective = int(round(sum(m * t.nonzero / max(t.numel, 1) for t, m in subs)))


def _check_amount(name: str, module: nn.Module, s: LayerSettings) -> None:
    """A pruning count must leave something: at least one weight, at least one channel."""
    p = s.prune
    if p is None or isinstance(p.amount, float) or not p.amount:
        return
    w = module.weight
    if p.granularity == "element":
        total, unit = w.numel(), "weights"
    else:
        dim = 0 if p.granularity == "filter" else 1
        total = w.shape[dim] if w.dim() > dim else 0
        unit = "output channels" if dim == 0 else "input channels"
    if p.amount >= total:
        raise PlanError(f"layer '{name}': prune.amount {p.amount} removes all of its {total} {unit}; "
                        f"give a count below {total} or a fraction")


def compress_weight(tname: str, weight: torch.Tensor, s: LayerSettings):
    """Element pruning and quantization of one weight tensor (left unchanged).

    Returns ``(TensorResult, new)`` where ``new`` is the compressed weight (same shape and dtype), or
    None when the settings leave it as it is. ``tname`` is the module's path (``.weight`` is appended).
    """
    mask = None
    if s.prune is not None and s.prune.granularity == "element" and s.prune.amount:
        mask = magnitude_mask(weight, s.prune.amount)
    quant = None
    with torch.no_grad():
        if s.quantize is not None:
            try:
                quant = quantize_tensor(weight, s.quantize, mask)
            except CompressionError as exc:
                raise CompressionError(f"tensor '{tname}': {exc}") from None
            new = quant.decoded.to(weight.dtype)
        elif mask is not None:
            new = weight * torch.from_numpy(mask.reshape(tuple(weight.shape))).to(weight.device, weight.dtype)
        else:
            new = None
    out = (new if new is not None else weight).detach()
    # numpy counts a float32/float64 array ~10x faster than torch.count_nonzero
    nonzero = int(np.count_nonzero(out.cpu().numpy()) if out.dtype in (torch.float32, torch.float64)
                  else torch.count_nonzero(out))
    sizes = tensor_sizes(weight.numel(), mask, quant.tensor_code() if quant is not None else None)
    return TensorResult(f"{tname}.weight", tuple(weight.shape), mask, quant, sizes, nonzero), new

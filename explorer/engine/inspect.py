"""What a model has: its compressible layers with their shapes, parameters and MACs, whether their
channels can really be removed (traced on an example input), which weights are tied, and the
floating-point values it stores. ``explorer inspect`` prints :func:`inspect_model`'s :class:`ModelInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from explorer.engine.layers import WeightSlot, dense_reason, kind_of, lowrank_refusal, module_layers, refusal
from explorer.engine.measure.metrics import compressible_layers, count_macs, layer_type
from explorer.engine.methods import channels as _structure
from explorer.engine.progress import ProgressFn, report


@dataclass
class LayerInfo:
    name: str
    type: str
    shape: tuple  # weight shape
    weight_params: int
    bias_params: int  # the module's other parameters: its bias, and any other a subclass adds (see layer_numels)
    macs: Optional[int]  # for the example input; None when it could not be measured
    filter_ok: bool = False
    filter_reason: Optional[str] = None
    channel_ok: bool = False
    channel_reason: Optional[str] = None
    merge_ok: bool = False  # whether its neurons can be merged into their twins (data-free neuron merging)
    merge_reason: Optional[str] = None
    coupled: list = field(default_factory=list)
    producers: list = field(default_factory=list)  # the layers losing the same filters (a coupled group)
    shared_with: Optional[str] = None  # the earlier layer whose weight tensor this one reuses (tied weights)
    lowrank_reason: Optional[str] = None  # why low-rank does not apply to this type (None: it does)
    kept_dense: str = "bias"  # what of the layer's module is stored dense

    def refusals(self) -> dict:
        """What the inspection says this layer cannot take: ``"filter"``, ``"channel"``, ``"merge"``,
        ``"lowrank"`` -> its reason (None where it gives none); the ones it can take are absent."""
        out = {g: why for g, ok, why in (("filter", self.filter_ok, self.filter_reason),
                                         ("channel", self.channel_ok, self.channel_reason),
                                         ("merge", self.merge_ok, self.merge_reason)) if not ok}
        if self.lowrank_reason:
            out["lowrank"] = self.lowrank_reason
        return out

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    @property
    def weight_bytes(self) -> int:
        """fp32 bytes of the weight tensor alone: what the methods compress."""
        return FP32_BYTES * self.weight_params

    @property
    def layer_bytes(self) -> int:
        """fp32 bytes of the layer: its weight, bias and any other parameter of its module."""
        return FP32_BYTES * self.params

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "shape": list(self.shape), "params": self.params,
                "weight_params": self.weight_params, "bias_params": self.bias_params, "macs": self.macs,
                "weight_bytes": self.weight_bytes, "layer_bytes": self.layer_bytes, "shared_with": self.shared_with,
                "structured": {"filter": self.filter_ok, "filter_reason": self.filter_reason,
                               "channel": self.channel_ok, "channel_reason": self.channel_reason,
                               "merge": self.merge_ok, "merge_reason": self.merge_reason,
                               "coupled": list(self.coupled), "producers": list(self.producers)},
                "methods": {"prune_element": True, "quantize": True, "prune_filter": self.filter_ok,
                            "prune_channel": self.channel_ok, "lowrank": self.lowrank_reason is None,
                            "lowrank_reason": self.lowrank_reason},
                "kept_dense": self.kept_dense}


@dataclass
class DenseInfo:
    """A module with parameters of its own that holds no compressible layer: stored as it is, and why."""
    name: str  # "" for parameters of the model itself
    type: str
    params: int
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "params": self.params, "reason": self.reason}


@dataclass
class ModelInfo:
    layers: list
    total_params: int  # every parameter and floating-point buffer (BatchNorm statistics included)
    macs: Optional[int]  # whole model, FlopCounterMode / 2
    input_shape: Optional[tuple]
    dense: list = field(default_factory=list)  # DenseInfo of every module kept dense
    kept: list = field(default_factory=list)  # what the other parameters are: see kept_parts

    @property
    def layer_params(self) -> int:
        """Parameters of the layers, a tied weight counted once."""
        return sum(layer.params - (layer.weight_params if layer.shared_with else 0) for layer in self.layers)

    @property
    def other_params(self) -> int:
        return self.total_params - self.layer_params

    @property
    def bytes(self) -> int:
        return FP32_BYTES * self.total_params

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        layer_macs_sum = sum(l.macs or 0 for l in self.layers)
        return {"layers": [l.to_dict() for l in self.layers], "dense": [d.to_dict() for d in self.dense],
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "total": {"params": self.total_params, "layer_params": self.layer_params,
                          "other_params": self.other_params, "kept_dense": list(self.kept), "bytes": self.bytes,
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


FP32_BYTES = 4


def _bias_numel(module) -> int:
    b = getattr(module, "bias", None)
    return b.numel() if isinstance(b, torch.Tensor) else 0


def layer_numels(layer) -> tuple:
    """``(weight, other)``: the elements of a compressible layer's weight tensor, and of the other parameters
    of its module (its bias and any other a subclass adds). A weight matrix of an LSTM or attention module
    (a :class:`~explorer.engine.layers.WeightSlot`) is its weight alone: the module's biases are counted
    with what the model keeps dense (:func:`kept_parts`). ``LayerInfo.weight_bytes`` and ``layer_bytes``
    are these in fp32; the CLI's inspect table and the window's layer table both show them."""
    weight = layer.weight.numel()
    if isinstance(layer, WeightSlot):
        return weight, 0
    if isinstance(layer, torch.jit.ScriptModule):
        return weight, _bias_numel(layer)
    other = sum(t.numel() for t in layer.parameters(recurse=False) if t is not layer.weight)
    return weight, other


def weight_owners(model: nn.Module) -> dict:
    """For every compressible layer, the first layer holding the same weight tensor (itself unless tied)."""
    first, owners = {}, {}
    for name, mod in compressible_layers(model):
        owners[name] = first.setdefault(id(mod.weight), name)
    return owners


def dense_modules(model: nn.Module) -> list:
    """:class:`DenseInfo` of every module whose own parameters and floating-point buffers belong to no
    compressible layer (norms, unsupported types, a model's free parameters), with the reason it is kept
    dense. A layer's own bias is not listed: its type's row of the README says what it keeps."""
    weights = {id(mod.weight) for _, mod in compressible_layers(model)}
    out = []
    for name, mod in model.named_modules():
        held = module_layers(name, mod)  # a bare LSTM's matrices are layers; a bare Linear has none
        if (held and (name or kind_of(mod).slots)) or (name and layer_type(mod) is not None):
            continue
        own = [t for _, t in mod.named_parameters(recurse=False)]
        own += [t for _, t in mod.named_buffers(recurse=False) if t.is_floating_point()]
        n = sum(t.numel() for t in own if id(t) not in weights)
        if n == 0:
            continue
        shown = (getattr(mod, "original_name", None) if isinstance(mod, torch.jit.ScriptModule) else None) or \
            type(mod).__name__
        if name == "" and kind_of(mod) is not None:
            reason = (f"the model is a bare {shown}: layers are its submodules, so it is stored "
                      "dense (wrap it in a module)")
        elif name == "":
            reason = "parameters of the model itself, outside any layer: stored dense"
        elif list(mod.children()) and not isinstance(mod, torch.jit.ScriptModule):
            reason = f"parameters of {shown} itself, outside its layers: stored dense"
        else:
            reason = dense_reason(mod)
        out.append(DenseInfo(name, shown, n, reason))
    return out


def kept_parts(model: nn.Module, dense: list, other: int) -> list:
    """What the parameters outside the layers are (``ModelInfo.other_params``), by what holds them:
    ``{"what", "params", "reason", "source"}`` for each type kept dense (``LayerNorm``, with its reason; source
    ``"dense"``: the modules are in ``dense``), the biases of a module whose weight matrices are layers
    (``LSTM biases``: an LSTM's matrices are layers, its biases stay dense as every layer's bias does; source
    ``"layers"``) and the model's own parameters. A one-weight layer's own bias counts with the layer."""
    parts: dict = {}

    def add(what: str, params: int, reason: str, source: str) -> None:
        part = parts.setdefault(what, {"what": what, "params": 0, "reason": reason, "source": source})
        part["params"] += params

    for d in dense:
        add(d.type if d.name else "the model's own parameters", d.params, d.reason, "dense")
    weights = {id(mod.weight) for _, mod in compressible_layers(model)}
    for name, mod in model.named_modules():
        kind = kind_of(mod)
        if kind is None or not kind.slots or not module_layers(name, mod):
            continue
        own = [(a, t) for a, t in mod.named_parameters(recurse=False) if id(t) not in weights]
        if own:
            shown = type(mod).__name__
            add(f"{shown} biases" if all("bias" in a for a, _ in own) else f"{shown} parameters",
                sum(t.numel() for _, t in own),
                f"{kind.kept}: stored as they are, as every layer's bias (the weight matrices are the layers)",
                "layers")
    rest = other - sum(p["params"] for p in parts.values())
    if rest > 0:
        add("other buffers", rest, "floating-point buffers outside the layers: stored as they are", "buffers")
    return list(parts.values())


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
        info = LayerInfo(name, layer_type(mod), tuple(mod.weight.shape), *layer_numels(mod),
                         macs.get(name) if macs else None,
                         lowrank_reason=lowrank_refusal(model, name, mod), kept_dense=_kept(mod))
        if owners[name] != name:
            info.shared_with = owners[name]
        s = struct.get(name)
        fixed = refusal(mod, "structured") if not scripted else None
        if fixed:
            info.filter_reason = info.channel_reason = info.merge_reason = fixed
        elif s is not None:
            info.filter_ok, info.filter_reason = s.filter_ok, s.filter_reason
            info.channel_ok, info.channel_reason = s.channel_ok, s.channel_reason
            info.merge_ok, info.merge_reason = s.merge_ok, s.merge_reason
            info.coupled, info.producers = list(s.coupled), list(s.producers)
        else:
            why = ("TorchScript graph cannot be rewritten" if scripted else "no example input to trace the model")
            info.filter_reason = info.channel_reason = info.merge_reason = why
        layers.append(info)
    info = ModelInfo(layers, stored_numel(model), total, _input_shape(example_input), dense_modules(model))
    info.kept = kept_parts(model, info.dense, info.other_params)
    return info


def _kept(layer) -> str:
    kind = kind_of(layer)
    if isinstance(layer, WeightSlot) or kind is None or kind.kept != "bias":
        return kind.kept if kind is not None else "bias"
    return "bias" if _bias_numel(layer) else "nothing"

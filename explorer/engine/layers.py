"""Which layer types the engine compresses, which of their tensors, by which methods — and, for every
other module with parameters, why it is kept dense. One table (:data:`KINDS`); ``inspect``, ``compress``,
the MAC count and the README's table read it.

A *layer* is what a plan names and what has one weight tensor: a module with a ``weight`` (Linear, Conv,
Embedding, ...), or one weight matrix of a module that holds several — an LSTM's ``weight_ih_l0`` is the
layer ``lstm.weight_ih_l0``, standing for itself through a :class:`WeightSlot`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from explorer.engine.modules import BlockCirculant, TTCore

# how a removal of channels goes: the tracer of explorer.engine.methods.channels decides
TRACED = None


@dataclass(frozen=True)
class LayerKind:
    """One layer type: its module classes, the attributes of its compressible weight tensors, and why
    a method does not apply (None: it does, or the channel tracer decides per layer)."""
    name: str
    types: tuple
    weights: Callable[[nn.Module], list]  # attribute names of the weight tensors, each a layer
    macs: Callable  # (module, args, kwargs, out) -> {attribute: MACs}
    lowrank: Optional[str]  # why low-rank is refused, None when it applies
    structured: Optional[str]  # why filter/channel removal is refused; TRACED: the tracer decides
    kept: str  # what of the module stays dense
    slots: bool = False  # several weight tensors, each its own layer named <module>.<attribute>


def _one(module) -> list:
    return ["weight"]


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def _linear_macs(m, args, kwargs, out) -> dict:
    return {"weight": _numel(out) * m.in_features}


def _conv_macs(m, args, kwargs, out) -> dict:
    return {"weight": _numel(out) * (m.in_channels // m.groups) * math.prod(m.kernel_size)}


def _transposed_macs(m, args, kwargs, out) -> dict:
    # every input element is multiplied by one (out/groups) x kernel slice of the weight
    return {"weight": _numel(args[0] if args else None) * math.prod(m.weight.shape[1:])}


def _structured_macs(m, args, kwargs, out) -> dict:
    # the module counts its own work as its forward runs it (see explorer.engine.modules)
    x = args[0] if args else kwargs.get("x")
    return {"weight": m.macs(_numel(x) // max(m.in_features, 1))}


def _no_macs(m, args, kwargs, out) -> dict:
    return {"weight": 0}


def _rnn_weights(module) -> list:
    return [n for n in module._flat_weights_names if n.startswith("weight_")]


def _rnn_macs(m, args, kwargs, out) -> dict:
    x = args[0] if args else kwargs.get("input")
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = x.data.shape[0]
    else:
        steps = _numel(x) // max(m.input_size, 1)
    return {n: steps * getattr(m, n).numel() for n in _rnn_weights(m)}


def _mha_weights(module) -> list:
    if module.in_proj_weight is not None:
        return ["in_proj_weight"]
    return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]


def _mha_macs(m, args, kwargs, out) -> dict:
    names = ("query", "key", "value")
    qkv = [args[i] if len(args) > i else kwargs.get(names[i]) for i in range(3)]
    tokens = [_numel(t) // max(t.shape[-1], 1) if isinstance(t, torch.Tensor) else 0 for t in qkv]
    # F.multi_head_attention_forward reads out_proj's weight without calling it: its MACs are counted here
    out = {"out_proj": tokens[0] * m.out_proj.weight.numel()}
    if m.in_proj_weight is not None:
        e = m.embed_dim
        out["in_proj_weight"] = sum(tokens) * e * m.in_proj_weight.shape[1]
        return out
    out.update((n, t * getattr(m, n).numel()) for n, t in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"),
                                                              tokens))
    return out


_FUSED = ("{t} runs its weight matrices in one fused kernel that reads them directly: they cannot be replaced "
          "by factor layers")
_GATES = ("the rows of the weight matrices of {t} are its gates x hidden units and the hidden state feeds back "
          "through weight_hh: removing channels would have to cut every gate, both matrices, the biases and "
          "the next layer together, which is not supported")
_TRANSPOSED = ("a transposed convolution's weight is laid out in x out/groups x kernel; its factors would need a "
               "transposed core, which the file's factor layers (Linear, Conv1d, Conv2d, Embedding) cannot hold")

_FACTOR = ("it is a factor of a {what} already: factorise the original layer instead (load the model it was "
           "compressed from)")
_FACTOR_CHANNELS = "channel removal does not follow the reshapes of a {what}; prune it by element"

KINDS = (
    LayerKind("Linear", (nn.Linear,), _one, _linear_macs, None, TRACED, "bias"),
    LayerKind("TTCore", (TTCore,), _one, _structured_macs, _FACTOR.format(what="tensor train"),
              _FACTOR_CHANNELS.format(what="tensor train's cores"), "bias"),
    LayerKind("BlockCirculant", (BlockCirculant,), _one, _structured_macs,
              _FACTOR.format(what="block-circulant matrix"),
              _FACTOR_CHANNELS.format(what="block-circulant matrix (its FFT blocks)"), "bias"),
    LayerKind("Conv1d", (nn.Conv1d,), _one, _conv_macs, None, TRACED, "bias"),
    LayerKind("Conv2d", (nn.Conv2d,), _one, _conv_macs, None, TRACED, "bias"),
    LayerKind("Embedding", (nn.Embedding,), _one, _no_macs, None, TRACED, "nothing"),
    LayerKind("Conv3d", (nn.Conv3d,), _one, _conv_macs,
              "the factorisations here are of 1-D and 2-D kernels only",
              "channel removal handles Linear, Conv1d, Conv2d and Embedding layers only", "bias"),
    LayerKind("ConvTranspose", (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _one, _transposed_macs,
              _TRANSPOSED, "its weight is laid out in x out/groups x kernel, which channel removal (output "
              "channels first) does not handle; prune it by element", "bias"),
    LayerKind("EmbeddingBag", (nn.EmbeddingBag,), _one, _no_macs,
              "its factors would be an Embedding and a Linear, which lose the bag's pooling (offsets, mode, "
              "per-sample weights)", "the channel tracer does not follow an EmbeddingBag's pooled output",
              "nothing"),
    LayerKind("RNN", (nn.LSTM, nn.GRU, nn.RNN), _rnn_weights, _rnn_macs, _FUSED, _GATES,
              "biases (bias_ih_l*, bias_hh_l*)", slots=True),
    LayerKind("MultiheadAttention", (nn.MultiheadAttention,), _mha_weights, _mha_macs,
              "nn.MultiheadAttention reads its input projection directly (F.multi_head_attention_forward): it "
              "cannot be replaced by factors",
              "the rows of its input projection are the query, key and value of every head: removing some "
              "would change the heads' size", "in_proj_bias, bias_k/bias_v; out_proj is a Linear layer of its own",
              slots=True),
)
# the types whose TorchScript submodules are layers too (by their original name): those with one ``weight``
SCRIPTED_TYPES = frozenset(t.__name__ for kind in KINDS if not kind.slots for t in kind.types)


def kind_of(module) -> Optional[LayerKind]:
    """The :class:`LayerKind` of ``module`` (an nn.Module or a :class:`WeightSlot`), else None."""
    if isinstance(module, WeightSlot):
        module = module.owner
    for kind in KINDS:
        if isinstance(module, kind.types):
            return kind
    return None


def type_name(module) -> str:
    """The layer type shown for ``module``: its class name (the owner's for a :class:`WeightSlot`)."""
    return type(module.owner if isinstance(module, WeightSlot) else module).__name__


class WeightSlot:
    """One weight matrix of a module that holds several (an LSTM's ``weight_ih_l0``): a layer of its own.
    ``weight`` reads (and assigns) the owner's attribute, so code written for ``module.weight`` works."""

    def __init__(self, owner: nn.Module, attr: str):
        self.owner = owner
        self.attr = attr

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)

    def __repr__(self) -> str:
        return f"WeightSlot({type(self.owner).__name__}.{self.attr})"


def module_layers(name: str, module: nn.Module) -> list:
    """``(layer name, layer)`` of the layers module ``name`` holds (none when its type is not one of ours)."""
    kind = kind_of(module)
    if kind is None or isinstance(module, torch.jit.ScriptModule):
        return []
    if not kind.slots:
        return [(name, module)] if isinstance(getattr(module, "weight", None), torch.Tensor) else []
    prefix = f"{name}." if name else ""
    return [(prefix + a, WeightSlot(module, a)) for a in kind.weights(module)
            if isinstance(getattr(module, a, None), torch.Tensor)]


def weight_key(name: str, layer) -> str:
    """The state_dict key of layer ``name``'s weight: ``fc1.weight``, or the slot's own name."""
    return name if isinstance(layer, WeightSlot) else f"{name}.weight"


def layer_of_key(key: str) -> str:
    """The layer (or factor) a weight's state_dict key belongs to: the inverse of :func:`weight_key`."""
    return key[: -len(".weight")] if key.endswith(".weight") else key


def find_layer(model: nn.Module, name: str):
    """The module or :class:`WeightSlot` of layer ``name`` in ``model`` (walking attributes: works on
    TorchScript modules too)."""
    obj, parent = model, None
    for part in name.split("."):
        parent, obj = obj, getattr(obj, part)
    if isinstance(obj, torch.Tensor) and parent is not None:
        return WeightSlot(parent, name.rpartition(".")[2])
    return obj


def refusal(module, method: str) -> Optional[str]:
    """Why ``method`` ('lowrank' or 'structured') does not apply to ``module``, or None."""
    kind = kind_of(module)
    if kind is None:
        return None
    why = kind.lowrank if method == "lowrank" else kind.structured
    return None if why is None else why.format(t=type_name(module))


def module_macs(name: str, module: nn.Module, args, kwargs, out) -> dict:
    """MACs of every layer module ``name`` holds, for one call (a forward hook's arguments)."""
    kind = kind_of(module)
    if kind is None:
        return {}
    per = kind.macs(module, args, kwargs, out)
    counts = {lname: per.get(layer.attr if isinstance(layer, WeightSlot) else "weight", 0)
              for lname, layer in module_layers(name, module)}
    prefix = f"{name}." if name else ""
    children = dict(module.named_children())
    for key, macs in per.items():  # a submodule the module runs without calling it (MultiheadAttention's out_proj)
        if key in children:
            counts[prefix + key] = counts.get(prefix + key, 0) + macs
    return counts


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def dense_reason(module: nn.Module) -> str:
    """Why a module with parameters of its own that holds no layer is stored dense."""
    scripted = isinstance(module, torch.jit.ScriptModule)
    name = getattr(module, "original_name", "") if scripted else type(module).__name__
    if isinstance(module, _NORMS) or "Norm" in name:
        return ("normalization: one scale and shift per channel, stored in fp32 (structured pruning shrinks it "
                "with the layer it follows)")
    if scripted:
        return (f"{name or 'a submodule'} inside a TorchScript graph, where the engine compresses only the types "
                "with one weight (Linear, Conv, Embedding, ...); load the model from a state_dict with its factory "
                "to compress it: stored dense")
    if isinstance(module, (nn.PReLU,)):
        return "activation parameters: a few values, stored in fp32"
    if isinstance(module, (nn.RNNCellBase,)):
        return "recurrent cells (LSTMCell, GRUCell) are not among the types the engine compresses: stored dense"
    return f"{name} is not among the layer types the engine compresses: stored dense in fp32"


def lowrank_refusal(model: nn.Module, name: str, layer) -> Optional[str]:
    """Why layer ``name`` of ``model`` cannot be factorised, or None: its type's reason, else a grouped or
    depthwise convolution (no full output x input kernel) or a projection MultiheadAttention reads directly."""
    why = refusal(layer, "lowrank")
    if why:
        return why
    if isinstance(layer, torch.jit.ScriptModule):
        return "low-rank needs to replace layers, which a TorchScript graph does not allow"
    if getattr(layer, "groups", 1) > 1:
        return (f"a grouped or depthwise convolution (groups={layer.groups}): each filter sees only the channels "
                "of its own group, so the kernel has no full output x input channel to factorise")
    parent = find_layer(model, name.rpartition(".")[0]) if "." in name else model
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads this projection's weight directly, so it cannot be replaced by factors"
    return None

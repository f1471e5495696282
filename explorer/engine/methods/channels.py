"""Structured pruning: remove whole channels and shrink every layer whose shape depends on them.

Removing output channel ``j`` of a layer P (a row of a Linear, a filter of a Conv) only gives a smaller
*dense* model if everything that sees channel ``j`` later shrinks with it: BatchNorm entries, depthwise
filters, and the matching input columns of the next Linear or Conv (the "consumers"). This module finds
those couplings by tracing the model with :mod:`torch.fx` and following P's output forward, op by op, with
the shapes of an example input. Where P's output is added to another layer's (a residual add: a ResNet's
block output and its shortcut), the two layers' channels are one: the other layer joins P's group as a
second producer and they lose the same channels, ranked by the norm of their rows together (a coupled group,
as in Torch-Pruning's dependency graph). Where the path meets something it cannot follow safely (an add
with the model input, a concatenation, a reshape, the model's output, an unknown op), it says so and
refuses, rather than guess.

Two verbs:

- :func:`analyze` tells, per compressible layer, whether its output channels (``filter``) or its input
  channels (``channel``) can be removed, why not, and which other modules change with it.
- :func:`prune_structured` removes channels in a deep copy of the model and returns it with a report.

References
----------
Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017.
Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import operator
import re
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.fx import Node
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_flatten

from explorer.engine.errors import CompressionError, PlanError
from explorer.engine.methods.granularities import CRITERIA
from explorer.engine.methods.prune import GRANULARITIES, removed_count
from explorer.engine.methods.saliency import SALIENCY, importance
from explorer.engine.modules import trace

__all__ = ["ChannelRanking", "StructInfo", "analyze", "channel_ranking", "layer_ranking", "merge_pairs", "prune_structured"]

#: Layers this module reports on (the explorer's compressible layers).
COMPRESSIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EMBEDDING_REASON = "embedding rows are vocabulary entries; use element pruning"

# Modules that act on every element alone: the channel dim passes through unchanged.
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Threshold, nn.Hardshrink, nn.Softshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
# Pooling modules and functions: name/class -> number of trailing (spatial) dims they pool over.
_POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.LPPool1d: 1, nn.LPPool2d: 2,
}
_POOL_FUNCS = {
    f"{kind}{n}d": n
    for n in (1, 2, 3)
    for kind in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "lp_pool")
}
# Functions and tensor methods that act elementwise (extra arguments must be scalars or broadcast
# over the channel dim).
_ELEMENTWISE_FUNCS = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "celu_", "gelu", "silu", "mish", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_",
    "hardswish", "hardsigmoid", "softplus", "softsign", "tanhshrink", "logsigmoid", "threshold",
    "threshold_", "hardshrink", "softshrink", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "abs", "neg", "exp", "square", "sqrt", "clamp", "clamp_",
    "clip", "clamp_min", "clamp_max", "contiguous", "clone", "detach", "float", "double", "half",
    "bfloat16", "to",
}
# Binary elementwise operators: fine with a scalar, a coupling with a same-shaped tensor.
_BINARY_FUNCS = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "rsub", "mul", "mul_", "imul", "truediv", "itruediv",
    "div", "div_", "floordiv", "pow", "pow_", "maximum", "minimum",
}
_ADDS = {"add", "add_", "iadd", "sub", "sub_", "isub", "rsub"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_SOFTMAXES = {"softmax", "log_softmax"}
_META_METHODS = {"size", "dim", "numel", "type", "is_contiguous", "get_device"}
_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
_CONCATS = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack"}
_SPLITS = {"chunk", "split", "tensor_split", "unbind", "split_with_sizes"}
_RESHAPES = {
    "view", "reshape", "permute", "transpose", "unflatten", "squeeze", "unsqueeze", "movedim",
    "expand", "repeat", "flatten", "view_as", "reshape_as", "t",
}
_PRODUCTS = {"matmul", "bmm", "mm", "einsum", "linear", "conv1d", "conv2d", "conv3d", "baddbmm"}


@dataclass
class StructInfo:
    """What structured pruning can do to one layer.

    Attributes
    ----------
    filter_ok : bool
        Whether output channels of the layer can be removed.
    filter_reason : str or None
        Why not, naming the op and node that prevent it; None when ``filter_ok``.
    channel_ok : bool
        Whether input channels of the layer can be removed (which removes the feeding layer's outputs).
    channel_reason : str or None
        Why not; None when ``channel_ok``.
    coupled : list of str
        Names of the other modules whose shapes change with this layer's output channels: BatchNorms,
        depthwise convolutions passed through, and the consumers whose inputs shrink; a coupled group's other
        producers come first.
    producers : list of str
        The layers that lose the same output channels as this one, itself included: those whose outputs are
        summed with its own by residual adds (a coupled group); just this layer where nothing is added, and
        empty where its output channels cannot be removed at all.
    """

    filter_ok: bool
    filter_reason: str | None
    channel_ok: bool
    channel_reason: str | None
    coupled: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    merge_ok: bool = False
    merge_reason: str | None = "only a Linear layer whose outputs feed Linear layers alone can merge neurons"


@dataclass
class _Group:
    """A producer's output channels and everything whose shape follows them."""

    producer: str  # the first of ``producers`` in the graph's order: the group's name
    channels: int
    members: dict[str, str] = field(default_factory=dict)  # name -> "batchnorm" | "depthwise" | "consumer"
    # the layers whose output channels are summed into the same tensor (residual adds): they lose the same
    # channels together; one entry where nothing is added
    producers: list = field(default_factory=list)
    joins: list = field(default_factory=list)  # producers the last walk found across an add, not yet walked
    blocks: dict[str, int] = field(default_factory=dict)  # consumer -> inputs per channel (flatten)
    issue: str | None = None
    stopped_at: set = field(default_factory=set)  # nodes where the walk gave up


@dataclass
class _Analysis:
    infos: dict[str, StructInfo]
    groups: dict[str, _Group]  # producer -> group
    feeds: dict[str, str]  # consumer -> producer of its input channels (safe groups only)
    args: tuple
    out_shapes: list | None


# ----------------------------------------------------------------------------------------------- public


def analyze(model: nn.Module, example_input) -> dict[str, StructInfo]:
    """Tell, for every compressible layer, which channels structured pruning can remove.

    Parameters
    ----------
    model : nn.Module
        The model; it is traced with :func:`torch.fx.symbolic_trace` and run once on ``example_input``
        in eval mode without gradients (its training flags are restored, its state is not changed).
    example_input : Tensor or tuple of Tensor
        Positional input(s) of ``model.forward``, used for the shapes along the way.

    Returns
    -------
    dict of str to StructInfo
        One entry per ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Embedding``, keyed by its name
        in ``model.named_modules()``.

    Notes
    -----
    A model that torch.fx cannot trace gets ``filter_ok = channel_ok = False`` everywhere, with the
    tracer's error as the reason.
    """
    return _analyze(model, example_input).infos


def prune_structured(model: nn.Module, example_input, requests: dict) -> tuple[nn.Module, dict]:
    """Remove whole channels from a copy of ``model`` and shrink every coupled layer.

    Parameters
    ----------
    model : nn.Module
        The model; it is not modified.
    example_input : Tensor or tuple of Tensor
        Positional input(s) of ``model.forward``.
    requests : dict of str to (str, float or int, str)
        ``layer -> (granularity, amount, criterion)``. ``granularity`` is ``"filter"`` (remove the layer's
        output channels, ranked by the norm of each output channel's weights, bias excluded) or
        ``"channel"`` (remove its input channels, ranked by the norm of its own input-channel weights;
        the layer feeding it loses the matching outputs). ``amount`` is a float in [0, 0.99], the fraction
        of channels removed (the count is rounded down), or an int, the count removed; at least one
        channel always stays. ``criterion`` is ``"l1"`` or ``"l2"``.

    Returns
    -------
    pruned : nn.Module
        A deep copy of ``model`` with smaller layers; its class and forward are the original's.
    report : dict
        ``layer -> {"kept": list of kept channel indices (ascending, original numbering), "removed": int,
        "granularity": str, "producer": str, "coupled": list of str}``. For a channel request the indices
        are the input channels of ``layer`` (= output channels of ``producer``), one per channel even where a
        flatten maps a channel to a block of inputs.

    Raises
    ------
    PlanError
        A malformed request (granularity, amount or criterion).
    CompressionError
        An unknown layer, a layer whose channels cannot be removed (with the reason), two requests that
        remove the same channels, or a pruned model that no longer runs on ``example_input``.
    """
    analysis = _analyze(model, example_input)
    modules = dict(model.named_modules())
    jobs = []  # (layer, granularity, group, kept)
    taken: dict[str, str] = {}
    for layer, request in requests.items():
        _known(analysis, layer)
        granularity, amount, criterion = _parse_request(layer, request)
        group = _group_removed(analysis, layer, granularity)
        if group.producer in taken:
            raise CompressionError(
                f"{taken[group.producer]} and {layer}: both requests remove output channels of "
                f"{group.producer} (one coupled group); keep only one of them"
            )
        taken[group.producer] = layer
        ranking = channel_ranking(modules[layer].weight, granularity, amount, criterion, group.channels, layer,
                                  _others(model, group, layer, granularity))
        jobs.append((layer, granularity, group, ranking))

    pruned = copy.deepcopy(model)
    report = {}
    for layer, granularity, group, ranking in jobs:
        kept = ranking.kept
        _merge_into(pruned, group, ranking.merges)
        _shrink_group(pruned, group, kept)
        report[layer] = {
            "kept": kept,
            "removed": group.channels - len(kept),
            "granularity": granularity,
            "producer": group.producer,
            "coupled": _coupled_names(group, layer),
        }
        if ranking.merges:
            report[layer]["merged"] = [list(m) for m in ranking.merges]
    if jobs:
        _check_runs(pruned, analysis, [job[0] for job in jobs])
    return pruned, report


@dataclass
class ChannelRanking:
    """Which whole channels of one layer structured pruning removes, and why: their norms.

    Attributes
    ----------
    granularity : str
        ``"filter"`` (output channels) or ``"channel"`` (input channels).
    criterion : str
        ``"l1"`` or ``"l2"``: the norm the channels are ranked by.
    norms : ndarray of float64
        One norm per channel, in channel order.
    order : ndarray of int64
        The channel indices by ascending norm (what a sorted plot draws left to right).
    removed : ndarray of bool
        Per channel, whether it is removed: the ``n - keep`` smallest norms (ties: the later channel goes).
    """

    granularity: str
    criterion: str
    norms: np.ndarray
    order: np.ndarray
    removed: np.ndarray
    merges: tuple = ()  # "merge": (removed, into) per merged neuron, in the order they were merged

    @property
    def kept(self) -> list:
        """Indices of the channels kept, ascending."""
        return [int(i) for i in np.flatnonzero(~self.removed)]

    @property
    def cut(self):
        """The norm of the smallest kept channel (the channels below it go); None when none goes."""
        if not self.removed.any():
            return None
        return float(self.norms[~self.removed].min())


def channel_ranking(weight: torch.Tensor, granularity: str, amount, criterion: str = "l1",
                    channels: int | None = None, layer: str = "layer", coupled: tuple = ()) -> ChannelRanking:
    """Rank the channels of ``weight`` as :func:`prune_structured` does and mark the ones ``amount`` removes.

    Parameters
    ----------
    weight : Tensor
        The layer's weight, ``(out, in, ...)``.
    granularity : str
        ``"filter"`` ranks output channels (rows), ``"channel"`` input channels.
    amount : float or int
        As in :func:`prune_structured` (fraction or count of channels removed; one always stays).
    criterion : str
        ``"l1"`` or ``"l2"``.
    channels : int, optional
        The number of input channels where a flatten maps each to a block of ``in`` (the producer's output
        channels); by default ``weight.shape[1]``. Ignored for ``"filter"``.
    layer : str
        The layer's name, for error messages.
    coupled : tuple of Tensor
        For ``"filter"``: the weights of the other layers that lose the same output channels (the producers of
        a coupled group, whose outputs are summed by residual adds); each channel is ranked by the norm of its
        rows in all of them together (l1: the sum; l2: the root of the summed squares).

    Returns
    -------
    ChannelRanking
        The same selection :func:`prune_structured` makes: ``ranking.kept`` is its report's ``"kept"``.
    """
    granularity, amount, criterion = _parse_request(layer, (granularity, amount, criterion))
    if granularity == "merge":
        n = int(weight.shape[0])
        saliency, removed, merges = merge_pairs(weight, coupled, removed_count(amount, n, f"layer '{layer}'", "neurons"))
        order = np.argsort(saliency, kind="stable")
        return ChannelRanking(granularity, criterion, saliency, order.astype(np.int64), removed, tuple(merges))
    ranked, how = weight, criterion
    if criterion in SALIENCY:  # each channel by the sum of its weights' saliencies (and its coupled rows')
        ranked = importance(weight, criterion, layer)
        coupled = tuple(importance(c, criterion, layer) for c in coupled)
        how = "l1"
    if granularity == "filter":
        n = int(weight.shape[0])
        scores = _filter_scores(ranked, how, coupled)
    else:
        n = int(channels if channels is not None else weight.shape[1])
        scores = _channel_scores(ranked, n, how)
    removed_n = removed_count(amount, n, f"layer '{layer}'", "channels")
    removed = np.ones(n, dtype=bool)
    removed[_keep_largest(scores, n - removed_n)] = False
    norms = scores.cpu().numpy()
    order = np.argsort(norms, kind="stable")
    return ChannelRanking(granularity, criterion, norms, order.astype(np.int64), removed)


def layer_ranking(model: nn.Module, example_input, layer: str, granularity: str, amount,
                  criterion: str = "l1") -> ChannelRanking:
    """:func:`channel_ranking` of ``model``'s layer ``layer``, its channels counted as :func:`prune_structured`
    counts them (an input channel fed through a flatten is its block of inputs). Raises CompressionError
    when the layer's channels cannot be removed (with the reason)."""
    analysis = _analyze(model, example_input)
    _known(analysis, layer)
    group = _group_removed(analysis, layer, granularity)
    return channel_ranking(model.get_submodule(layer).weight, granularity, amount, criterion, group.channels, layer,
                           _others(model, group, layer, granularity))


def _others(model, group, layer, granularity):
    """The weights of the group's other producers, whose rows count in a filter's norm; for a merge, the
    consumers' (their columns are the merged neurons' outgoing weights)."""
    if granularity == "merge":
        return tuple(model.get_submodule(m).weight for m, kind in group.members.items() if kind == "consumer")
    if granularity != "filter":
        return ()
    return tuple(model.get_submodule(p).weight for p in group.producers if p != layer)


def _known(analysis, layer: str) -> None:
    if layer not in analysis.infos:
        raise CompressionError(f"{layer}: not a compressible layer of this model (Linear, Conv1d, Conv2d or Embedding)")


def _group_removed(analysis, layer: str, granularity: str):
    """The coupled group whose channels a ``granularity`` request on ``layer`` removes: the layer's own output
    channels (filter) or its producer's (channel); CompressionError with the reason where they cannot go."""
    info = analysis.infos[layer]
    if granularity == "merge":
        if not info.merge_ok:
            raise CompressionError(f"{layer}: cannot merge neurons: {info.merge_reason}")
        return analysis.groups[layer]
    if granularity == "filter":
        if not info.filter_ok:
            raise CompressionError(f"{layer}: cannot remove output channels: {info.filter_reason}")
        return analysis.groups[layer]
    if not info.channel_ok:
        raise CompressionError(f"{layer}: cannot remove input channels: {info.channel_reason}")
    return analysis.groups[analysis.feeds[layer]]


# ------------------------------------------------------------------------------------- request checks


def _parse_request(layer, request):
    if not isinstance(request, (tuple, list)) or len(request) != 3:
        raise PlanError(f"{layer}: a structured request is (granularity, amount, criterion), got {request!r}")
    granularity, amount, criterion = request
    if not isinstance(granularity, str) or granularity not in GRANULARITIES or not GRANULARITIES[granularity].structured:
        names = " or ".join(repr(g.name) for g in GRANULARITIES.values() if g.structured)
        raise PlanError(f"{layer}: granularity must be {names}, got {granularity!r}")
    if criterion not in CRITERIA:
        raise PlanError(f"{layer}: criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    return granularity, amount, criterion


def _filter_scores(weight, criterion, coupled=()):
    w = torch.cat([t.detach().to(torch.float64).flatten(1) for t in (weight, *coupled)], dim=1)
    return w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1).sqrt()


def _channel_scores(weight, channels, criterion):
    # weight is (out, in, ...) with in = channels * block: group each channel's block of columns.
    w = weight.detach().to(torch.float64).transpose(0, 1).reshape(channels, -1)
    return w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1).sqrt()


def _keep_largest(scores, keep):
    order = torch.argsort(scores, descending=True, stable=True)[:keep]
    return sorted(int(i) for i in order)


MERGE_MAX = 4096  # neurons a merge compares pairwise at most (their n x n distances are held at once)


def _merge_issue(name, group, modules):
    """Why layer ``name``'s neurons cannot be merged (None: they can): its outputs must reach Linear layers
    alone, whole (no BatchNorm, depthwise convolution, residual add or flatten between), so that the merged
    neuron's outgoing weights can carry the removed one's."""
    if not isinstance(modules[name], nn.Linear):
        return "only a Linear layer's neurons are merged (their incoming weights are its rows)"
    if len(group.producers) > 1:
        return f"its outputs are added to {', '.join(p for p in group.producers if p != name)}'s (a residual add)"
    other = next((m for m, kind in group.members.items() if kind != "consumer"), None)
    if other is not None:
        return f"{other} ({group.members[other]}) lies between it and the layers it feeds"
    odd = next((m for m in group.members if not isinstance(modules[m], nn.Linear) or group.blocks.get(m, 1) != 1),
               None)
    if odd is not None:
        return f"{odd} reads its outputs other than as a Linear layer's inputs"
    if _out_channels(modules[name]) > MERGE_MAX:
        return f"it has more than {MERGE_MAX} neurons to compare pairwise"
    return None


def merge_pairs(weight: torch.Tensor, consumers=(), count: int = 0) -> tuple:
    """Data-free neuron merging (Srinivas & Babu 2015): ``count`` times, the neuron ``j`` whose saliency
    ``s_j = ||a_j||^2 * min_i ||W_i - W_j||^2`` is smallest is removed and its outgoing weights ``a_j`` (its
    columns in ``consumers``' weights) are added to its nearest twin ``i``'s; ``a_i`` grows accordingly.

    Returns ``(saliency per neuron, removed mask, merges)``: the saliency at which each neuron was merged
    (the kept ones: their saliency after the last merge), and ``(j, i)`` per merge in order."""
    w = weight.detach().to(torch.float64).flatten(1)
    n = int(w.shape[0])
    outgoing = [c.detach().to(torch.float64).t() for c in consumers]
    a = torch.cat(outgoing, dim=1) if outgoing else torch.ones(n, 1, dtype=torch.float64)
    sq = (w * w).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * (w @ w.t())).clamp_min_(0.0)
    dist.fill_diagonal_(float("inf"))
    a2 = (a * a).sum(1)
    best = dist.argmin(1)
    saliency = a2 * dist[torch.arange(n), best]
    alive = torch.ones(n, dtype=torch.bool)
    merges = []
    for _ in range(min(count, n - 1)):
        j = int(torch.where(alive, saliency, torch.full_like(saliency, float("inf"))).argmin())
        i = int(best[j])
        merges.append((j, i))
        alive[j] = False
        dist[:, j] = float("inf")
        a[i] += a[j]
        a2[i] = float((a[i] * a[i]).sum())
        for r in torch.nonzero(alive & (best == j)).reshape(-1).tolist() + [i]:  # their twin went, or a_i grew
            best[r] = dist[r].argmin()
            saliency[r] = a2[r] * dist[r, best[r]]
    return saliency.numpy().copy(), (~alive).numpy(), merges


def _merge_into(model, group, merges) -> None:
    """Add each merged neuron's outgoing weights to its twin's, in the consumers of ``model`` (before the
    merged neurons' columns are removed)."""
    if not merges:
        return
    for name, kind in group.members.items():
        mod = model.get_submodule(name)
        w = mod.weight.detach().clone()
        for j, i in merges:
            w[:, i] += w[:, j]
        mod.weight = _param(w, mod.weight)


# ------------------------------------------------------------------------------------------- shrinking


def _param(tensor, like):
    return nn.Parameter(tensor.clone(), requires_grad=like.requires_grad)


def _shrink_group(model, group, kept):
    idx = torch.tensor(kept, dtype=torch.long)
    for name in group.producers:
        producer = model.get_submodule(name)
        _take_rows(producer, idx)
        if isinstance(producer, nn.Linear):
            producer.out_features = len(kept)
        else:
            producer.out_channels = len(kept)
    for name, kind in group.members.items():
        mod = model.get_submodule(name)
        if kind == "batchnorm":
            if mod.weight is not None:
                mod.weight = _param(mod.weight.detach()[idx.to(mod.weight.device)], mod.weight)
                mod.bias = _param(mod.bias.detach()[idx.to(mod.bias.device)], mod.bias)
            for buf in ("running_mean", "running_var"):
                value = getattr(mod, buf)
                if value is not None:
                    setattr(mod, buf, value[idx.to(value.device)].clone())
            mod.num_features = len(kept)
        elif kind == "depthwise":
            _take_rows(mod, idx)
            mod.in_channels = mod.out_channels = mod.groups = len(kept)
        else:
            block = group.blocks[name]
            cols = torch.tensor([j * block + t for j in kept for t in range(block)], dtype=torch.long)
            w = mod.weight.detach()
            mod.weight = _param(w[:, cols.to(w.device)], mod.weight)
            if isinstance(mod, nn.Linear):
                mod.in_features = len(cols)
            else:
                mod.in_channels = len(cols)


def _take_rows(mod, idx):
    w = mod.weight.detach()
    mod.weight = _param(w[idx.to(w.device)], mod.weight)
    if mod.bias is not None:
        mod.bias = _param(mod.bias.detach()[idx.to(w.device)], mod.bias)


def _check_runs(pruned, analysis, layers):
    """Run the pruned copy once: a model whose forward hard-codes a size fails here, not later."""
    flags = [(m, m.training) for m in pruned.modules()]
    pruned.eval()
    try:
        with torch.no_grad():
            out = pruned(*analysis.args)
    except Exception as err:  # noqa: BLE001 - any failure means the pruning broke the model
        raise CompressionError(
            f"{', '.join(layers)}: the pruned model no longer runs on the example input ({_short(err)})"
        ) from err
    finally:
        for m, training in flags:
            m.training = training
    shapes = [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if analysis.out_shapes is not None and shapes != analysis.out_shapes:
        raise CompressionError(
            f"{', '.join(layers)}: pruning changed the model's output shape "
            f"from {analysis.out_shapes} to {shapes}"
        )


# -------------------------------------------------------------------------------------------- analysis


def _short(err):
    while err.__cause__ is not None:  # ShapeProp wraps the real error
        err = err.__cause__
    text = str(err).strip().splitlines()
    text = text[0] if text else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _as_args(example_input):
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _all_blocked(names, modules, reason):
    infos = {}
    for name in names:
        if isinstance(modules[name], nn.Embedding):
            infos[name] = StructInfo(False, _EMBEDDING_REASON, False, _EMBEDDING_REASON, [])
        else:
            infos[name] = StructInfo(False, reason, False, reason, [])
    return infos


#: model -> ((its structure, the example's shapes), its analysis): a model is traced once, at the first ask
#: (``inspect_model``, when it is opened) — torch.fx patches ``nn.Module.__call__`` and ``__getattr__`` for
#: the whole process while it traces, so a trace beside another thread's use of the same model hands that
#: thread proxies for its weights (found by benchmarks/soak.py: the window's preview, built while a
#: structured plan's compression traced). Traces are serialized by :data:`TRACE_LOCK`.
ANALYSES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
TRACE_LOCK = threading.Lock()


def _stamp(model, example_input) -> tuple:
    structure = tuple((n, type(m).__qualname__,
                       tuple((k, tuple(p.shape)) for k, p in m.named_parameters(recurse=False)))
                      for n, m in model.named_modules())
    shapes = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else repr(a)
                   for a in _as_args(example_input))
    return structure, shapes


def _analyze(model, example_input) -> _Analysis:
    """The model's channel couplings, from the cache while the model's structure and the example's shapes
    are the ones it was traced with."""
    stamp = _stamp(model, example_input)
    with TRACE_LOCK:
        known = ANALYSES.get(model)
        if known is not None and known[0] == stamp:
            return known[1]
        analysis = _trace_and_analyze(model, example_input)
        ANALYSES[model] = (stamp, analysis)
        return analysis


def _trace_and_analyze(model, example_input) -> _Analysis:
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, COMPRESSIBLE)]
    args = _as_args(example_input)
    try:
        gm = trace(model)
    except Exception as err:  # noqa: BLE001 - tracing fails in many ways; all mean "cannot trace"
        reason = f"model cannot be traced by torch.fx: {_short(err)}"
        return _Analysis(_all_blocked(names, modules, reason), {}, {}, args, None)
    flags = [(m, m.training) for m in model.modules()]
    try:
        gm.eval()
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
            out = ShapeProp(gm).propagate(*args)
    except Exception as err:  # noqa: BLE001
        reason = f"the example input does not run through the traced model: {_short(err)}"
        return _Analysis(_all_blocked(names, modules, reason), {}, {}, args, None)
    finally:
        for m, training in flags:
            m.training = training
    out_shapes = [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]

    nodes = list(gm.graph.nodes)
    calls: dict[str, list[Node]] = {}
    read_directly: dict[str, Node] = {}
    for node in nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
        elif node.op == "get_attr" and "." in node.target:
            read_directly.setdefault(node.target.rsplit(".", 1)[0], node)
    sharing = _shared_parameters(model)

    def member_issue(name):
        count = len(calls.get(name, ()))
        if count != 1:
            return f"{name} is called {count} times in forward; all calls would have to shrink together"
        if name in sharing:
            return f"{name} shares parameters with {sharing[name]}"
        if name in read_directly:
            return f"the parameters of {name} are also read directly ({_where(read_directly[name])})"
        mod = modules[name]
        if hasattr(mod, "weight_orig") or hasattr(mod, "parametrizations"):
            return f"{name} carries a pruning mask or parametrization; make it permanent first"
        return None

    groups: dict[str, _Group] = {}  # every producer -> its group (one object for a coupled group's producers)
    for name in names:
        mod = modules[name]
        if name not in groups and _is_producer(mod) and len(calls.get(name, ())) == 1:
            group = _coupled_walk(nodes, name, calls, modules)
            issue = None
            for member in (*group.producers, *group.members):
                issue = issue or member_issue(member)
            if issue is not None:
                group.issue = issue
            elif group.issue is None and not group.blocks:
                group.issue = "its output channels reach no layer that could shrink with them"
            for producer in group.producers:
                groups[producer] = group

    feeds = {}
    infos = {}
    for name in names:
        mod = modules[name]
        coupled = _coupled_names(groups[name], name) if name in groups else []
        not_called = _not_called_reason(name, calls, modules)
        if isinstance(mod, nn.Embedding):
            infos[name] = StructInfo(False, _EMBEDDING_REASON, False, _EMBEDDING_REASON, [])
            continue
        if not_called is not None:
            infos[name] = StructInfo(False, not_called, False, not_called, [])
            continue
        if len(calls[name]) > 1:
            reason = f"it is called {len(calls[name])} times in forward; all calls would have to shrink together"
            infos[name] = StructInfo(False, reason, False, reason, [])
            continue
        if not _is_producer(mod):
            reason = _grouped_reason(name, mod, groups)
            infos[name] = StructInfo(False, reason, False, reason, [])
            continue
        group = groups[name]
        channel_ok, channel_reason = _channel_verdict(name, calls[name][0], groups, modules)
        if channel_ok:
            feeds[name] = next(g.producer for g in groups.values() if name in g.blocks)
        merge_reason = group.issue or _merge_issue(name, group, modules)
        infos[name] = StructInfo(group.issue is None, group.issue, channel_ok, channel_reason, coupled,
                                 list(group.producers) if group.issue is None else [], merge_reason is None,
                                 merge_reason)
    return _Analysis(infos, groups, feeds, args, out_shapes)


def _shared_parameters(model):
    """module name -> another module holding one of the same parameter tensors."""
    owners: dict[int, list[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), [])
            if mod_name not in owners[id(p)]:
                owners[id(p)].append(mod_name)
    shared = {}
    for holders in owners.values():
        for holder in holders:
            others = [h for h in holders if h != holder]
            if others:
                shared.setdefault(holder, others[0])
    return shared


def _is_producer(mod):
    return isinstance(mod, nn.Linear) or (isinstance(mod, _CONVS) and mod.groups == 1)


def _is_depthwise(mod):
    return isinstance(mod, _CONVS) and 1 < mod.groups == mod.in_channels == mod.out_channels


def _not_called_reason(name, calls, modules):
    if name in calls:
        return None
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if parent in calls:
            kind = type(modules[parent]).__name__
            return f"it runs inside {parent} ({kind}), which the tracer treats as one operation"
    return "it is not called as a module in forward"


def _grouped_reason(name, mod, groups):
    if _is_depthwise(mod):
        feeder = next((g.producer for g in groups.values() if name in g.members), None)
        where = f" ({feeder})" if feeder else ""
        return (f"depthwise convolution: its channels are those of its input; prune the layer that "
                f"feeds it{where} instead")
    return (f"grouped convolution (groups={mod.groups}): its channels form groups that cannot shrink "
            f"unevenly")


def _channel_verdict(name, call, groups, modules):
    feeding = list({id(g): g for g in groups.values() if name in g.blocks or call in g.stopped_at}.values())
    if len(feeding) > 1:
        producers = ", ".join(g.producer for g in feeding)
        return False, f"its input channels come from several layers ({producers})"
    if feeding:
        group = feeding[0]
        if group.issue is None:
            return True, None
        return False, (f"its input channels are the output channels of {group.producer}, which cannot be "
                       f"removed: {group.issue}")
    source = call.args[0] if call.args else None
    while isinstance(source, Node) and _is_transparent(source, modules):
        source = next(a for a in _node_inputs(source))
    if isinstance(source, Node) and source.op == "placeholder":
        return False, "its input is the model input"
    if isinstance(source, Node):
        return False, (f"its input comes from {_opname(source, modules)} ({_where(source)}), not from the "
                       f"output channels of a single prunable layer")
    return False, "its input is not a traced tensor"


def _is_transparent(node, modules):
    """Single-input ops that keep channels, walked through backwards to find where an input comes from."""
    if len(list(_node_inputs(node))) != 1:
        return False
    if node.op == "call_module":
        mod = modules[node.target]
        return isinstance(mod, (*_ELEMENTWISE_MODULES, *_POOL_MODULES, nn.Flatten, nn.modules.batchnorm._BatchNorm)) \
            or _is_depthwise(mod)
    if node.op in ("call_function", "call_method"):
        name = _fname(node)
        return name in _ELEMENTWISE_FUNCS or name in _POOL_FUNCS or name == "flatten"
    return False


# ------------------------------------------------------------------------------------------- the walk


def _coupled_walk(nodes, name, calls, modules) -> _Group:
    """The group of ``name``'s output channels, grown across residual adds: where they are added to the
    output of other layers (a ResNet's block output and its shortcut), those layers join as producers and the
    walk starts again from all of them, until no add brings a new one (Torch-Pruning's dependency groups)."""
    producers = [name]
    while True:
        group = _walk(nodes, producers, calls, modules)
        new = [p for p in group.joins if p not in producers]
        if group.issue is not None or not new:
            return group
        producers.extend(new)


def _out_channels(mod):
    return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels


def _channel_dim(mod):
    return -1 if isinstance(mod, nn.Linear) else -(mod.weight.dim() - 1)


def _coupled_names(group, name):
    """Everything but ``name`` whose shape changes with the group's channels: the other producers first."""
    return list(dict.fromkeys([p for p in group.producers if p != name] + list(group.members)))


def _walk(nodes, producers, calls, modules) -> _Group:
    """Follow the output channels of ``producers`` forward through the graph (which is in topological order).

    A carrier is a node whose output holds the group's channels; its state is (dim, block): the channel
    dim counted from the end (negative) and how many consecutive entries each channel spans there (> 1 after
    a flatten).
    """
    order = {node: i for i, node in enumerate(nodes)}
    producers = sorted(producers, key=lambda p: order[calls[p][0]])
    channels = _out_channels(modules[producers[0]])
    group = _Group(producers[0], channels, producers=list(producers))
    starts = {calls[p][0]: (_channel_dim(modules[p]), 1) for p in producers}
    carriers = dict(starts)
    for node in nodes[order[calls[producers[0]][0]] + 1:]:
        inputs = [a for a in _node_inputs(node) if a in carriers]
        if not inputs:
            continue
        states = {carriers[a] for a in inputs}
        if len(states) > 1:
            verdict = ("stop", f"output channels meet themselves in different layouts at {_opname(node, modules)} "
                               f"({_where(node)})")
        elif node.op == "output":
            verdict = ("stop", "its output is the model's output" if any(a in starts for a in inputs)
                       else f"its output channels reach the model's output (through {_where(inputs[0])})")
        else:
            verdict = _step(node, inputs, carriers, states.pop(), channels, modules)
        kind = verdict[0]
        if node in starts and kind != "stop":  # y = x + f(x): f reads the channels it writes (rows and columns)
            kind = "member" if kind == "member" and verdict[2] == "consumer" else "stop"
            verdict = verdict if kind == "member" else ("stop", f"{node.target} reads the channels it writes")
        if kind == "stop":
            group.stopped_at.add(node)
            if group.issue is None:
                group.issue = verdict[1]
        elif kind == "pass":
            carriers[node] = verdict[1]
        elif kind == "join":  # an add with another layer's output: that layer's channels are these channels
            sources, why = _sources(verdict[1], calls, modules, channels)
            if why is not None:
                group.stopped_at.add(node)
                group.issue = group.issue or (f"output channels meet a residual {verdict[2]} ({_where(node)}) "
                                              f"with {why}; they can only be removed together")
            else:
                group.joins.extend(p for p in sources if p not in group.joins and p not in group.producers)
                carriers[node] = verdict[3]
        elif kind == "member":
            _, member, role, state = verdict
            group.members[member] = role
            if role == "consumer":
                group.blocks[member] = state
            if role != "consumer" or node in starts:
                carriers[node] = starts.get(node, state)
        # kind == "ignore": metadata such as x.shape; nothing flows on
    return group


def _sources(node, calls, modules, channels):
    """The layers whose output channels reach ``node`` unchanged (through channel-keeping ops and adds):
    ``(names, None)``, or ``(None, why)`` where something else contributes. Only a guess at the layout: the
    walk from the layers found checks every step forward."""
    found, seen, stack = [], set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and _is_producer(modules[n.target]):
            mod = modules[n.target]
            if len(calls.get(n.target, ())) != 1:
                return None, f"{n.target}, which is called {len(calls[n.target])} times in forward"
            if _out_channels(mod) != channels:
                return None, f"{n.target}, which has {_out_channels(mod)} output channels, not {channels}"
            found.append(n.target)
        elif _is_transparent(n, modules):
            stack.extend(_node_inputs(n))
        elif n.op in ("call_function", "call_method") and _fname(n) in _ADDS:
            stack.extend(a for a in _node_inputs(n) if _shape(a) is not None)
        elif n.op == "placeholder":
            return None, "the model input"
        else:
            return None, f"a tensor no single prunable layer makes ({_opname(n, modules)}, {_where(n)})"
    return found, None


def _node_inputs(node):
    seen = []
    for a in tree_flatten((node.args, node.kwargs))[0]:
        if isinstance(a, Node) and a not in seen:
            seen.append(a)
    return seen


def _fname(node):
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return None


def _opname(node, modules):
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "placeholder":
        return "the model input"
    if node.op == "get_attr":
        return "a stored tensor"
    return _fname(node)


def _where(node):
    """A readable place for a node: a module name, or the enclosing module's name plus the node's name."""
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        key, value = list(stack.items())[-1]
        path = value[0] if isinstance(value, tuple) and value and isinstance(value[0], str) else key
        path = re.sub(r"@\d+$", "", path)
        if path:
            return f"{path}.{node.name}"
    return node.name


def _shape(node):
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _arg(node, index, key, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _step(node, inputs, carriers, state, channels, modules):
    """Decide what ``node`` does to the channels that reach it in ``state``."""
    dim, block = state
    where = _where(node)
    cannot = ("stop", f"output channels reach {_opname(node, modules)} ({where}), which structured pruning "
                      f"cannot follow")
    out_shape = _shape(node)
    first = node.args[0] if node.args else None

    if node.op == "call_module":
        mod = modules[node.target]
        if not isinstance(first, Node) or first not in carriers or len(inputs) > 1:
            return cannot
        if isinstance(mod, nn.Linear) or (isinstance(mod, _CONVS) and mod.groups == 1):
            want = -1 if isinstance(mod, nn.Linear) else -(mod.weight.dim() - 1)
            shape = _shape(first)
            if dim != want or shape is None or shape[dim] != channels * block:
                return ("stop", f"output channels enter {node.target} along a dim other than its input "
                                f"channels")
            return ("member", node.target, "consumer", block)
        if _is_depthwise(mod):
            if dim != -(mod.weight.dim() - 1) or block != 1:
                return ("stop", f"output channels enter depthwise {node.target} along a dim other than its "
                                f"channels")
            return _checked(("member", node.target, "depthwise", state), out_shape, channels, where)
        if isinstance(mod, _CONVS):
            return ("stop", f"output channels reach grouped convolution {node.target} (groups={mod.groups}), "
                            f"whose channel groups cannot shrink unevenly")
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            shape = _shape(first)
            if shape is None or len(shape) + dim != 1 or block != 1:
                return ("stop", f"output channels reach BatchNorm {node.target} along a dim other than its "
                                f"channels")
            return _checked(("member", node.target, "batchnorm", state), out_shape, channels, where)
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters != 1:
                return ("stop", f"output channels reach PReLU {node.target}, which has one weight per channel")
            return _checked(("pass", state), out_shape, channels, where)
        if isinstance(mod, _ELEMENTWISE_MODULES):
            return _checked(("pass", state), out_shape, channels, where)
        if isinstance(mod, tuple(_POOL_MODULES)):
            if getattr(mod, "return_indices", False):
                return cannot
            return _checked(_pool(state, _POOL_MODULES[type(mod)], where), out_shape, channels, where)
        if isinstance(mod, nn.Flatten):
            return _checked(_flatten(_shape(first), state, mod.start_dim, mod.end_dim, where),
                            out_shape, channels, where)
        if isinstance(mod, nn.LayerNorm):
            if dim >= -len(mod.normalized_shape):
                return ("stop", f"output channels reach LayerNorm {node.target}, which normalizes over the "
                                f"channel dim")
            return _checked(("pass", state), out_shape, channels, where)
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            return _checked(_softmax(_shape(first), state, mod.dim, node, modules), out_shape, channels, where)
        return cannot

    if node.op not in ("call_function", "call_method"):
        return cannot
    name = _fname(node)
    if name == "getattr" and len(node.args) > 1 and node.args[1] in _META_ATTRS:
        return ("ignore",)
    if node.op == "call_method" and name in _META_METHODS:
        return ("ignore",)
    if node.op == "call_function" and not _from_torch(node.target):
        return cannot
    if name in _BINARY_FUNCS or name in _ELEMENTWISE_FUNCS:
        return _elementwise(node, name, carriers, state, out_shape, channels, where)
    if name in _CONCATS:
        return ("stop", f"output channels are concatenated ({where}) with other tensors; they can only be "
                        f"removed together")
    if name == "getitem":
        return ("stop", f"output channels are indexed ({where})")
    if name in _SPLITS:
        return ("stop", f"output channels are split by {name} ({where})")
    if name in _PRODUCTS:
        return ("stop", f"output channels enter a matrix product {name} ({where})")
    if not isinstance(first, Node) or first not in carriers or len(inputs) > 1:
        return cannot
    if name in _POOL_FUNCS:
        return _checked(_pool(state, _POOL_FUNCS[name], where), out_shape, channels, where)
    if name in _SOFTMAXES:
        return _checked(_softmax(_shape(first), state, _arg(node, 1, "dim"), node, modules),
                        out_shape, channels, where)
    if name in _REDUCTIONS:
        return _checked(_reduce(node, _shape(first), state, where), out_shape, channels, where)
    if name == "flatten":
        return _checked(_flatten(_shape(first), state, _arg(node, 1, "start_dim", 0),
                                 _arg(node, 2, "end_dim", -1), where), out_shape, channels, where)
    if name in ("view", "reshape"):
        return _checked(_view(node, _shape(first), out_shape, state, where), out_shape, channels, where)
    if name in _RESHAPES:
        return ("stop", f"output channels are reshaped by {name} ({where})")
    return cannot


def _elementwise(node, name, carriers, state, out_shape, channels, where):
    """An elementwise op: the channels pass, or (an add with another layer's output) that layer joins."""
    passed = _checked(("pass", state), out_shape, channels, where)
    clash = _clash(node, carriers, state[0], out_shape)
    if clash is None or passed[0] != "pass":
        return passed
    if name in _ADDS:
        return ("join", clash, name.strip("_i") if name != "rsub" else "sub", state)
    return ("stop", f"output channels are combined by {name} ({where}) with another tensor of the same "
                    f"channels; they can only be removed together")


def _from_torch(target):
    if target in (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
                  operator.pow, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                  operator.getitem, operator.matmul, getattr):
        return True
    module = getattr(target, "__module__", None) or ""
    return module == "torch" or module.startswith("torch.")


def _clash(node, carriers, dim, out_shape):
    """A non-carrier tensor argument that has the channels' size along their dim (so it would not shrink)."""
    if out_shape is None:
        return None  # _checked refuses a non-tensor result
    for a in _node_inputs(node):
        if a in carriers:
            continue
        shape = _shape(a)
        if shape is None:
            continue  # a Python number computed in the graph
        pos = len(shape) + dim
        if pos >= 0 and shape[pos] != 1:
            return a
    return None


def _checked(verdict, out_shape, channels, where):
    """Confirm that the channels sit where the state says, with the size it implies."""
    if verdict[0] not in ("pass", "member"):
        return verdict
    dim, block = verdict[-1]
    if out_shape is None or len(out_shape) < -dim or out_shape[dim] != channels * block:
        return ("stop", f"output channels lose their layout at {where}")
    return verdict


def _pool(state, spatial, where):
    if state[0] >= -spatial:
        return ("stop", f"output channels are pooled over ({where})")
    return ("pass", state)


def _softmax(shape, state, dim, node, modules):
    if shape is None or dim is None:
        return ("stop", f"output channels reach {_opname(node, modules)} ({_where(node)}) without a known dim")
    n = len(shape)
    if dim % n == n + state[0]:
        return ("stop", f"output channels are mixed by {_opname(node, modules)} ({_where(node)}) over the "
                        f"channel dim")
    return ("pass", state)


def _reduce(node, shape, state, where):
    dims = _arg(node, 1, "dim")
    keepdim = _arg(node, 2, "keepdim", False)
    if shape is None or dims is None or not isinstance(keepdim, bool):
        return ("stop", f"output channels are reduced by {_fname(node)} ({where})")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return ("stop", f"output channels are reduced by {_fname(node)} ({where})")
    n = len(shape)
    c = n + state[0]
    dims = {d % n for d in dims}
    if c in dims:
        return ("stop", f"output channels are reduced by {_fname(node)} ({where}) over the channel dim")
    if keepdim:
        return ("pass", state)
    c2 = c - sum(d < c for d in dims)
    return ("pass", (c2 - (n - len(dims)), state[1]))


def _flatten(shape, state, start, end, where):
    """Channels through flatten(start, end): unchanged, shifted, or spread over blocks (start at them)."""
    if shape is None or not isinstance(start, int) or not isinstance(end, int):
        return ("stop", f"output channels are flattened ({where}) in an unknown way")
    n = len(shape)
    if n == 0:
        return ("pass", state)
    start, end = start % n, end % n
    dim, block = state
    c = n + dim
    if end <= start:
        return ("pass", state)
    n2 = n - (end - start)
    if end < c:
        return ("pass", (c - (end - start) - n2, block))
    if start > c:
        return ("pass", (c - n2, block))
    if start == c:
        return ("pass", (c - n2, block * math.prod(shape[c + 1:end + 1])))
    return ("stop", f"output channels are flattened together with the dims before them ({where})")


def _view(node, in_shape, out_shape, state, where):
    """A view/reshape that is a flatten (with -1 where the channels land) is followed like one."""
    reshaped = ("stop", f"output channels are reshaped by {_fname(node)} ({where})")
    if in_shape is None or out_shape is None:
        return reshaped
    sizes = list(node.args[1:]) if node.op == "call_method" else [_arg(node, 1, "shape")]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    if len(sizes) != len(out_shape):
        return reshaped
    n = len(in_shape)
    for start in range(n):
        for end in range(start, n):
            merged = list(in_shape[:start]) + [math.prod(in_shape[start:end + 1])] + list(in_shape[end + 1:])
            if merged != list(out_shape):
                continue
            verdict = _flatten(in_shape, state, start, end, where)
            if verdict[0] == "pass" and sizes[len(out_shape) + verdict[1][0]] == -1:
                return verdict
    return ("stop", f"output channels are reshaped by {_fname(node)} ({where}); only a flatten with -1 "
                    f"where the channels land can be followed")

"""The concepts seen on one layer, each computed from the engine's own results for it (the same mask, codes
and storage the file gets): which weights each pruning granularity removes, how a sparse row is stored,
the quantization error against bits per k-means init, the entropy coding of its streams and the spectrum a
low-rank factorization cuts. Each function returns a dataclass; its ``explain()`` quotes its numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from explorer.engine.errors import CompressionError, PlanError
from explorer.engine.layers import WeightSlot, find_layer, weight_key
from explorer.engine.compress import channel_requests, compress_weight
from explorer.engine.measure.metrics import compressible_layers, layer_macs
from explorer.engine.methods.channels import layer_ranking, prune_structured
from explorer.engine.methods.inits import BUILTIN
from explorer.engine.methods.lowrank import break_even_rank, choose_rank, factor_macs, factorize, lowrank_params
from explorer.engine.methods.lowrank import resolve_method, tt_unfoldings
from explorer.engine.methods.saliency import element_mask
from explorer.engine.methods.quantize import (quantize_binary, quantize_half, quantize_kmeans, quantize_ternary,
                                              quantize_uniform)
from explorer.engine.methods.quantizers import QUANTIZERS
from explorer.engine.methods.granularities import GRANULARITIES
from explorer.engine.plan import LayerSettings
from explorer.engine.progress import ProgressFn, report
from explorer.engine.storage.coders import stream_bits
from explorer.engine.storage.coding import entropy_bits, gap_histograms_of_mask, gap_stream, huffman_code_lengths
from explorer.engine.storage.size import GAP_BITS

STRUCTURED = tuple(g for g, v in GRANULARITIES.items() if v.structured)
IMAGE_MAX = (160, 400)  # rows, columns of a drawn weight matrix (block means beyond)
ILLUSTRATION_AMOUNT = 0.5  # what the granularity view removes when the plan prunes nothing there
ROW_ENTRIES = 40  # (gap, value) entries of one row drawn at most
QUANT_SAMPLE = 1 << 14  # survivors the error-against-bits curves are computed on at most (every k-th)
QUANT_BITS = tuple(range(1, 9))
QUANT_ITER = 30


def _matrix(w: torch.Tensor) -> np.ndarray:
    """A weight as the matrix it is drawn as: one row per output channel (or embedding row)."""
    return w.detach().reshape(w.shape[0], -1).to(torch.float32).cpu().numpy()


def _edges(n: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, n, min(n, most) + 1).astype(np.int64))[:-1]


def block_mean(a: np.ndarray, most=IMAGE_MAX) -> np.ndarray:
    """``a`` reduced to at most ``most`` (rows, columns) by averaging blocks; unchanged when it fits."""
    r, c = _edges(a.shape[0], most[0]), _edges(a.shape[1], most[1])
    if r.size == a.shape[0] and c.size == a.shape[1]:
        return a.astype(np.float32)
    s = np.add.reduceat(np.add.reduceat(a.astype(np.float64), r, axis=0), c, axis=1)
    rows = np.diff(np.append(r, a.shape[0]))[:, None]
    cols = np.diff(np.append(c, a.shape[1]))[None, :]
    return (s / (rows * cols)).astype(np.float32)


# ----------------------------------------------------------------------------------------- granularity
@dataclass
class Affected:
    """Another module that loses weights with this layer's channels."""
    name: str
    kind: str  # "columns" (its inputs), "rows" (its outputs: a coupled producer or a depthwise conv), "norm"
    removed: int  # channels it loses
    total: int  # its channels of that kind
    weights: int = 0  # weights (or norm parameters) it loses
    image: Optional[np.ndarray] = None  # |w|, block means (weight matrices only)
    removed_image: Optional[np.ndarray] = None  # share removed per block
    matrix_shape: tuple = ()  # (rows, columns) as drawn before block means
    shape: tuple = ()  # its weight's shape


@dataclass
class GranularityView:
    name: str
    granularity: str  # element, filter or channel
    amount: float | int
    illustrative: bool  # the plan prunes nothing here with this granularity: the amount is an illustration
    shape: tuple  # the weight's shape
    matrix_shape: tuple  # (rows, columns) as drawn before block means
    image: np.ndarray  # |w| (block means)
    removed_image: np.ndarray  # share of each block removed
    removed: int  # weights removed
    total: int
    channels_removed: int = 0
    channels: int = 0
    affected: list = field(default_factory=list)
    refused: Optional[str] = None  # why this granularity cannot apply to the layer
    merges: tuple = ()  # merge: (removed neuron, the twin it went into), in order

    @property
    def drawable(self) -> bool:
        """Whether there is a picture to draw (else the explanation says why not)."""
        return self.refused is None

    def explain(self) -> str:
        if self.refused:
            return f"{self.name}: {self.granularity} pruning does not apply: {self.refused}"
        head = (f"{self.name}: {self.granularity} pruning at {_amount(self.amount)}"
                + (" (an illustration: the plan prunes nothing here this way)" if self.illustrative else ""))
        share = self.removed / max(self.total, 1)
        if self.granularity == "element":
            return (f"{head} removes {self.removed:,} of {self.total:,} weights ({share:.1%}), scattered: the "
                    f"matrix keeps its shape {_shape(self.matrix_shape)}, so only sparse storage saves bytes")
        if self.granularity == "merge":
            pairs = ", ".join(f"{j}→{i}" for j, i in self.merges[:3]) + ("…" if len(self.merges) > 3 else "")
            text = (f"{head} merges {self.channels_removed} of {self.channels} neurons (rows) into their nearest "
                    f"twins ({pairs}), {self.removed:,} of {self.total:,} weights ({share:.1%}); no data needed")
        else:
            unit = "filters (rows)" if self.granularity == "filter" else "input channels (columns)"
            text = (f"{head} removes {self.channels_removed} of {self.channels} {unit}, {self.removed:,} of "
                    f"{self.total:,} weights ({share:.1%}); the layer becomes a smaller dense one")
        others = [f"{a.name} loses {a.removed} of its {a.total} {_kind(a.kind)} ({a.weights:,} "
                  f"{'parameters' if a.kind == 'norm' else 'weights'}"
                  + (": each merged neuron's column is first added to its twin's" if self.granularity == "merge"
                     and a.kind == "columns" else "")
                  + ")" for a in self.affected]
        return text + ("; with it " + ", ".join(others) if others else "")


def _amount(a) -> str:
    return f"{a:.0%}" if isinstance(a, float) else f"{a:,}"


def _shape(shape) -> str:
    return "×".join(str(s) for s in shape)


def _kind(kind: str) -> str:
    return {"columns": "input channels", "rows": "filters", "norm": "channels (scale and shift)"}[kind]


def granularity_view(model: nn.Module, example_input, info, name: str, settings, granularity: Optional[str] = None,
                     progress: ProgressFn = None) -> GranularityView:
    """Which weights of layer ``name`` pruning removes at the plan's amount with ``granularity`` (default:
    the plan's), and for filters or channels which rows and columns of the other layers go with them
    (``info``: the model's :class:`~explorer.engine.inspect.ModelInfo`)."""
    w = find_layer(model, name).weight.detach()
    p = settings.prune
    g = granularity or (p.granularity if p is not None else "element")
    illustrative = p is None or not p.amount or p.granularity != g
    amount = ILLUSTRATION_AMOUNT if illustrative else p.amount
    criterion = p.criterion if p is not None else "l1"
    m = _matrix(w)
    image = block_mean(np.abs(m))
    view = GranularityView(name, g, amount, illustrative, tuple(w.shape), m.shape, image, np.zeros_like(image),
                           0, m.size)
    report(progress, 0.2, f"{name}: {g} pruning")
    if g == "element":
        removed = ~element_mask(w, amount, "l1" if illustrative else criterion, name).reshape(m.shape)
        view.removed, view.removed_image = int(removed.sum()), block_mean(removed)
        return view
    layer = info.layer(name)
    refusals = layer.refusals()
    if g not in STRUCTURED or g in refusals:
        why = refusals.get(g) if g in STRUCTURED else f"no granularity {g!r}"
        view.refused = why or f"its {g}s cannot be removed"
        return view
    try:
        ranking = layer_ranking(model, example_input, name, g, amount, criterion)
    except (CompressionError, PlanError) as exc:
        view.refused = str(exc)
        return view
    gone = ranking.removed
    view.channels, view.channels_removed = int(gone.size), int(gone.sum())
    view.merges = ranking.merges
    removed = _channel_mask(m.shape, gone, rows=g != "channel")
    view.removed, view.removed_image = int(removed.sum()), block_mean(removed)
    producers, others = _group_of(info, layer, g)
    view.affected = [a for a in (_affected(model, o, gone, producers) for o in others) if a is not None]
    report(progress, 1.0, f"{name}: done")
    return view


def _channel_mask(shape, gone: np.ndarray, rows: bool) -> np.ndarray:
    """Rows (``rows``) or column blocks (one per channel: a conv's kernel, a flatten's pixels) of ``gone``."""
    out = np.zeros(shape, bool)
    if rows:
        out[gone] = True
    else:
        block = shape[1] // gone.size
        out[:, np.repeat(gone, block)] = True
    return out


def _group_of(info, layer, granularity: str) -> tuple:
    """(the layers losing rows, every other module that loses weights) when ``layer`` loses its output
    channels (filter) or its input channels (channel: the channels of the group that feeds it, whose producers
    lose those rows, and whose BatchNorms, depthwise convolutions and other consumers go with them)."""
    if granularity != "channel":  # filter, merge: the layer's own output channels
        return list(layer.producers) or [layer.name], list(layer.coupled)
    feeding = next((l for l in info.layers if layer.name in l.coupled and layer.name not in l.producers), None)
    if feeding is None:
        return [], []
    producers = list(feeding.producers) or [feeding.name]
    rest = [c for c in feeding.coupled if c != layer.name and c not in producers]
    return producers, producers + rest


def _affected(model: nn.Module, other: str, gone: np.ndarray, producers) -> Optional[Affected]:
    try:
        mod = find_layer(model, other)
    except AttributeError:
        return None
    n, k = int(gone.size), int(gone.sum())
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        per = 2 if mod.affine else 0
        return Affected(other, "norm", k, n, weights=per * k)
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() < 2:
        return None
    m = _matrix(w)
    depthwise = isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels
    as_rows = other in producers or depthwise  # a producer of the channels or a depthwise conv: rows go
    if as_rows and m.shape[0] != n or not as_rows and m.shape[1] % n:
        return None
    mask = _channel_mask(m.shape, gone, rows=as_rows)
    return Affected(other, "rows" if as_rows else "columns", k, n, int(mask.sum()), block_mean(np.abs(m)),
                    block_mean(mask), m.shape, tuple(w.shape))


# ------------------------------------------------------------------------------------------ sparse storage
@dataclass
class StorageView:
    """How a pruned layer is stored: relative indices (gap, value) with filler entries (Deep Compression's
    Figure 2) against a bitmask and dense storage, in bits per surviving weight."""
    name: str
    numel: int
    survivors: int
    value_bits: int  # bits per stored value: the code width when quantized with a zero code, else 32
    side_bits: int
    per_gap: dict  # b -> {"entries", "fillers", "bits"} (gaps + values + side)
    bitmask_bits: int  # a bitmask and the survivors' values: codes (with the table) or float32, the cheaper
    dense_bits: int  # every position's value: codes (where they can hold the zeros) or float32, the cheaper
    chosen: dict  # the storage the file chose (the coded stage): format, gap_bits, bits
    row_gap_bits: int = 5  # the gap width the file chose (else the cheapest raw one): the row shown first
    rows: dict = field(default_factory=dict)  # b -> (position, gap, value, filler) of the first entries
    row_length: int = 0

    @property
    def drawable(self) -> bool:
        """Whether there is a picture to draw: a layer without element pruning stores no indices."""
        return bool(self.per_gap)

    def per_survivor(self, bits: int) -> float:
        return bits / max(self.survivors, 1)

    def best_gap(self) -> Optional[int]:
        return min(self.per_gap, key=lambda b: self.per_gap[b]["bits"]) if self.per_gap else None

    def explain(self) -> str:
        keep = f"{self.name} keeps {self.survivors / max(self.numel, 1):.1%} of its {self.numel:,} weights"
        if not self.per_gap:
            return f"{keep}: nothing element-pruned, so every weight is stored in place (no index needed)"
        b = self.best_gap()
        gaps = self.per_gap[b]
        ratio = self.bitmask_bits / max(gaps["bits"], 1)
        return (f"{keep}; {b}-bit gaps (the cheapest width) need {gaps['fillers'] / max(self.survivors, 1):.2f} "
                f"filler entries per survivor and {self.per_survivor(gaps['bits']):.1f} bits per survivor with "
                f"{self.value_bits}-bit values; the bitmask would cost {ratio:.2f}× as much "
                f"({self.per_survivor(self.bitmask_bits):.1f} bits per survivor), dense storage "
                f"{self.per_survivor(self.dense_bits):.1f}. After entropy coding the file stores "
                f"{_storage_text(self.chosen)}")


def _storage_text(stage: dict) -> str:
    fmt = stage["format"]
    how = f"{stage['gap_bits']}-bit gaps" if fmt == "gaps" else fmt
    coded = [s for s in ("index_stream", "gap_stream") if stage.get(s) is not None and stage[s].coded]
    return how + (" (" + ", ".join(f"{s.split('_')[0]} stream {stage[s].coder}-coded" for s in coded) + ")"
                  if coded else "") + f": {stage['bits']:,} bits"


def storage_view(name: str, result, weight: torch.Tensor) -> StorageView:
    """The storage alternatives of one layer's weight from its :class:`~explorer.engine.compress.TensorResult`
    (mask, codes, sizes as the file gets them); ``weight``: the layer's (the values of an unquantized one)."""
    n, sizes = result.numel, result.sizes
    keep = result.mask
    q = result.quant
    z = sizes.nnz
    # the candidates the size accounting weighs (storage/size.py): codes in gaps need a code for the fillers'
    # zero; a bitmask or dense codes do not (dense only when nothing is pruned or a zero code exists); float32
    # values always remain
    with_codes = q is not None and q.zero_code is not None
    c = q.bits if with_codes else 32
    side = q.side_bits if with_codes else 0
    bitmask = [n + z * 32] + ([n + z * q.bits + q.side_bits] if q is not None else [])
    dense = [n * 32] + ([n * q.bits + q.side_bits] if q is not None and (with_codes or z == n) else [])
    view = StorageView(name, n, z, c, side, {}, min(bitmask), min(dense), sizes.stages["coded"])
    if keep is None:
        return view
    for b, (_, fillers) in gap_histograms_of_mask(keep, GAP_BITS).items():
        e = z + fillers
        view.per_gap[b] = {"entries": e, "fillers": fillers, "bits": e * (b + c) + side}
    chosen = sizes.stages["coded"].get("gap_bits") or sizes.stages["quantized"].get("gap_bits")
    view.row_gap_bits = int(chosen or view.best_gap())
    cols = int(np.prod(result.shape[1:])) if len(result.shape) > 1 else n
    view.row_length = cols
    positions = np.flatnonzero(keep[: cols * 4])  # the first rows' survivors
    flat = (q.decoded if q is not None else weight).detach().reshape(-1).cpu().numpy()
    for b in GAP_BITS:
        gaps, filler = gap_stream(positions, b)
        pos = np.cumsum(gaps) - 1
        view.rows[b] = [(int(p), int(g), 0.0 if f else float(flat[p]), bool(f))
                        for p, g, f in list(zip(pos, gaps, filler))[:ROW_ENTRIES]]
    return view


# ------------------------------------------------------------------------------------------ quantization
@dataclass
class QuantizationView:
    """The quantization error of the layer's surviving weights against bits per method (the paper's
    Figure 8 on this layer, as relative error), and the levels each method puts over the histogram."""
    name: str
    survivors: int
    stride: int  # the curves are computed on every stride-th survivor
    bits: tuple
    errors: dict  # "kmeans (forgy)" ... "uniform" -> [relative error per bits, None where not defined]
    binary: float
    ternary: float
    at_bits: int  # the bits the levels are drawn at (the plan's, else 5)
    levels: dict  # method -> sorted levels at ``at_bits`` (binary and ternary: theirs)
    edges: np.ndarray
    counts: np.ndarray
    plan_error: Optional[float] = None  # the plan's own quantization of the whole layer (relative error)
    plan_method: str = ""
    half: dict = field(default_factory=dict)  # float16, bfloat16 -> relative error (None: beyond its range)
    at_note: str = ""  # why the levels are drawn at at_bits when the plan's method has no bit-width

    @property
    def drawable(self) -> bool:
        return self.survivors > 0

    def explain(self) -> str:
        b = self.at_bits
        i = self.bits.index(b) if b in self.bits else None
        at = [(k, v[i]) for k, v in self.errors.items() if i is not None and v[i] is not None]
        best = min(at, key=lambda t: t[1]) if at else None
        two = self.bits.index(2) if 2 in self.bits else None
        low = ", ".join(f"{k} {v[two]:.1%}" for k, v in self.errors.items() if two is not None and v[two] is not None)
        sample = f" (on one survivor in {self.stride} of its {self.survivors:,})" if self.stride > 1 else ""
        text = f"{self.name}{sample}: at {b} bits{self.at_note} " + ", ".join(f"{k} leaves {v:.2%}" for k, v in at)
        if best is not None:
            text += f" relative error (lowest: {best[0]})"
        text += f"; at 2 bits {low}; binary {{-a, +a}} {self.binary:.1%}, ternary {{-a, 0, +a}} {self.ternary:.1%}"
        if self.half:
            text += "; at 16 bits " + ", ".join(f"{k} {'cannot hold it' if v is None else f'{v:.3%}'}"
                                                for k, v in self.half.items())
        if self.plan_error is not None:
            text += f". The plan's {self.plan_method} leaves {self.plan_error:.2%} on the whole layer"
        return text


def _survivors(weight: torch.Tensor, settings) -> np.ndarray:
    p = settings.prune
    flat = weight.detach().reshape(-1).to(torch.float32).cpu().numpy()
    if p is not None and p.granularity == "element" and p.amount:
        return flat[element_mask(weight, p.amount, p.criterion).reshape(-1)]
    return flat


def quantization_view(name: str, weight: torch.Tensor, settings, result=None, bits=QUANT_BITS, inits=BUILTIN,
                      max_iter: int = QUANT_ITER, progress: ProgressFn = None) -> QuantizationView:
    """Relative error ``||w - q|| / ||w||`` of layer ``name``'s survivors (element pruning as ``settings``)
    for k-means with each init (2^b - 1 values beside the pruned weights' zero on a pruned layer, as the plan
    quantizes it) and for symmetric uniform levels at each of ``bits``, and for binary and
    ternary levels. A layer of more than :data:`QUANT_SAMPLE` survivors is measured on every k-th of them.
    ``result``: the layer's TensorResult, whose quantization error is quoted."""
    v = _survivors(weight, settings)
    stride = max(1, -(-v.size // QUANT_SAMPLE))
    s = torch.from_numpy(np.ascontiguousarray(v[::stride]))
    errors = {f"k-means ({i})": [] for i in inits}
    errors["uniform"] = []
    q = settings.quantize
    at = q.bits if q is not None and "bits" in QUANTIZERS[q.method].fields and q.bits in bits else 5
    init = settings.quantize.init if settings.quantize is not None else "linear"
    # on an element-pruned layer k-means keeps code 0 for the pruned weights' exact zero and clusters the
    # survivors into 2^b - 1 values, as the plan's does: one pruned entry beside the sample makes it do so
    pruned = settings.prune is not None and bool(settings.prune.amount)
    km_in = torch.cat([s, s.new_zeros(1)]) if pruned else s
    km_mask = np.append(np.ones(s.numel(), bool), False) if pruned else None
    levels = {}
    steps = len(bits) * (len(inits) + 1)
    for j, b in enumerate(bits):
        for k, i in enumerate(inits):
            report(progress, (j * (len(inits) + 1) + k) / steps, f"{name}: {b}-bit k-means ({i})")
            q = quantize_kmeans(km_in, km_mask, b, i, max_iter, 0)
            errors[f"k-means ({i})"].append(q.rel_error)
            if b == at and i == init:
                levels[f"k-means ({i})"] = np.sort(q.codebook.astype(np.float64))
        u = quantize_uniform(s, None, b, True) if b >= 2 else None
        errors["uniform"].append(None if u is None else u.rel_error)
        if b == at and u is not None:
            levels["uniform"] = np.unique(u.decoded.numpy().astype(np.float64))
    bq, tq = quantize_binary(s), quantize_ternary(s)
    half = {}
    for dtype in ("float16", "bfloat16"):
        try:
            half[dtype] = quantize_half(s, None, dtype).rel_error
        except CompressionError:  # a weight beyond float16's range: said so
            half[dtype] = None
    levels["binary"] = np.sort(bq.codebook.astype(np.float64))
    levels["ternary"] = np.sort(tq.codebook.astype(np.float64))
    counts, edges = np.histogram(v, 120) if v.size else (np.zeros(120, np.int64), np.linspace(-1, 1, 121))
    view = QuantizationView(name, int(v.size), stride, tuple(bits), errors, bq.rel_error, tq.rel_error, at, levels,
                            edges, counts, half=half)
    if settings.quantize is not None and "bits" not in QUANTIZERS[settings.quantize.method].fields:
        view.at_note = f" (the plan's {settings.quantize.method} has no bit-width to compare at)"
    if result is not None and result.quant is not None:
        view.plan_error, view.plan_method = result.quant.rel_error, f"{result.quant.bits}-bit {result.quant.method}"
    report(progress, 1.0, f"{name}: done")
    return view


# ------------------------------------------------------------------------------------------ entropy coding
@dataclass
class StreamView:
    kind: str  # "index" or "gap"
    counts: np.ndarray  # per symbol
    lengths: np.ndarray  # Huffman code length per symbol (0: absent)
    width: int  # bits per symbol stored raw
    entropy: float  # bits per symbol
    huffman: float  # mean Huffman code length, bits per symbol (the table not included)
    bits: object  # StreamBits: raw, each coder's total (with its table), the cheapest

    @property
    def symbols(self) -> int:
        return int(self.counts.sum())

    @property
    def p_max(self) -> float:
        return float(self.counts.max() / max(self.symbols, 1)) if self.counts.size else 0.0


@dataclass
class EntropyView:
    name: str
    streams: list  # StreamView, the index stream first
    note: str = ""

    @property
    def drawable(self) -> bool:
        """Whether there is a stream to draw."""
        return bool(self.streams)

    def explain(self) -> str:
        if not self.streams:
            return f"{self.name}: {self.note}"
        parts = []
        for s in self.streams:
            saved = 1 - s.bits.bits / max(s.bits.raw, 1)
            huff, rans = s.bits.cost("huffman"), s.bits.cost("rans")
            text = (f"its {s.symbols:,} {s.kind} symbols carry {s.entropy:.2f} bits each (entropy) against {s.width} "
                    f"stored raw; Huffman codes average {s.huffman:.2f} bits, and the file stores them "
                    f"{s.bits.coder} in {s.bits.bits:,} bits ({saved:.0%} saved)")
            if s.p_max > 0.5 and huff is not None and rans is not None:
                text += (f"; one symbol has p = {s.p_max:.2f} > 0.5, where a Huffman code cannot spend less than 1 "
                         f"bit on it: rANS " + (f"wins ({rans:,} bits against {huff:,})" if rans < huff else
                                                f"would take {rans:,} bits against Huffman's {huff:,} (its table "
                                                f"costs more than it saves here)"))
            parts.append(text)
        return f"{self.name}: " + "; ".join(parts) + (f". {self.note}" if self.note else "")


def _stream(kind: str, counts: np.ndarray, alphabet: int, width: int) -> StreamView:
    counts = np.asarray(counts, np.int64)
    full = np.zeros(alphabet, np.int64)
    full[: counts.size] = counts[:alphabet]
    n = max(int(full.sum()), 1)
    lengths = huffman_code_lengths(full) if full.sum() else np.zeros(alphabet, np.int64)
    return StreamView(kind, full, lengths, width, entropy_bits(full) / n, float((full * lengths).sum()) / n,
                      stream_bits(full, alphabet, width, counts=True))


def entropy_view(name: str, result) -> EntropyView:
    """The symbol frequencies, Huffman code lengths and entropy of layer ``name``'s index and gap streams as
    its coded storage holds them (``result``: its TensorResult)."""
    stage = result.sizes.stages["coded"]
    q, keep = result.quant, result.mask
    view = EntropyView(name, [])
    fmt = stage["format"]
    if q is not None and q.codes is not None and stage["values"] == "codes":  # else the file stores float32 values
        codes = np.asarray(q.codes).reshape(-1)
        hist = np.bincount(codes[keep] if keep is not None else codes, minlength=q.alphabet_size)
        extra = (stage.get("fillers") or 0) if fmt == "gaps" else (result.numel - result.sizes.nnz
                                                                    if fmt == "dense" else 0)
        if extra and q.zero_code is not None:
            hist[q.zero_code] += extra
        view.streams.append(_stream("index", hist, q.alphabet_size, q.bits))
    if keep is not None and fmt == "gaps":
        b = stage["gap_bits"]
        ghist, _ = gap_histograms_of_mask(keep, (b,))[b]
        view.streams.append(_stream("gap", ghist, 2 ** b, b))
    elif keep is not None:
        view.note = f"The file stores this layer as {fmt}, so it has no gap stream to code"
    if not view.streams:
        view.note = ("its values are stored as float32 (" + ("the codes and their table would cost more here"
                     if q is not None else "neither quantized nor pruned") + "), with nothing to entropy-code")
    return view


# ------------------------------------------------------------------------------------------ low-rank
@dataclass
class SpectrumView:
    name: str
    method: str  # svd, tucker2, cp, tt or circulant
    spectra: dict  # mode label (tt: each bond) -> singular values, descending; none for circulant
    ranks: Optional[list]  # the plan's ranks ([r], or [R3, R4] for tucker2), None: no low-rank in the plan
    params: int  # the layer's weights
    params_at: Optional[int]  # the factors' weights at ``ranks``
    break_even: int  # the largest (equal) rank whose factors hold no more weights than the layer
    macs: Optional[int] = None  # the layer's MACs on the example input
    macs_at: Optional[int] = None
    mac_break_even: Optional[int] = None
    rel_error: Optional[float] = None  # ||W - W_r|| / ||W|| of the real factorization at ``ranks``
    note: str = ""

    @property
    def drawable(self) -> bool:
        return bool(self.spectra)

    def energy(self, mode: str, r: int) -> float:
        s = np.asarray(self.spectra[mode], np.float64) ** 2
        return float(s[:r].sum() / s.sum()) if s.sum() > 0 else 1.0

    def explain(self) -> str:
        if self.note:
            return f"{self.name}: {self.note}"
        head = f"{self.name} ({self.method})"
        even = (f"factors hold fewer weights than the layer's {self.params:,} up to rank {self.break_even}"
                + (f", fewer MACs up to rank {self.mac_break_even}" if self.mac_break_even is not None else ""))
        if self.ranks is None:
            return f"{head}: no low-rank in the plan; {even}"
        modes = list(self.spectra)
        kept = ", ".join(f"{r} of {len(self.spectra[m])} {m} values keep {self.energy(m, r):.1%} of the energy"
                         for m, r in zip(modes, self.mode_ranks()))
        text = f"{head}: {kept}; {even}. At this rank: {self.params_at:,} weights"
        if self.macs_at is not None and self.macs:
            text += f", {self.macs_at:,} MACs (of {self.macs:,})"
        if self.rel_error is not None:
            text += f", reconstruction error {self.rel_error:.1%}"
        return text

    def mode_ranks(self) -> list:
        """The plan's rank for each mode of :attr:`spectra`, in its order."""
        if self.method == "tucker2":  # ranks are [R3 (input side), R4 (output side)]; modes: output, input
            return [self.ranks[1], self.ranks[0]]
        if self.method == "tt":  # one rank per bond, one spectrum per bond
            return list(self.ranks)
        return list(self.ranks)[:1] * len(self.spectra)


def spectrum_view(name: str, module: nn.Module, settings, macs: Optional[int] = None,
                  input_shape: Optional[tuple] = None, progress: ProgressFn = None) -> SpectrumView:
    """The singular values a low-rank factorization of layer ``name`` cuts (a Linear's or Embedding's
    matrix; a convolution's output- and input-mode unfoldings, whose leading subspaces Tucker-2 keeps), the
    plan's cut, the break-even ranks and the real factorization's error. ``macs`` and ``input_shape``: the
    layer's MACs and input shape on the example input (for the MACs at a rank)."""
    lr = settings.lowrank
    method = resolve_method(module, lr.method if lr is not None else "auto")
    w = module.weight.detach().to(torch.float64)
    report(progress, 0.1, f"{name}: singular values")
    if method == "svd":
        spectra = {"singular": torch.linalg.svdvals(w.reshape(w.shape[0], -1)).numpy()}
    elif method == "tt":  # TT-SVD cuts each bond's unfolding at its rank
        spectra = {f"bond {k + 1}": torch.linalg.svdvals(u).numpy() for k, u in enumerate(tt_unfoldings(w))} \
            if isinstance(module, nn.Linear) else {}
    elif method == "circulant":  # no singular-value cut: each block is the mean of its wrapped diagonals
        spectra = {}
    else:
        spectra = {"output mode": torch.linalg.svdvals(w.reshape(w.shape[0], -1)).numpy(),
                   "input mode": torch.linalg.svdvals(w.transpose(0, 1).reshape(w.shape[1], -1)).numpy()}
    try:
        even = break_even_rank(module, method)
    except (CompressionError, PlanError) as exc:
        return SpectrumView(name, method, spectra, None, w.numel(), None, 0, note=f"low-rank does not apply: {exc}")
    view = SpectrumView(name, method, spectra, None, w.numel(), None, even, macs=macs)
    view.mac_break_even = _mac_break_even(module, method, macs, input_shape)
    if lr is None:
        return view
    try:
        view.ranks = choose_rank(module, method, lr.rank, name=name)
        view.params_at = lowrank_params(module, method, view.ranks, name=name)
        report(progress, 0.5, f"{name}: factorising")
        _, info = factorize(module, method, view.ranks, name=name, grow=True)
    except (CompressionError, PlanError) as exc:
        view.note = str(exc)
        return view
    view.rel_error = info["rel_error"]
    view.macs_at = _macs_at(module, method, view.ranks, macs, input_shape)
    if method == "circulant":
        b = view.ranks[0]
        view.note = (f"circulant blocks of {b} x {b} (each row a shift of the one before, run by FFT): "
                     f"{view.params_at:,} weights of {view.params:,}"
                     + (f", {view.macs_at:,} MACs (of {view.macs:,})" if view.macs_at is not None and view.macs else "")
                     + f", reconstruction error {view.rel_error:.1%} (the least-squares fit: the mean of each "
                     "wrapped diagonal). A circulant has no singular-value cut to draw")
    report(progress, 1.0, f"{name}: done")
    return view


def _macs_at(module, method: str, ranks, macs, input_shape) -> Optional[int]:
    """MACs of the factors at ``ranks``, from the dense layer's ``macs`` (which fix the output positions)
    and its input shape: svd ``t r (m + n)`` for ``t`` rows; tucker2 ``HW_in S R3 + HW_out (R3 R4 k + R4 T)``."""
    if not macs:
        return None
    if isinstance(module, nn.Embedding):
        return None
    w = module.weight
    if method in ("svd", "tt", "circulant"):
        return factor_macs(module, method, ranks, macs // (w.shape[0] * w.shape[1]))
    if method != "tucker2" or input_shape is None or len(input_shape) < 3:
        return None
    k = int(np.prod(w.shape[2:]))
    out_pos = macs // w.numel()  # output positions of the whole batch
    in_pos = int(np.prod(input_shape)) // int(input_shape[1])  # input positions of the whole batch
    r3, r4 = ranks
    return in_pos * w.shape[1] * r3 + out_pos * (r3 * r4 * k + r4 * w.shape[0])


def _mac_break_even(module, method: str, macs, input_shape) -> Optional[int]:
    if not macs or method not in ("svd", "tucker2", "tt") or isinstance(module, nn.Embedding):
        return None
    if method == "tt":
        top = max(choose_rank(module, method, 10 ** 9))
    else:
        top = min(module.weight.shape[0], module.weight.shape[1]) if method == "tucker2" else \
            min(module.weight.shape[0], int(np.prod(module.weight.shape[1:])))
    best = 0
    for r in range(1, top + 1):
        ranks = choose_rank(module, method, r) if method == "tt" else [r] if method == "svd" else [r, r]
        at = _macs_at(module, method, ranks, macs, input_shape)
        if at is None:
            return None
        if at > macs:
            break
        best = r
    return best


def layer_input_shape(model: nn.Module, example_input, name: str) -> Optional[tuple]:
    """The shape of the input layer ``name`` receives on the example input (None when it cannot be run)."""
    if example_input is None:
        return None
    seen = []
    layer = find_layer(model, name)
    owner = layer.owner if isinstance(layer, WeightSlot) else layer
    if not hasattr(owner, "register_forward_pre_hook") or isinstance(owner, torch.jit.ScriptModule):
        return None  # a TorchScript module runs no Python hooks: no MACs per rank
    handle = owner.register_forward_pre_hook(
        lambda m, args: seen.append(tuple(args[0].shape)) if args and isinstance(args[0], torch.Tensor) else None)
    try:
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    except Exception:  # a model the example does not run: no MACs per rank, said as unknown
        return None
    finally:
        handle.remove()
    return seen[0] if seen else None


# ------------------------------------------------------------------------------------------ one entry point
LAYER_VIEWS = ("granularity", "storage", "quantization", "entropy", "lowrank")


def element_only(settings):
    """The part of ``settings`` a layer's own tensor result covers: element pruning and quantization (what
    the file's storage of that tensor and the previewer's cache are keyed by)."""
    p = settings.prune
    element = p is not None and p.granularity == "element" and p.amount
    return LayerSettings(prune=p if element else None, quantize=settings.quantize)


def plan_structure(loaded, plan, exclude: Optional[str] = None) -> nn.Module:
    """The model as ``plan``'s channel removals leave it (every layer's but ``exclude``'s), before low rank,
    pruning and quantization: what the later stages of the file see. The loaded model where none."""
    if plan is None:
        return loaded.model
    requests = channel_requests(plan.resolve([n for n, _ in compressible_layers(loaded.model)]))
    requests.pop(exclude, None)
    if not requests or loaded.example_input is None:
        return loaded.model
    return prune_structured(loaded.model, loaded.example_input, requests)[0]


def layer_concept(key: str, loaded, info, previewer, name: str, settings, granularity: Optional[str] = None,
                  input_shapes: Optional[dict] = None, progress: ProgressFn = None, plan=None):
    """The view ``key`` (:data:`LAYER_VIEWS`) of layer ``name`` under ``settings``: the window's Concepts tab
    and the handout both compute it here. ``previewer``: the model's
    :class:`~explorer.engine.measure.preview.Previewer` (its cached tensor results are the file's);
    ``input_shapes``: a cache of the layers' input shapes of the loaded model (filled here); ``plan``: the
    whole plan, whose channel removals come first in the file (the views then show the layer as they leave it:
    the other layers' removals before its granularity, all of them before its low rank and storage)."""
    if key == "granularity":
        model = plan_structure(loaded, plan, exclude=name)
        return granularity_view(model, loaded.example_input, info, name, settings, granularity, progress)
    model = plan_structure(loaded, plan)
    module = previewer.modules[name] if model is loaded.model else find_layer(model, name)
    if key == "lowrank":
        shapes = {} if input_shapes is None or model is not loaded.model else input_shapes
        if name not in shapes:
            shapes[name] = layer_input_shape(model, loaded.example_input, name)
        macs = info.layer(name).macs if model is loaded.model else layer_macs(model, loaded.example_input).get(name)
        return spectrum_view(name, module, settings, macs, shapes[name], progress)
    only = element_only(settings)
    if model is loaded.model:
        result = previewer.tensor(name, only)[0]
    else:  # the shrunk layer's own weight, as the file prunes and quantizes it
        result = compress_weight(weight_key(name, module), module.weight, only)[0]
    if key == "storage":
        return storage_view(name, result, module.weight)
    if key == "quantization":
        return quantization_view(name, module.weight, only, result, progress=progress)
    if key == "entropy":
        return entropy_view(name, result)
    raise ValueError(f"no layer view {key!r} (the views: {', '.join(LAYER_VIEWS)})")


__all__ = ["GranularityView", "StorageView", "QuantizationView", "EntropyView", "SpectrumView", "granularity_view",
           "storage_view", "quantization_view", "entropy_view", "spectrum_view", "layer_input_shape", "block_mean",
           "LAYER_VIEWS", "layer_concept", "element_only", "plan_structure"]

"""Storage size of one weight tensor after each compression stage, counted to the bit.

The numbers are what our compressed file stores for the tensor's data (its name, shape and the choice
of storage are header material and are not counted here). Each stage picks the cheapest storage it
can use, so each stage's number is what you would pay if you stopped after that stage.

Notation: ``n`` = numel, ``z`` = surviving (unpruned) weights, ``v`` = bits per float value (32),
``c`` = bits per code, ``A`` = code alphabet size, ``S`` = side bits (codebook, scales, zero points),
``E(b)`` = entries with ``b``-bit gaps = survivors + fillers (:func:`~explorer.engine.storage.coding.gap_entries`),
``F(b) = E(b) - z`` fillers, ``b`` in ``GAP_BITS`` = 3..8.

Storage formats (positions are flat, row-major):

* ``dense``: one value per position, pruned positions hold the zero value.
* ``bitmask``: ``n`` bits (1 = survivor, in position order), then one value per survivor.
* ``gaps``: one (gap, value) entry per survivor and per filler; fillers hold the zero value
  (see :mod:`explorer.engine.storage.coding` for gaps and fillers).

Values are either ``float`` (``v`` bits each, the tensor's values as float32) or ``codes`` (``c`` bits
each, plus ``S`` side bits once per tensor).

Stage formulas (``min`` over the candidates that are allowed):

* dense = ``n*v``.
* pruned = min(``n*v``, ``n + z*v``, ``E(b)*(b + v)``); with no mask only ``n*v``.
* quantized = min(``n*c + S``, ``n + z*c + S``, ``E(b)*(b + c) + S``, pruned). Code-dense needs
  ``zero_code`` unless nothing is pruned; code-gaps need ``zero_code``. ``pruned`` is the fallback of
  storing the quantized tensor's values as float32 (exact: they are float32 numbers), taken when the
  side bits do not pay for themselves, e.g. a 256-entry codebook on a 100-weight tensor.
  Without quantization, quantized = pruned.
* coded = the same candidates with the index stream and the gap stream each replaced by
  ``stream_bits(...).bits`` = min(raw, each registered coder's payload + table: :mod:`~explorer.engine.storage.coders`); the index stream has alphabet
  ``A`` (fillers and, for dense, pruned positions count as ``zero_code``), the gap stream ``2**b``.
  The bitmask, float values and side bits stay raw. Without quantization only the gap stream is coded.

Because every coded candidate costs at most its raw version and every stage's candidates include the
previous stage's, ``coded <= quantized <= pruned <= dense`` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from explorer.engine.storage.coders import StreamBits, stream_bits
from explorer.engine.storage.coding import MAX_ALPHABET, gap_histograms_of_mask, masked_bincount

__all__ = ["GAP_BITS", "STAGES", "TensorCode", "TensorSizes", "tensor_sizes", "sizes_from_counts", "other_param_bits"]

GAP_BITS = (3, 4, 5, 6, 7, 8)
STAGES = ("pruned", "quantized", "coded")


@dataclass
class TensorCode:
    """What quantization produced for one tensor, as far as storage is concerned.

    codes: int code per flat position (``numel`` of them; pruned positions may hold anything), or
    None when only the sizes of a quantization are known (then the index stream is never Huffman-coded).
    code_bits: bits per stored code, ``ceil(log2 alphabet_size)``, 1..16.
    alphabet_size: number of distinct codes the format allows, ``2**code_bits`` if not given
    (3 for ternary).
    zero_code: the code whose value is exactly 0, used for pruned positions in dense storage and for
    filler entries; None if no code decodes to 0.
    side_bits: bits of the decoding table stored once per tensor (e.g. ``32*k`` for a k-means codebook).
    """

    codes: Optional[np.ndarray]
    code_bits: int
    alphabet_size: Optional[int] = None
    zero_code: Optional[int] = None
    side_bits: int = 0

    def __post_init__(self):
        self.code_bits = int(self.code_bits)
        if not 1 <= self.code_bits <= 16:
            raise ValueError(f"code_bits must be in 1..16, got {self.code_bits}")
        if self.alphabet_size is None:
            self.alphabet_size = 2 ** self.code_bits
        self.alphabet_size = int(self.alphabet_size)
        if not 1 <= self.alphabet_size <= min(2 ** self.code_bits, MAX_ALPHABET):
            raise ValueError(f"alphabet_size {self.alphabet_size} does not fit in {self.code_bits}-bit codes")
        if self.zero_code is not None:
            self.zero_code = int(self.zero_code)
            if not 0 <= self.zero_code < self.alphabet_size:
                raise ValueError(f"zero_code {self.zero_code} outside the alphabet 0..{self.alphabet_size - 1}")
        self.side_bits = int(self.side_bits)
        if self.side_bits < 0:
            raise ValueError(f"side_bits must be >= 0, got {self.side_bits}")


def _jsonable(desc: dict) -> dict:
    return {k: (v.to_dict() if isinstance(v, StreamBits) else dict(v) if isinstance(v, dict) else v)
            for k, v in desc.items()}


@dataclass
class TensorSizes:
    """Bits of one tensor after each stage, and the storage each stage chose.

    ``stages[stage]`` describes the chosen storage: ``format`` (dense / bitmask / gaps), ``values``
    (``float`` or ``codes``), ``value_bits`` (raw bits per value), ``gap_bits`` (b, or None),
    ``entries`` (values stored), ``fillers``, ``index_stream`` / ``gap_stream`` (:class:`StreamBits`
    of the Huffman decision, coded stage only, else None), ``side_bits``, ``parts`` (bits of ``mask``,
    ``values``, ``gaps``, ``side``) and ``bits`` (their sum).
    """

    numel: int
    nnz: int
    dense: int
    stages: dict = field(default_factory=dict)

    @property
    def bits(self) -> dict:
        """Stage name -> bits, for ``pruned``, ``quantized``, ``coded``."""
        return {s: self.stages[s]["bits"] for s in STAGES}

    def to_dict(self) -> dict:
        """Plain JSON-able dict (StreamBits become dicts)."""
        return {"numel": self.numel, "nnz": self.nnz, "dense": self.dense, "bits": self.bits,
                "stages": {s: _jsonable(self.stages[s]) for s in STAGES}}


def other_param_bits(numel: int) -> int:
    """Bits of a parameter that is not compressed (biases, norm weights): float32, ``32*numel``."""
    return 32 * int(numel)


def _storage(fmt, values, value_bits, entries, *, gap_bits=None, fillers=0, mask=0, value_part=None,
             gap_part=0, side=0, index_stream=None, gap_stream=None) -> dict:
    value_part = entries * value_bits if value_part is None else value_part
    parts = {"mask": int(mask), "values": int(value_part), "gaps": int(gap_part), "side": int(side)}
    return {"format": fmt, "values": values, "value_bits": int(value_bits),
            "gap_bits": None if gap_bits is None else int(gap_bits), "entries": int(entries),
            "fillers": int(fillers), "index_stream": index_stream, "gap_stream": gap_stream,
            "side_bits": int(side), "parts": parts, "bits": sum(parts.values())}


def _cheapest(candidates: list) -> dict:
    """The first candidate with the fewest bits (candidate order breaks ties)."""
    return min(candidates, key=lambda d: d["bits"])


def _cheapest_coded(candidates: list) -> dict:
    """:func:`_cheapest` of ``[(lower bound, build), ...]``: the candidates are built (their streams coded)
    in order of their bounds, and only while a bound can still reach the cheapest built so far. The same
    choice as building all of them (a test checks), at a fraction of the cost: a coded stream's size is
    a Huffman code and an rANS table per candidate, and a tensor has up to 14 candidates."""
    if _EXHAUSTIVE:
        return _cheapest([build() for _, build in candidates])
    best, best_i = None, -1
    for i in sorted(range(len(candidates)), key=lambda i: candidates[i][0]):
        bound, build = candidates[i]
        if best is not None and bound > best["bits"]:
            break
        d = build()
        if best is None or (d["bits"], i) < (best["bits"], best_i):
            best, best_i = d, i
    return best


_EXHAUSTIVE = False  # tests: build every coded candidate


def _stream_bound(counts: np.ndarray, raw_bits: int, coders) -> int:
    """A lower bound on ``stream_bits(counts, ...).bits``: min(raw, n x entropy) — a Huffman payload is at
    least the entropy (Shannon) and so is rANS's (its cost per symbol is log2 of a quantised probability,
    summed: a cross-entropy), tables come on top. Rounded down with room for floating-point error."""
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    raw = n * int(raw_bits)
    if (coders is not None and not coders) or n == 0:
        return raw
    c = counts[counts > 0].astype(np.float64)
    nh = float(n * np.log2(n) - np.dot(c, np.log2(c)))
    return max(0, min(raw, int(nh * (1 - 1e-9)) - 1))


def _with_index(storage, ix, fmt, values, value_bits, entries, **kw) -> dict:
    return storage(fmt, values, value_bits, entries, value_part=ix.bits, index_stream=ix, **kw)


def tensor_sizes(numel: int, mask: Optional[np.ndarray], code: Optional[TensorCode], value_bits: int = 32,
                 *, gap_bits=GAP_BITS, coders=None) -> TensorSizes:
    """Bits to store one weight tensor after pruning, quantization and Huffman coding.

    Parameters
    ----------
    numel : int
        Number of weights in the tensor.
    mask : ndarray of bool (any shape, ``numel`` elements) or None
        True where the weight survives pruning (flattened row-major); None = nothing pruned.
    code : TensorCode or None
        The tensor's quantization; None = values stay float.
    value_bits : int
        Bits of an unquantized value (32, float32).
    gap_bits : sequence of int
        Gap widths ``b`` tried for sparse storage (3..8 as in Deep Compression).

    Returns
    -------
    TensorSizes
        ``.bits`` = {"pruned", "quantized", "coded"} -> bits, ``.dense`` = ``numel*value_bits``,
        ``.stages`` = the storage each stage chose. The formulas are in the module docstring;
        ``coded <= quantized <= pruned <= dense`` always.
    """
    n = int(numel)
    if n < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    v = int(value_bits)
    if v < 1:
        raise ValueError(f"value_bits must be >= 1, got {value_bits}")
    bs = tuple(int(b) for b in gap_bits)
    if any(not 1 <= b <= 16 for b in bs):
        raise ValueError(f"gap bits must lie in 1..16, got {gap_bits}")

    keep = None
    if mask is not None:
        keep = np.asarray(mask).reshape(-1).astype(bool, copy=False)
        if keep.size != n:
            raise ValueError(f"mask has {keep.size} elements for a tensor of {n}")
    z = n if keep is None else int(np.count_nonzero(keep))

    # gap-stream histograms per b (only sparse storage needs them)
    # (equal to {b: gap_histogram(np.flatnonzero(keep), b)}, computed in one pass over the mask)
    gaps = gap_histograms_of_mask(keep, bs) if keep is not None else None

    hist = None  # counts of the survivors' codes
    if code is not None and code.codes is not None:
        A = code.alphabet_size
        codes = np.asarray(code.codes).reshape(-1)
        if codes.size != n:
            raise ValueError(f"codes has {codes.size} elements for a tensor of {n}")
        if z and not np.issubdtype(codes.dtype, np.integer):
            raise ValueError("codes must be integers")
        hist, ok = masked_bincount(np.ascontiguousarray(codes),  # its own integer type: no int64 copy
                                    np.zeros(0, bool) if keep is None else keep, A)
        if not ok:
            raise ValueError(f"codes of surviving weights must lie in 0..{A - 1}")
    return sizes_from_counts(n, z, gaps, code, hist, v, coders=coders)


def sizes_from_counts(n: int, z: int, gaps: Optional[dict], code: Optional[TensorCode],
                      hist: Optional[np.ndarray], value_bits: int = 32, *, coders=None) -> TensorSizes:
    """:func:`tensor_sizes` from what it reads off the mask and the codes: ``z`` survivors of ``n``,
    ``gaps`` = ``{b: (gap histogram, fillers)}`` of the mask (None when nothing is pruned) and ``hist`` =
    the survivors' code counts (None: the codes are not known). The same numbers, for a caller that
    counted these without materialising the mask or the codes (:mod:`explorer.engine.measure.sweep`)."""
    v = int(value_bits)
    keep = gaps is not None
    gaps = gaps or {}
    pruned_any = z < n
    dense_bits = n * v

    # ---- float values (the pruned stage, and the fallback of the later stages)
    # Coded candidates are (lower bound, build): a coded stream costs at least min(raw, n * entropy), and
    # only the candidates whose bound can reach the cheapest found are coded exactly (see _cheapest_coded).
    float_raw = [_storage("dense", "float", v, n)]
    float_coded = [(dense_bits, lambda: float_raw[0])]
    streams: dict = {}

    def gap_stream(b):
        if b not in streams:
            streams[b] = stream_bits(gaps[b][0], 2 ** b, b, counts=True, coders=coders)
        return streams[b]

    gap_bound = {b: _stream_bound(ghist, b, coders) for b, (ghist, _) in gaps.items()}
    if keep:
        bitmask = _storage("bitmask", "float", v, z, mask=n)
        float_raw.append(bitmask)
        float_coded.append((bitmask["bits"], lambda: bitmask))
        for b, (_, f) in gaps.items():
            e = z + f
            float_raw.append(_storage("gaps", "float", v, e, gap_bits=b, fillers=f, gap_part=e * b))
            float_coded.append((e * v + gap_bound[b], lambda b=b, e=e, f=f: _storage(
                "gaps", "float", v, e, gap_bits=b, fillers=f, gap_part=gap_stream(b).bits, gap_stream=gap_stream(b))))
    pruned = _cheapest(float_raw)

    if code is None:
        quantized = dict(pruned)
        coded = _cheapest_coded(float_coded)
    else:
        c, A, zc, S = code.code_bits, code.alphabet_size, code.zero_code, code.side_bits

        def index_counts(extra_zeros: int):
            h = hist.copy()
            if extra_zeros:
                h[zc] += extra_zeros
            return h

        def index_stream(extra_zeros: int):
            """StreamBits of the index stream: survivors' codes plus ``extra_zeros`` zero codes."""
            return stream_bits(index_counts(extra_zeros), A, c, counts=True, coders=coders)

        def index_bound(extra_zeros: int) -> int:
            return _stream_bound(index_counts(extra_zeros), c, coders)

        code_raw, code_coded = [], []
        if not pruned_any or zc is not None:
            code_raw.append(_storage("dense", "codes", c, n, side=S))
            if hist is None:
                code_coded.append((code_raw[-1]["bits"], lambda d=code_raw[-1]: d))
            else:
                code_coded.append((S + index_bound(n - z), lambda: _with_index(
                    _storage, index_stream(n - z), "dense", "codes", c, n, side=S)))
        if keep:
            code_raw.append(_storage("bitmask", "codes", c, z, mask=n, side=S))
            if hist is None:
                code_coded.append((code_raw[-1]["bits"], lambda d=code_raw[-1]: d))
            else:
                code_coded.append((n + S + index_bound(0), lambda: _with_index(
                    _storage, index_stream(0), "bitmask", "codes", c, z, mask=n, side=S)))
            if zc is not None:
                for b, (_, f) in gaps.items():
                    e = z + f
                    code_raw.append(_storage("gaps", "codes", c, e, gap_bits=b, fillers=f, gap_part=e * b,
                                             side=S))
                    bound = S + (e * c if hist is None else index_bound(f)) + gap_bound[b]

                    def build(b=b, e=e, f=f):
                        ix = None if hist is None else index_stream(f)
                        gs = gap_stream(b)
                        return _storage("gaps", "codes", c, e, gap_bits=b, fillers=f, side=S,
                                        value_part=e * c if ix is None else ix.bits, index_stream=ix,
                                        gap_part=gs.bits, gap_stream=gs)

                    code_coded.append((bound, build))
        quantized = _cheapest(code_raw + float_raw)
        coded = _cheapest_coded(code_coded + float_coded)

    sizes = TensorSizes(numel=n, nnz=z, dense=dense_bits,
                        stages={"pruned": pruned, "quantized": quantized, "coded": coded})
    assert coded["bits"] <= quantized["bits"] <= pruned["bits"] <= dense_bits, sizes.bits
    return sizes

"""Entropy coding and sparse-index streams, counted to the bit (Deep Compression §2 and §4).

Two kinds of stream are stored for a pruned and quantized weight tensor:

* the **index stream**: one code per stored entry, ``code_bits`` bits each when stored raw;
* the **gap stream** (sparse storage only): one gap per stored entry, ``b`` bits each when stored raw.

Gaps. Survivors are the flat (row-major) positions ``p_0 < p_1 < ...`` whose weight is kept. The gap of
survivor ``i`` is ``d_i = p_i - p_{i-1}`` with ``p_{-1} = -1``, so every gap is at least 1 and position 0
has gap 1. A ``b``-bit gap holds the values ``1 .. M`` with ``M = 2**b - 1`` (the value 0 never occurs).
A gap ``d > M`` is split by ``k = floor((d - 1) / M)`` *filler* entries, each a zero-valued entry at
distance ``M`` from the previous one; the survivor then follows at the remaining distance
``d - k*M`` (in ``1 .. M``). In storage order the fillers come right before their survivor. Positions
after the last survivor need no entry (the tensor's shape is known from elsewhere). Hence::

    entries(b) = n + sum_i floor((d_i - 1) / M)

For uniformly random positions at density ``d`` (``q = 1 - d``) a gap is geometric,
``P(gap > m) = q**m``, so the expected number of fillers per survivor is
``sum_{k>=1} q**(k*M) = q**M / (1 - q**M)``.

Huffman coding. A stream of ``n`` symbols from an alphabet of ``A`` symbols with ``c_s`` occurrences of
symbol ``s`` costs, Huffman-coded, ``sum_s c_s * len_s`` payload bits plus a table of one byte (8 bits) of
code length per alphabet symbol, ``8*A`` bits; the decoder rebuilds the canonical code from the lengths.
A stream is coded only where that is cheaper than storing it raw (``n * raw_bits``); see
:func:`explorer.engine.storage.coders.stream_bits`. Every length fits in a byte: a Huffman code of length ``L`` needs a stream of at
least ``Fib(L+2)`` symbols (1, 1, 2, 3, 5, ...), so a length above 64 would need more than 10**13.

References
----------
Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization
and Huffman Coding", ICLR 2016. Huffman, "A Method for the Construction of Minimum-Redundancy Codes",
1952. Schwartz and Kallick, "Generating a canonical prefix encoding", 1964 (canonical codes).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros  # LLVM's ctlz/cttz

__all__ = [
    "MAX_ALPHABET",
    "TABLE_BITS_PER_SYMBOL",
    "huffman_code_lengths",
    "canonical_codes",
    "entropy_bits",
    "gap_entries",
    "gap_histogram",
    "gap_stream",
]

MAX_ALPHABET = 65536
TABLE_BITS_PER_SYMBOL = 8  # one byte of code length per alphabet symbol
MAX_CODE_LENGTH = 64  # canonical codewords are returned as uint64


def counts_array(counts, name: str = "counts") -> np.ndarray:
    """Validate a histogram: 1-D, integer-valued, non-negative; returned as int64."""
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {c.shape}")
    if c.size > MAX_ALPHABET:
        raise ValueError(f"{name} has {c.size} symbols; at most {MAX_ALPHABET} are supported")
    if c.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.isfinite(c)) or np.any(c != np.floor(c)):
            raise ValueError(f"{name} must hold whole numbers")
    c = c.astype(np.int64)
    if c.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    return c


def huffman_code_lengths(counts) -> np.ndarray:
    """Code length of every symbol in an optimal (Huffman) prefix code for the given counts.

    Parameters
    ----------
    counts : array_like of int, shape (A,)
        Occurrences of each symbol, ``A <= 65536``.

    Returns
    -------
    lengths : ndarray of int64, shape (A,)
        Length in bits of each symbol's codeword; 0 for symbols that do not occur. A stream with a
        single distinct symbol gets length 1 (one bit per symbol, so the stream still has a length).
        With two or more present symbols the lengths satisfy Kraft's equality
        ``sum 2**-len = 1`` and minimise ``sum counts * lengths``.

    Notes
    -----
    Built with the two-queue method: present symbols sorted by count (ties by symbol index), merged
    nodes appended to a second queue whose weights never decrease; each step merges the two lightest
    heads (a leaf wins a tie). Deterministic. Cost O(m log m) for ``m`` present symbols; the loop runs
    over symbols, never over stream elements.
    """
    c = counts_array(counts)
    lengths = np.zeros(c.size, np.int64)
    present = np.flatnonzero(c > 0)
    m = present.size
    if m == 0:
        return lengths
    if m == 1:
        lengths[present] = 1
        return lengths
    order = present[np.argsort(c[present], kind="stable")]
    lengths[order] = _huffman_depths(c[order])
    return lengths


@njit(cache=True, nogil=True)
def _huffman_depths(leaf_w):
    """Code lengths of leaves sorted by weight (two-queue Huffman, see huffman_code_lengths; m >= 2)."""
    m = leaf_w.size
    node_w = np.empty(m - 1, np.int64)  # weights of merged nodes, node id m + j
    parent = np.empty(2 * m - 1, np.int64)
    i = 0  # head of the leaf queue
    j = 0  # head of the merged queue
    made = 0  # merged nodes so far
    for k in range(m - 1):
        pair = np.empty(2, np.int64)
        for t in range(2):  # pop the lighter head; a leaf wins a tie
            if i < m and (j >= made or leaf_w[i] <= node_w[j]):
                pair[t] = i
                i += 1
            else:
                pair[t] = m + j
                j += 1
        a = pair[0]
        b = pair[1]
        wa = leaf_w[a] if a < m else node_w[a - m]
        wb = leaf_w[b] if b < m else node_w[b - m]
        node_w[made] = wa + wb
        made += 1
        parent[a] = m + k
        parent[b] = m + k
    # a merged node's parent is always created after it: walk merged nodes from the root down
    depth = np.zeros(2 * m - 1, np.int64)
    for node in range(2 * m - 3, m - 1, -1):
        depth[node] = depth[parent[node]] + 1
    out = np.empty(m, np.int64)
    for leaf in range(m):
        out[leaf] = depth[parent[leaf]] + 1
    return out


def canonical_codes(lengths) -> np.ndarray:
    """Canonical Huffman codewords for given code lengths (as DEFLATE, RFC 1951 §3.2.2).

    Symbols are ordered by (length, symbol index); the first gets the all-zero codeword of its length,
    each next one the previous codeword plus one, shifted left by the increase in length. The decoder
    therefore needs only the lengths, which is what the stored table holds.

    Parameters
    ----------
    lengths : array_like of int, shape (A,)
        Code length per symbol, 0 = symbol absent; at most 64. Must satisfy Kraft's inequality
        ``sum 2**-len <= 1``.

    Returns
    -------
    codes : ndarray of uint64, shape (A,)
        Codeword of each symbol, read as its ``lengths[s]`` low bits, most significant bit first;
        0 for absent symbols.
    """
    L = np.asarray(lengths)
    if L.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {L.shape}")
    L = L.astype(np.int64)
    codes = np.zeros(L.size, np.uint64)
    if L.size and (L.min() < 0 or L.max() > MAX_CODE_LENGTH):
        raise ValueError(f"code lengths must lie in 0..{MAX_CODE_LENGTH}")
    if not np.any(L > 0):
        return codes
    max_len = int(L.max())
    bl_count = [int(x) for x in np.bincount(L[L > 0], minlength=max_len + 1)]
    bl_count[0] = 0
    if sum(n << (max_len - l) for l, n in enumerate(bl_count) if l) > (1 << max_len):
        raise ValueError("code lengths violate Kraft's inequality: no prefix code has them")
    next_code = [0] * (max_len + 1)
    code = 0
    for l in range(1, max_len + 1):
        code = (code + bl_count[l - 1]) << 1
        next_code[l] = code
    present = np.flatnonzero(L > 0)
    order = present[np.lexsort((present, L[present]))]  # by length, then symbol
    ls = L[order]
    first = np.searchsorted(ls, ls, side="left")  # index of the first symbol of the same length
    rank = np.arange(order.size) - first
    base = np.array(next_code, dtype=np.uint64)[ls]
    codes[order] = base + rank.astype(np.uint64)
    return codes


def entropy_bits(counts) -> float:
    """Shannon information of a stream with the given symbol counts, in bits.

    ``H_total = -sum_s c_s * log2(c_s / N)`` with ``N = sum_s c_s`` (absent symbols contribute 0).
    A lower bound on any symbol-by-symbol prefix code: ``H_total <= sum c_s*len_s < H_total + N``
    for Huffman lengths when at least two symbols occur.
    """
    c = counts_array(counts)
    c = c[c > 0].astype(np.float64)
    if c.size <= 1:
        return 0.0
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum())


def _gaps(positions, b: int) -> tuple[np.ndarray, int]:
    """Validated survivor gaps ``d_i = p_i - p_{i-1}`` (``p_{-1} = -1``) and ``M = 2**b - 1``."""
    if not (isinstance(b, (int, np.integer)) and 1 <= b <= 62):
        raise ValueError(f"gap bits must be an integer in 1..62, got {b!r}")
    p = np.asarray(positions)
    if p.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {p.shape}")
    if p.size and not np.issubdtype(p.dtype, np.integer):
        raise ValueError("positions must be integers")
    p = p.astype(np.int64)
    d = np.diff(p, prepend=np.int64(-1))
    if d.size and d.min() < 1:
        raise ValueError("positions must be non-negative and strictly increasing")
    return d, (1 << int(b)) - 1


def gap_entries(positions, b: int) -> int:
    """Number of stored entries with ``b``-bit gaps: survivors plus fillers.

    ``entries(b) = n + sum_i floor((d_i - 1) / M)`` with ``M = 2**b - 1`` and gaps ``d_i`` as in the
    module docstring.

    Parameters
    ----------
    positions : array_like of int, shape (n,)
        Sorted flat indices of the surviving weights.
    b : int
        Bits per stored gap.
    """
    d, M = _gaps(positions, b)
    return int(d.size + ((d - 1) // M).sum())


def gap_stream(positions, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The gaps of every stored entry in storage order, fillers included.

    Returns
    -------
    gaps : ndarray of int64, shape (entries,)
        Each in ``1 .. M`` (``M = 2**b - 1``); a survivor with gap ``d`` is preceded by
        ``k = floor((d - 1)/M)`` fillers of gap ``M`` and stored with gap ``d - k*M``.
        ``cumsum(gaps) - 1`` are the positions of the entries.
    is_filler : ndarray of bool, shape (entries,)
        True for filler entries (which store the zero value).
    """
    d, M = _gaps(positions, b)
    k = (d - 1) // M
    last = np.cumsum(k + 1) - 1  # index of each survivor's own entry
    total = int(last[-1] + 1) if last.size else 0
    gaps = np.full(total, M, np.int64)
    gaps[last] = d - k * M
    is_filler = np.ones(total, bool)
    is_filler[last] = False
    return gaps, is_filler


def gap_histogram(positions, b: int) -> tuple[np.ndarray, int]:
    """Counts of each gap value in the ``b``-bit gap stream, without building the stream.

    Returns
    -------
    counts : ndarray of int64, shape (2**b,)
        ``counts[g]`` = number of entries stored with gap ``g`` (``counts[0]`` is always 0).
        Equals ``bincount(gap_stream(positions, b)[0], minlength=2**b)``.
    fillers : int
        Number of filler entries (all of them have gap ``M``).
    """
    d, M = _gaps(positions, b)
    k = (d - 1) // M
    counts = np.bincount(d - k * M, minlength=M + 1).astype(np.int64)
    fillers = int(k.sum())
    counts[M] += fillers
    return counts, fillers


def gap_histograms_of_mask(keep: np.ndarray, bs) -> dict:
    """``{b: gap_histogram(np.flatnonzero(keep), b)}`` for every ``b`` in ``bs``, in one compiled pass
    over the mask (no positions array). Internal: for the size accounting."""
    keep = np.ascontiguousarray(keep, dtype=bool).reshape(-1)
    return _gap_histograms(keep.view(np.uint8), 1, bs)


def gap_histograms_of_keys(keys: np.ndarray, tmin: int, bs, before: tuple = (0, 0)) -> dict:
    """The same for the mask ``(keys & 0x7FFFFFFF) >= tmin`` (magnitude keys: float32 bit patterns, see
    :mod:`explorer.engine.methods.prune`), which is never materialised. ``before = (split, tfirst)``: the
    positions below ``split`` are kept at ``>= tfirst`` instead (a threshold whose ties are kept up to a
    position: ``tfirst = T`` up to it, ``tmin = T + 1`` after)."""
    return _gap_histograms(keys, tmin, bs, before)


def _gap_histograms(src, tmin: int, bs, before: tuple = (0, 0)) -> dict:
    bs = tuple(int(b) for b in bs)
    for b in bs:
        if not 1 <= b <= 30:
            raise ValueError(f"gap bits must be an integer in 1..30 here, got {b!r}")
    if not bs:
        return {}
    Ms = np.array([(1 << b) - 1 for b in bs], np.int64)
    top = np.iinfo(src.dtype).max
    split, tfirst = int(before[0]), src.dtype.type(min(int(before[1]), top))
    hist, fillers = _gap_kernel(src, src.dtype.type(min(int(tmin), top)), Ms, split, tfirst)
    return {b: (hist[j, : 1 << b].copy(), int(fillers[j])) for j, b in enumerate(bs)}


_SMALL_GAPS = 4096  # gaps below this are counted in an array, larger ones (rare) listed


@njit(inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, nogil=True)
def _gap_kernel(src, tmin, Ms, split, tfirst):
    """Gap histograms (with fillers) of the kept positions, kept = ``(src[i] & 0x7FFFFFFF) >= tmin`` (a
    uint8 mask with tmin 1, or magnitude keys; ``>= tfirst`` below position ``split``). One pass counts
    the distinct gaps; each b's histogram then follows from them, not from every kept position again.

    The pass takes 64 entries at a time as a bit mask and visits only the *runs* of kept positions:
    every kept position but a run's first has gap 1 (a popcount per block), and a run's first has the
    gap back to the last kept position before it (the highest set bit below it, or the previous block's
    last). A scan that carried the last kept position through every entry was one long dependency
    chain: 2.4 M keys took 5-8 ms at any amount, this 1.5-3.5 ms. Equal by test."""
    lanes = np.zeros((2, _SMALL_GAPS), np.int64)  # two counters: equal consecutive gaps do not wait
    large = []  # gaps >= _SMALL_GAPS (rare)
    low = np.uint32(0x7FFFFFFF)
    n = src.size
    one = np.uint64(1)
    last = -1  # the last kept position before the current block
    ones = 0
    carry = np.uint64(0)  # the previous block's last entry kept (1) or not: saves visiting a run that goes on
    r = 0
    for blk in range((n + 63) >> 6):
        base = blk << 6
        m = np.uint64(0)
        t = tmin if base >= split else tfirst
        if base + 64 <= n and (base >= split or base + 64 <= split):
            for j in range(64):
                m |= np.uint64((src[base + j] & low) >= t) << np.uint64(j)
        else:  # the last block, or the one the split falls in
            for j in range(min(64, n - base)):
                t = tmin if base + j >= split else tfirst
                m |= np.uint64((src[base + j] & low) >= t) << np.uint64(j)
        if m == 0:
            carry = np.uint64(0)
            continue
        starts = m & ~((m << one) | carry)
        ones += _popcount(m) - _popcount(starts)
        s = starts
        while s:
            j = trailing_zeros(s)
            below = m & ((one << np.uint64(j)) - one)
            d = base + j - (last if below == 0 else base + 63 - leading_zeros(below))
            if d < _SMALL_GAPS:
                lanes[r & 1, d] += 1
            else:
                large.append(d)
            r += 1
            s &= s - one
        last = base + 63 - leading_zeros(m)
        carry = m >> np.uint64(63)
    small = lanes[0] + lanes[1]
    small[1] += ones
    nb = Ms.size
    hist = np.zeros((nb, Ms.max() + 1), np.int64)
    fillers = np.zeros(nb, np.int64)
    for j in range(nb):
        M = Ms[j]
        for d in range(1, _SMALL_GAPS):
            c = small[d]
            if c:
                k = (d - 1) // M
                hist[j, d - k * M] += c
                fillers[j] += k * c
        for d in large:
            k = (d - 1) // M
            hist[j, d - k * M] += 1
            fillers[j] += k
    for j in range(nb):
        hist[j, Ms[j]] += fillers[j]
    return hist, fillers


def counts(symbols, alphabet: int) -> np.ndarray:
    """``np.bincount(symbols, minlength=alphabet)`` (int64) without the GIL: numpy's holds it for the whole
    pass (about 40 ms per 10 M symbols), which stalls the window while a worker counts a large layer's codes.
    Symbols outside ``0..alphabet-1`` raise ValueError."""
    s = np.ascontiguousarray(symbols).reshape(-1)
    hist, ok = masked_bincount(s, _NO_MASK, int(alphabet))
    if not ok:
        raise ValueError(f"symbols must lie in 0..{int(alphabet) - 1}")
    return hist


_NO_MASK = np.zeros(0, np.bool_)


@njit(cache=True, nogil=True)
def masked_bincount(codes, keep, A):
    """Histogram of ``codes[keep]`` over ``0..A-1``; returns (hist, ok) with ok False if a kept code is
    outside the alphabet."""
    hist = np.zeros(A, np.int64)
    if keep.size == 0:
        for i in range(codes.size):
            c = codes[i]
            if c < 0 or c >= A:
                return hist, False
            hist[c] += 1
        return hist, True
    for i in range(codes.size):
        c = codes[i]
        kk = keep[i]
        if (c < 0 or c >= A) and kk:
            return hist, False
        hist[c if kk else 0] += kk  # no branch on the mask
    return hist, True



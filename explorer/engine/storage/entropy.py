"""An entropy coder that approaches the Shannon bound: static rANS with a byte-exact size formula.

Huffman gives every symbol a whole number of bits, so a stream where one symbol has probability
p > 0.5 (the zero code of a pruned layer, the gap 1 of a dense one) pays up to a bit per symbol more
than its entropy. Asymmetric numeral systems (Duda 2013; the "rANS" variant as in Giesen's ryg_rans)
code a symbol of probability ``f/M`` in ``log2(M/f)`` bits up to a tiny rounding loss.

Stream layout (``alphabet_size = A``, ``count = n`` known to the container, as for Huffman streams):

* **table**: ``A`` little-endian uint16, the quantized frequency ``f_s`` of every symbol (0 = absent),
  summing to ``M = 2**PROB_BITS``; :func:`quantize_frequencies` derives it from the counts
  deterministically.
* **payload**: little-endian uint32 words. The first two words are the final encoder state (low word
  first); the decoder then reads one word whenever its state falls below ``L = 2**31``. The words
  after the last one the decoder needs are zero padding up to the length :func:`payload_bytes` gives,
  which depends only on the counts, so the size is known before encoding, to the byte.

Size (exact)::

    coded_bytes(counts) = 2*A + payload_bytes(counts)        (0 for an empty stream)
    payload_bytes       = 4 * (floor(U / (32 * 2**20)) + 2)
    U                   = sum_s c_s * (cost(f_s) + 24),   cost(f) = floor(2**20 * log2(M / f)) + 1

``U`` is an upper bound on the coded information in units of 2**-20 bit: ``cost`` bounds
``log2(M/f)`` from above and 24 units bound the per-symbol rounding of a 64-bit rANS state kept in
``[2**31, 2**63)`` (``log2(1 + M/L) * 2**20 < 23.1``). Hence the payload exceeds the ideal
``sum c_s log2(M/f_s)`` bits by at most ``2.3e-5`` bit per symbol plus 64-95 bits.

The decoder checks everything it reads: the table must sum to ``M`` and give every decoded symbol a
frequency, the state must return exactly to ``L`` at the end (an integrity check on the whole
payload), and the padding must be zero; any failure raises :class:`EntropyError` (a ``ValueError``).

References
----------
J. Duda, "Asymmetric numeral systems: entropy coding combining speed of Huffman coding with
compression rate of arithmetic coding", arXiv:1311.2540, 2013. F. Giesen, "Interleaved entropy
coders", arXiv:1402.3392, 2014 (the 64-bit state with 32-bit renormalisation used here).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["PROB_BITS", "EntropyError", "quantize_frequencies", "table_bytes", "payload_bytes", "coded_bytes",
           "rans_encode", "rans_decode"]

PROB_BITS = 15
M = 1 << PROB_BITS
MAX_ALPHABET = M  # every present symbol needs a frequency >= 1
_L = 1 << 31  # lower end of the normalised state interval [L, 2**63)
_UNIT_BITS = 20
_SLACK_UNITS = 24  # >= 2**20 * log2(1 + M / L)


class EntropyError(ValueError):
    """An rANS stream or its table is inconsistent (truncated, corrupt, or not what the counts say)."""


def _counts(counts) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"counts must be 1-D, got shape {c.shape}")
    if c.size > MAX_ALPHABET:
        raise ValueError(f"alphabet of {c.size} symbols; at most {MAX_ALPHABET} are supported")
    if c.size and not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.isfinite(c)) or np.any(c != np.floor(c)):
            raise ValueError("counts must hold whole numbers")
    c = c.astype(np.int64)
    if c.size and c.min() < 0:
        raise ValueError("counts must be non-negative")
    return c


def quantize_frequencies(counts) -> np.ndarray:
    """Frequencies ``f_s`` summing to ``M = 2**PROB_BITS``, ``f_s >= 1`` exactly where ``c_s > 0``.

    ``f_s = max(1, floor(c_s * M / N))``; the remainder ``M - sum f`` is then added to (or taken from,
    never below 1) the symbols in order of decreasing count, ties by symbol index. Deterministic and
    integer-only, so the encoder, the size formula and any re-implementation agree.
    An all-zero histogram gives all zeros.
    """
    c = _counts(counts)
    f = np.zeros(c.size, np.int64)
    n = int(c.sum())
    if n == 0:
        return f
    present = c > 0
    f[present] = np.maximum(1, (c[present] * M) // n)
    diff = M - int(f.sum())
    order = np.argsort(-c, kind="stable")  # by decreasing count, ties by index
    order = order[present[order]]
    if diff > 0:
        f[order[0]] += diff
    else:
        for s in order:  # take back what the max(1, .) bumps added, from the largest first
            if diff == 0:
                break
            take = min(-diff, int(f[s]) - 1)
            f[s] -= take
            diff += take
    return f


def _cost_units(f: np.ndarray) -> np.ndarray:
    """``floor(2**20 * log2(M / f)) + 1`` for every f >= 1 (0 for f = 0): an upper bound on a symbol's bits
    in 2**-20, looked up in a table of all M values (computed once, with math.log2)."""
    global _COSTS
    if _COSTS is None:
        table = np.zeros(M + 1, np.int64)
        for fi in range(1, M + 1):
            table[fi] = math.floor((1 << _UNIT_BITS) * (PROB_BITS - math.log2(fi))) + 1
        _COSTS = table
    return _COSTS[np.asarray(f, np.int64)]


_COSTS = None


def table_bytes(alphabet_size: int) -> int:
    """Bytes of the frequency table: one uint16 per alphabet symbol."""
    return 2 * int(alphabet_size)


def payload_bytes(counts) -> int:
    """Bytes of the rANS payload for a stream with these symbol counts (0 for an empty stream)."""
    c = _counts(counts)
    if int(c.sum()) == 0:
        return 0
    f = quantize_frequencies(c)
    cost = _cost_units(f) + _SLACK_UNITS * (c > 0)
    if int(c.sum()) < (1 << 62) // (PROB_BITS + 1 << _UNIT_BITS):
        units = int(np.dot(c, cost))  # exact: the sum stays below 2**62
    else:  # a stream of hundreds of billions of symbols: Python integers
        units = sum(int(ci) * int(u) for ci, u in zip(c.tolist(), cost.tolist()))
    return 4 * (units // (32 << _UNIT_BITS) + 2)


def coded_bytes(counts, alphabet_size: int | None = None) -> int:
    """Total bytes :func:`rans_encode` returns for a stream with these counts: table + payload.

    ``alphabet_size`` defaults to ``len(counts)``; an empty stream costs 0 bytes (nothing is stored).
    """
    c = _counts(counts)
    A = c.size if alphabet_size is None else int(alphabet_size)
    if c.size > A:
        raise ValueError(f"counts name {c.size} symbols, more than the alphabet of {A}")
    if int(c.sum()) == 0:
        return 0
    return table_bytes(A) + payload_bytes(c)


@njit(cache=True, nogil=True)
def _encode(symbols, freq, cum, out_words):
    """Encode backwards; words fill ``out_words`` from the end. Returns the index of the first word
    written (the two state words included), or -1 if the buffer is too small."""
    x = np.uint64(_L)
    pos = out_words.size
    shift = np.uint64(PROB_BITS)
    for i in range(symbols.size - 1, -1, -1):
        s = symbols[i]
        f = np.uint64(freq[s])
        x_max = np.uint64(((_L >> PROB_BITS) << 32)) * f
        if x >= x_max:
            if pos == 0:
                return -1
            pos -= 1
            out_words[pos] = np.uint32(x & np.uint64(0xFFFFFFFF))
            x >>= np.uint64(32)
        x = ((x // f) << shift) + (x % f) + np.uint64(cum[s])
    if pos < 2:
        return -1
    pos -= 2
    out_words[pos] = np.uint32(x & np.uint64(0xFFFFFFFF))
    out_words[pos + 1] = np.uint32(x >> np.uint64(32))
    return pos


@njit(cache=True, nogil=True)
def _decode(words, count, freq, cum, slot_sym, out):
    """Returns the number of words consumed, -1 if the payload ran out, -2 if the final state is not L."""
    if words.size < 2:
        return -1
    x = np.uint64(words[0]) | (np.uint64(words[1]) << np.uint64(32))
    pos = 2
    mask = np.uint64(M - 1)
    shift = np.uint64(PROB_BITS)
    L = np.uint64(_L)
    for i in range(count):
        slot = x & mask
        s = slot_sym[slot]
        out[i] = s
        x = np.uint64(freq[s]) * (x >> shift) + slot - np.uint64(cum[s])
        if x < L:
            if pos >= words.size:
                return -1
            x = (x << np.uint64(32)) | np.uint64(words[pos])
            pos += 1
    if x != L:
        return -2
    return pos


@njit(cache=True, nogil=True)
def _bincount(symbols, A):
    counts = np.zeros(A, np.int64)
    for i in range(symbols.size):
        counts[symbols[i]] += 1
    return counts


def rans_encode(symbols, alphabet_size: int) -> bytes:
    """Encode a stream of symbols in ``0 .. alphabet_size-1``; ``len(result) == coded_bytes(counts)``.

    Returns ``b""`` for an empty stream.
    """
    s = np.ascontiguousarray(symbols).reshape(-1)
    A = int(alphabet_size)
    if not 1 <= A <= MAX_ALPHABET:
        raise ValueError(f"alphabet_size must be in 1..{MAX_ALPHABET}, got {alphabet_size}")
    if s.size == 0:
        return b""
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError("symbols must be integers")
    if s.dtype.kind == "u" and s.dtype.itemsize == 8:
        s = s.astype(np.int64)  # (uint64 against an int64 bound is a float comparison); others as they are
    if s.min() < 0 or s.max() >= A:
        raise ValueError(f"symbols must lie in 0..{A - 1}")
    c = _bincount(s, A)  # (np.bincount widens small integers to int64 first: 822 MB for 102.8 M codes)
    f = quantize_frequencies(c)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.int64)
    nbytes = payload_bytes(c)
    words = np.zeros(nbytes // 4, np.uint32)
    tmp = np.zeros(words.size, np.uint32)
    first = _encode(s, f, cum, tmp)
    if first < 0:  # cannot happen: payload_bytes is an upper bound (see the module docstring)
        raise EntropyError("rANS output exceeded its size bound")
    used = tmp.size - first
    words[:used] = tmp[first:]  # the stream starts at the front; zero padding at the end
    return f.astype("<u2").tobytes() + words.astype("<u4").tobytes()


def rans_decode(data, alphabet_size: int, count: int) -> np.ndarray:
    """Decode ``count`` symbols from :func:`rans_encode`'s output (int64 array).

    Raises :class:`EntropyError` if the table is malformed, the payload is truncated, too long or
    corrupt (the final state check), or the padding is not zero.
    """
    A = int(alphabet_size)
    if not 1 <= A <= MAX_ALPHABET:
        raise ValueError(f"alphabet_size must be in 1..{MAX_ALPHABET}, got {alphabet_size}")
    raw = bytes(data)
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        if raw:
            raise EntropyError("an empty rANS stream must have no bytes")
        return np.zeros(0, np.int64)
    tb = table_bytes(A)
    if len(raw) < tb + 8:
        raise EntropyError(f"rANS stream of {len(raw)} bytes is shorter than its table and state ({tb + 8})")
    if (len(raw) - tb) % 4:
        raise EntropyError("rANS payload is not a whole number of 32-bit words")
    f = np.frombuffer(raw[:tb], "<u2").astype(np.int64)
    if int(f.sum()) != M:
        raise EntropyError(f"rANS frequency table sums to {int(f.sum())}, not {M}")
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.int64)
    slot_sym = np.repeat(np.arange(A, dtype=np.int64), f)
    words = np.frombuffer(raw[tb:], "<u4").astype(np.uint32)
    out = np.empty(count, np.int64)
    used = _decode(words, count, f, cum, slot_sym, out)
    if used == -1:
        raise EntropyError("the rANS payload ends before its last symbol")
    if used == -2:
        raise EntropyError("the rANS payload is corrupt (final state check failed)")
    if np.any(words[used:]):
        raise EntropyError("the rANS payload has non-zero data after its last word")
    c = _bincount(out, A)  # (numpy's holds the GIL)
    if not np.array_equal(quantize_frequencies(c), f):
        raise EntropyError("the rANS frequency table does not match the decoded symbols")
    if len(raw) != tb + payload_bytes(c):
        raise EntropyError(f"rANS stream has {len(raw)} bytes; its counts need {tb + payload_bytes(c)}")
    return out

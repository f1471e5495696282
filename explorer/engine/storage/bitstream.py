"""Bit-level kernels: fixed-width packing and canonical Huffman encode/decode (numba-compiled).

Bits are written most significant first within each byte, and a stream is padded with zero bits to a
whole byte. Canonical Huffman codes follow :func:`explorer.engine.storage.coding.canonical_codes`: the table a
file stores is just the code length of each symbol.

Decoders never trust their input: they stop at the end of the buffer and at codes the table does not
define, and report it as a :class:`FormatError`-ready message instead of reading past the end.

numba compiles each kernel on first use (a fraction of a second; cached in ``__pycache__``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from explorer.engine.storage.coding import canonical_codes

_FAST_BITS = 13  # decode table of 2**13 entries: nearly all codes of real streams are shorter


class BitstreamError(ValueError):
    """A packed or coded stream is inconsistent (truncated, or holds an undefined code)."""


# ----------------------------------------------------------------------------------------- packing


@njit(cache=True, nogil=True)
def _pack(values, width, out):
    acc = np.uint64(0)
    nacc = 0
    pos = 0
    w = np.uint64(width)
    mask = np.uint64((1 << width) - 1)
    for i in range(values.size):
        acc = (acc << w) | (np.uint64(values[i]) & mask)
        nacc += width
        while nacc >= 8:
            nacc -= 8
            out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            pos += 1
    if nacc > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))
        pos += 1
    return pos


def packed_bytes(count: int, width: int) -> int:
    """Bytes that ``count`` values of ``width`` bits take once packed."""
    return (int(count) * int(width) + 7) // 8


def pack_fixed(values, width: int) -> bytes:
    """Pack non-negative integers (each < 2**width, width 1..32) into bytes, MSB first."""
    v = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    if not 0 <= width <= 32:
        raise ValueError(f"width must be 0..32, got {width}")
    if width == 0 or v.size == 0:
        return b""
    if v.min() < 0 or v.max() >= (1 << width):
        raise ValueError(f"values do not fit in {width} bits")
    out = np.zeros(packed_bytes(v.size, width), np.uint8)
    _pack(v, width, out)
    return out.tobytes()


@njit(cache=True, nogil=True)
def _unpack(buf, width, count, out):
    acc = np.uint64(0)
    nacc = 0
    pos = 0
    mask = np.uint64((1 << width) - 1)
    for i in range(count):
        while nacc < width:
            acc = (acc << np.uint64(8)) | np.uint64(buf[pos])
            pos += 1
            nacc += 8
        nacc -= width
        out[i] = np.int64((acc >> np.uint64(nacc)) & mask)
    return pos


def unpack_fixed(data, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`; the buffer must hold exactly ``packed_bytes(count, width)`` bytes."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if width == 0 or count == 0:
        if buf.size:
            raise BitstreamError(f"expected an empty stream, got {buf.size} bytes")
        return np.zeros(count, np.int64)
    need = packed_bytes(count, width)
    if buf.size != need:
        raise BitstreamError(f"packed stream of {count} x {width} bits needs {need} bytes, has {buf.size}")
    out = np.empty(count, np.int64)
    _unpack(buf, width, count, out)
    return out


# ----------------------------------------------------------------------------------------- Huffman


def huffman_payload_bits(symbols, lengths) -> int:
    s = np.asarray(symbols, np.int64).reshape(-1)
    return int(np.asarray(lengths, np.int64)[s].sum()) if s.size else 0


@njit(cache=True, nogil=True)
def _hencode(symbols, codes, lengths, out):
    acc = np.uint64(0)
    nacc = 0
    pos = 0
    for i in range(symbols.size):
        s = symbols[i]
        ln = lengths[s]
        c = codes[s]
        # emit in chunks of at most 32 bits so the 64-bit accumulator never overflows
        while ln > 0:
            take = ln if ln <= 32 else 32
            ln -= take
            part = (c >> np.uint64(ln)) & np.uint64((1 << take) - 1)
            acc = (acc << np.uint64(take)) | part
            nacc += take
            while nacc >= 8:
                nacc -= 8
                out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
                pos += 1
    if nacc > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))
        pos += 1
    return pos


def huffman_encode(symbols, lengths) -> bytes:
    """Encode ``symbols`` with the canonical code of ``lengths`` (every symbol used must have a length)."""
    s = np.ascontiguousarray(symbols).reshape(-1)
    if s.size and not np.issubdtype(s.dtype, np.integer) or s.dtype == np.uint64:
        s = s.astype(np.int64)  # symbols in their own integer type: no int64 copy of 100 M codes
    L = np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)
    if s.size == 0:
        return b""
    if s.min() < 0 or s.max() >= L.size or np.any(L[s] == 0):
        raise ValueError("a symbol outside the code (no code length) was given to the encoder")
    codes = canonical_codes(L)
    out = np.zeros((huffman_payload_bits(s, L) + 7) // 8, np.uint8)
    _hencode(s, codes, L, out)
    return out.tobytes()


def _decode_tables(lengths: np.ndarray):
    L = lengths.astype(np.int64)
    max_len = int(L.max())
    present = np.flatnonzero(L > 0)
    order = present[np.lexsort((present, L[present]))].astype(np.int64)  # sorted by (length, symbol)
    count = np.bincount(L[present], minlength=max_len + 1).astype(np.int64)
    count[0] = 0
    first = np.zeros(max_len + 2, np.int64)  # first canonical code of each length
    offset = np.zeros(max_len + 2, np.int64)  # index into `order` of that code
    code = 0
    idx = 0
    for ln in range(1, max_len + 1):
        code = (code + (count[ln - 1] if ln > 1 else 0)) << 1 if ln > 1 else 0
        first[ln] = code
        offset[ln] = idx
        idx += count[ln]
    fast = min(_FAST_BITS, max_len)
    # fast table: for every `fast`-bit prefix, the symbol and its length when the code fits, else -1
    tsym = np.full(1 << fast, -1, np.int64)
    tlen = np.zeros(1 << fast, np.int64)
    codes = canonical_codes(L)
    for s in order:
        ln = int(L[s])
        if ln > fast:
            break
        start = int(codes[s]) << (fast - ln)
        tsym[start:start + (1 << (fast - ln))] = s
        tlen[start:start + (1 << (fast - ln))] = ln
    return order, count, first, offset, fast, tsym, tlen, max_len


@njit(cache=True, nogil=True)
def _hdecode(buf, nbits, count_out, order, count, first, offset, fast, tsym, tlen, max_len, out):
    """Returns the bits consumed, or -1 (ran past the end) / -2 (undefined code)."""
    bitpos = 0
    for i in range(count_out):
        # peek `fast` bits (zeros past the end; a code that needs them is caught below)
        peek = 0
        for k in range(fast):
            b = bitpos + k
            bit = 0
            if b < nbits:
                bit = (buf[b >> 3] >> (7 - (b & 7))) & 1
            peek = (peek << 1) | bit
        s = tsym[peek]
        if s >= 0:
            ln = tlen[peek]
            if bitpos + ln > nbits:
                return -1
            out[i] = s
            bitpos += ln
            continue
        # slow path: canonical decoding one bit at a time
        code = 0
        found = False
        for ln in range(1, max_len + 1):
            b = bitpos + ln - 1
            if b >= nbits:
                return -1
            code = (code << 1) | ((buf[b >> 3] >> (7 - (b & 7))) & 1)
            d = code - first[ln]
            if d >= 0 and d < count[ln]:
                out[i] = order[offset[ln] + d]
                bitpos += ln
                found = True
                break
        if not found:
            return -2
    return bitpos


def huffman_decode(data, lengths, count: int) -> np.ndarray:
    """Decode ``count`` symbols coded with the canonical code of ``lengths``.

    Raises :class:`BitstreamError` if the stream ends early, holds a code the table does not define, or
    has data beyond the last symbol (more than the zero padding of the last byte).
    """
    L = np.asarray(lengths, np.int64).reshape(-1)
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if count == 0:
        if buf.size:
            raise BitstreamError("an empty coded stream must have no bytes")
        return np.zeros(0, np.int64)
    if L.size == 0 or L.max() <= 0:
        raise BitstreamError("the code table defines no symbol")
    order, cnt, first, offset, fast, tsym, tlen, max_len = _decode_tables(L)
    out = np.empty(int(count), np.int64)
    used = _hdecode(buf, buf.size * 8, int(count), order, cnt, first, offset, fast, tsym, tlen, max_len, out)
    if used == -1:
        raise BitstreamError("the coded stream ends before its last symbol")
    if used == -2:
        raise BitstreamError("the coded stream holds a code its table does not define")
    if (used + 7) // 8 != buf.size:
        raise BitstreamError(f"the coded stream has {buf.size - (used + 7) // 8} byte(s) after its last symbol")
    return out

"""Stream coders: how a gap or index stream is stored, declared once in :data:`CODERS`.

Every gap or index stream is stored the cheapest way: raw (``n * raw_bits``, fixed width, packed) or by one
of the registered coders, each of which says exactly what it costs (payload and table, to the bit) before
anything is encoded. The size accounting (:func:`stream_bits`, used by :mod:`explorer.engine.storage.size`), the
file format (encode on write, decode and check on read), the manifest's schema (the coder names it may
name) and the CLI's help read this table; :func:`register` adds a coder everywhere at once.

Built in: ``huffman`` (a canonical Huffman code: one byte of code length per alphabet symbol, then the
payload, padded to a byte) and ``rans`` (static rANS, :mod:`explorer.engine.storage.entropy`: A uint16
frequencies, then the payload). A coder's cost may never fall below ``n`` times the stream's order-0
entropy (true of any code that codes symbol by symbol): the accounting skips candidates on that bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

# the coders' kernels (numba) are imported by the functions that run them: the registry's names are read by
# the manifest's schema in commands that must answer at once (``info``)

__all__ = ["Coder", "CODERS", "register", "StreamBits", "stream_bits", "CoderError"]


class CoderError(ValueError):
    """A coded stream or its table is inconsistent; the message says what is wrong."""


@dataclass(frozen=True)
class Coder:
    """One entropy coder of gap and index streams.

    - ``cost(counts, alphabet) -> (payload_bits, table_bits)``: exactly what :attr:`encode` writes for a
      stream with this histogram (``counts``, int64, length ``alphabet``), before padding to a byte.
    - ``encode(symbols, alphabet) -> bytes``: the stored stream (table first).
    - ``decode(data, alphabet, count) -> symbols``: checks everything it reads and raises
      :class:`CoderError` (or another ``ValueError``) on a stream that does not decode to ``count`` symbols.
    """

    name: str
    summary: str
    cost: Callable
    encode: Callable
    decode: Callable
    max_alphabet: int = 1 << 16  # the largest alphabet it codes (a stream of a larger one is never given it)


CODERS: dict = {}  # name -> Coder; ties between coders go to the earlier


def register(coder: Coder) -> Coder:
    """Add (or replace) a stream coder everywhere at once."""
    CODERS[coder.name] = coder
    return coder


# ------------------------------------------------------------------------------------------- Huffman


def _huffman_cost(c: np.ndarray, alphabet: int):
    from explorer.engine.storage.coding import TABLE_BITS_PER_SYMBOL, huffman_code_lengths  # numba: on use

    return int((c * huffman_code_lengths(c)).sum()), TABLE_BITS_PER_SYMBOL * alphabet


def _huffman_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    from explorer.engine.storage.bitstream import huffman_encode  # numba: on use
    from explorer.engine.storage.coding import MAX_CODE_LENGTH, counts, huffman_code_lengths  # numba: on use

    lengths = huffman_code_lengths(counts(symbols, alphabet))
    if lengths.max(initial=0) > MAX_CODE_LENGTH:
        raise CoderError(f"a Huffman code longer than {MAX_CODE_LENGTH} bits cannot be stored")
    return lengths.astype(np.uint8).tobytes() + huffman_encode(symbols, lengths)


def _huffman_decode(data: bytes, alphabet: int, count: int) -> np.ndarray:
    from explorer.engine.storage.bitstream import huffman_decode  # numba: on use
    from explorer.engine.storage.coding import MAX_CODE_LENGTH  # numba: on use

    if len(data) < alphabet:
        raise CoderError("the stream is shorter than its code table")
    lengths = np.frombuffer(data[:alphabet], np.uint8).astype(np.int64)
    if lengths.max(initial=0) == 0:
        raise CoderError("the code table is empty")
    if lengths.max() > MAX_CODE_LENGTH:
        raise CoderError(f"a code is longer than {MAX_CODE_LENGTH} bits")
    # Kraft's inequality, exactly (a float tolerance lets 1 + 2**-60 through)
    kraft = sum(int(c) << (MAX_CODE_LENGTH - ln) for ln, c in enumerate(np.bincount(lengths)) if ln)
    if kraft > 1 << MAX_CODE_LENGTH:
        raise CoderError("the code table is not a prefix code")
    # each symbol costs at least one bit: a count beyond the payload's bits is a lie
    if count > 8 * (len(data) - alphabet) and count:
        raise CoderError(f"{count} symbols cannot fit in {len(data) - alphabet} bytes")
    return huffman_decode(data[alphabet:], lengths, count)


register(Coder("huffman", "canonical Huffman code: a byte of code length per symbol, then the payload",
               _huffman_cost, _huffman_encode, _huffman_decode))


# ---------------------------------------------------------------------------------------------- rANS


def _rans_cost(c: np.ndarray, alphabet: int):
    from explorer.engine.storage.entropy import coded_bytes, table_bytes  # numba: on use

    total = 8 * coded_bytes(c, alphabet)  # 0 for an empty stream: no table either
    table = 8 * table_bytes(alphabet) if total else 0
    return total - table, table


def _rans_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    from explorer.engine.storage.entropy import rans_encode  # numba: on use

    return rans_encode(symbols, alphabet)


def _rans_decode(data: bytes, alphabet: int, count: int) -> np.ndarray:
    from explorer.engine.storage.entropy import rans_decode  # numba: on use

    return rans_decode(data, alphabet, count)


register(Coder("rans", "static rANS (15-bit probabilities): within 0.01% of the entropy where one symbol "
               "dominates", _rans_cost, _rans_encode, _rans_decode,
               max_alphabet=1 << 15))  # every symbol of its table needs a frequency >= 1 of 2^15 (entropy.M)


# ------------------------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class StreamBits:
    """Cost of one stream stored raw and by each coder tried; the cheapest (``coder``, ``bits``) is what is
    stored. ``costs``: ``(name, payload bits, table bits)`` per coder tried, in :data:`CODERS` order."""

    raw: int
    bits: int
    coder: str = "raw"
    costs: tuple = ()

    @property
    def coded(self) -> bool:
        return self.coder != "raw"

    def cost(self, name: str) -> Optional[int]:
        """Bits of the stream stored by coder ``name`` (payload and table), None if it was not tried."""
        return next((p + t for k, p, t in self.costs if k == name), None)

    def stored_bytes(self) -> int:
        """The stream's bytes in the file: its bits padded to a byte (a coder's table is whole bytes)."""
        return (self.bits + 7) // 8

    # the parts of the built-in coders, as the size tables and tests quote them
    @property
    def huffman(self) -> int:
        return next((p for k, p, _ in self.costs if k == "huffman"), 0)

    @property
    def table(self) -> int:
        return next((t for k, _, t in self.costs if k == "huffman"), 0)

    @property
    def rans(self) -> int:
        return self.cost("rans") or 0

    def to_dict(self) -> dict:
        """The JSON of ``evaluate --json``: the built-in coders' parts as before the registry, and every
        coder's total under ``costs``."""
        return {"raw": self.raw, "huffman": self.huffman, "table": self.table, "coded": self.coded,
                "bits": self.bits, "rans": self.rans, "coder": self.coder,
                "costs": {k: p + t for k, p, t in self.costs}}


def raw_bits(count: int, width: int) -> StreamBits:
    """A stream stored raw, no coder tried."""
    return StreamBits(raw=count * width, bits=count * width)


def stream_bits(symbols_or_counts, alphabet_size: int, raw_bits: int, *, counts: bool = False,
                coders=None) -> StreamBits:
    """Bits to store a stream: raw, or by the cheapest coder where that pays (ties go to raw, then to the
    earlier coder).

    Parameters
    ----------
    symbols_or_counts : array_like of int
        The stream's symbols (each in ``0 .. alphabet_size-1``), or with ``counts=True`` its histogram
        (length ``<= alphabet_size``; missing tail entries count 0).
    alphabet_size : int
        Symbols the stream's alphabet allows (a coder's table covers all of them).
    raw_bits : int
        Bits per symbol when stored raw.
    counts : bool
        Whether the first argument is a histogram rather than the symbols.
    coders : sequence of str, optional
        The coders to try (default: every registered one). An empty stream costs 0 bits, stored raw.
    """
    from explorer.engine.storage.coding import MAX_ALPHABET, counts_array  # numba: on use

    if not (1 <= int(alphabet_size) <= MAX_ALPHABET):
        raise ValueError(f"alphabet_size must be in 1..{MAX_ALPHABET}, got {alphabet_size}")
    if int(raw_bits) < 0:
        raise ValueError(f"raw_bits must be >= 0, got {raw_bits}")
    A = int(alphabet_size)
    x = np.asarray(symbols_or_counts)
    if counts:
        c = counts_array(x)
        if c.size > A:
            if np.any(c[A:] > 0):
                raise ValueError(f"counts name symbols beyond the alphabet of {A}")
            c = c[:A]
    else:
        x = x.reshape(-1)
        if x.size and not np.issubdtype(x.dtype, np.integer):
            raise ValueError("symbols must be integers")
        x = x.astype(np.int64)
        if x.size and (x.min() < 0 or x.max() >= A):
            raise ValueError(f"symbols must lie in 0..{A - 1}")
        from explorer.engine.storage.coding import counts as symbol_counts  # numba: on use

        c = symbol_counts(x, A)  # (numpy's bincount holds the GIL)
    n = int(c.sum())
    raw = n * int(raw_bits)
    names = [k for k in CODERS if (coders is None or k in coders) and A <= CODERS[k].max_alphabet]
    costs = tuple((k, *CODERS[k].cost(c, A)) for k in names)
    options = [("raw", raw)] + ([(k, p + t) for k, p, t in costs] if n else [])
    coder, bits = min(options, key=lambda o: o[1])  # min keeps the first of equals: raw, then the earlier
    return StreamBits(raw=raw, bits=bits, coder=coder, costs=costs)

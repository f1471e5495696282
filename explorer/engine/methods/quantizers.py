"""The registry of quantization methods, :data:`QUANTIZERS`: each method declared once, with what the plan's
validation, the file format's schema and decoder, the CLI's help and the window's controls read of it.

Without torch or numba (the plan and a file's manifest are checked by commands that must answer at once:
``info``, ``--help``): the built-in methods are declared here with their file tables (numpy) and their
``quantize`` bound by :mod:`explorer.engine.methods.quantize` when it is imported (the compressor's one entry
point, :func:`~explorer.engine.methods.quantize.quantize_tensor`, is there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Quantizer:
    """One quantization method, declared once. The plan's validation (:attr:`fields`, :meth:`refuse`), the
    compressor (:attr:`quantize`), the file format (its decoding table: :attr:`write_table`,
    :attr:`check_table`, :attr:`read_table`), the CLI's help and the window's controls all read
    :data:`QUANTIZERS`; adding a method is one :func:`register` call.

    - ``quantize(weight, mask, settings) -> QuantResult`` (None for a built-in until
      :mod:`~explorer.engine.methods.quantize` binds it).
    - ``fields``: the :class:`~explorer.engine.plan.QuantSettings` fields it reads besides ``method`` (the
      window enables those controls).
    - ``check(settings, pruned) -> message or None``: why it cannot take these settings (on an element-pruned
      layer when ``pruned``: it needs a code that decodes to exactly 0).
    - ``write_table(quant, add) -> dict``: the manifest fields of its decoding table beyond ``method`` and
      ``bits``; ``add(make_bytes, nbytes)`` appends a stream and returns its index (``make_bytes`` is not
      called when only the file's size is predicted, so ``nbytes`` must be exact).
    - ``check_table(q, check, n)``: the schema of those fields (``check`` has ``int``, ``bool`` and ``stream``
      validators that raise :class:`~explorer.engine.errors.FormatError`).
    - ``read_table(q, read, codes, positions, n, name) -> values``: the decoded values of ``codes`` at
      ``positions`` (None: every position) of a tensor of ``n`` weights; ``read`` has ``floats(index, count,
      what)``, ``raw(index)`` and ``need(cond, message)``.
    - ``alphabet(bits)``: the codes the format allows; ``code_bits``: bits per code if fixed (binary 1).
    - ``read_book(q, read, name) -> values``: for a codebook quantizer, the values its codes index (the
      compressed runtime computes on the codes); None for the others.
    """

    name: str
    summary: str
    quantize: Optional[Callable]
    fields: tuple
    write_table: Callable
    check_table: Callable
    read_table: Callable
    check: Callable = lambda settings, pruned: None
    alphabet: Callable = lambda bits: 2 ** bits
    code_bits: Optional[int] = None
    read_book: Optional[Callable] = None

    def describe(self, settings) -> str:
        if self.code_bits is not None:
            return self.name
        return f"{settings.bits}b {self.name}" + (f"/{settings.init}" if "init" in self.fields else "")


QUANTIZERS: dict = {}  # name -> Quantizer, in the order the window offers them


def register(quantizer: Quantizer) -> Quantizer:
    """Add (or replace) a quantization method everywhere at once."""
    QUANTIZERS[quantizer.name] = quantizer
    return quantizer


def _f32(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def _kmeans_write(quant, add) -> dict:
    reserved = bool(quant.info.get("reserved_zero"))
    centroids = quant.codebook[1:] if reserved else quant.codebook
    return {"reserved_zero": reserved, "k": int(centroids.size),
            "codebook": add(lambda: _f32(centroids), 4 * centroids.size)}


def _kmeans_check(q: dict, check, n: int) -> None:
    reserved = check.bool(q, "reserved_zero")
    check.int(q, "k", 0, 2 ** q["bits"] - int(reserved))
    check.stream(q, "codebook")


def _book_read(book, read, codes, name):
    read.need(codes.size == 0 or codes.max() < book.size, f"{name}: a code has no codebook entry")
    return book[codes]


def _kmeans_book(q: dict, read, name):
    book = read.floats(q["codebook"], q["k"], f"{name} codebook")
    return np.concatenate([[0.0], book]) if q["reserved_zero"] else book


def _kmeans_read(q: dict, read, codes, positions, n, name):
    return _book_read(_kmeans_book(q, read, name), read, codes, name)


def _alpha_write(quant, add) -> dict:
    return {"alpha": add(lambda: _f32([quant.codebook[-1]]), 4)}


def _alpha_check(q: dict, check, n: int) -> None:
    check.stream(q, "alpha")


def _signs_book(with_zero: bool):
    def read_book(q: dict, read, name):
        (alpha,) = read.floats(q["alpha"], 1, f"{name} alpha")
        return np.array([-alpha, 0.0, alpha] if with_zero else [-alpha, alpha])
    return read_book


def _signs_read(with_zero: bool):
    book = _signs_book(with_zero)

    def read_table(q: dict, read, codes, positions, n, name):
        return _book_read(book(q, read, name), read, codes, name)
    return read_table


def _uniform_write(quant, add) -> dict:
    from explorer.engine.storage.bitstream import pack_fixed, packed_bytes  # numba: when a file is written

    sym = bool(quant.info["symmetric"])
    rows = int(quant.scales.size)
    out = {"symmetric": sym, "rows": rows, "scales": add(lambda: _f32(quant.scales), 4 * rows)}
    if not sym:
        out["zero_points"] = add(lambda: pack_fixed(quant.zero_points, quant.bits), packed_bytes(rows, quant.bits))
    return out


def _uniform_check(q: dict, check, n: int) -> None:
    symmetric = check.bool(q, "symmetric")
    check.need(q["bits"] >= 2 or not symmetric, "symmetric uniform codes need 2 bits or more")
    rows = check.int(q, "rows", 1, max(n, 1))
    check.need(n % rows == 0, f"{rows} scales do not divide {n} weights")
    check.stream(q, "scales")
    if not symmetric:
        check.stream(q, "zero_points")


def _uniform_read(q: dict, read, codes, positions, n, name):
    bits, rows = q["bits"], q["rows"]
    scales = read.floats(q["scales"], rows, f"{name} scales")
    pos = np.arange(n) if positions is None else positions
    row = pos // (n // rows) if n else pos
    if q["symmetric"]:
        qmax = 2 ** (bits - 1) - 1
        read.need(codes.size == 0 or codes.max() <= 2 * qmax, f"{name}: a code is outside the levels")
        return (codes - qmax) * scales[row]
    from explorer.engine.storage.bitstream import packed_bytes, unpack_fixed  # numba: when a file is decoded

    raw = read.raw(q["zero_points"])
    read.need(len(raw) == packed_bytes(rows, bits), f"{name}: zero points stream has wrong size")
    zp = unpack_fixed(raw, bits, rows)
    return (codes - zp[row]) * scales[row]


def _no_table(quant, add) -> dict:
    return {}  # a half-precision code is its value's bit pattern: nothing to decode it with


def _no_table_check(q: dict, check, n: int) -> None:
    pass


def _half_read(dtype: str):
    """The decoder of 16-bit codes that are float bit patterns: IEEE binary16, or bfloat16 (a float32's upper
    half)."""
    def read_table(q: dict, read, codes, positions, n, name):
        read.need(codes.size == 0 or (codes.min() >= 0 and codes.max() < 1 << 16), f"{name}: a code is not 16 bits")
        c = codes.astype(np.uint16)
        values = c.view(np.float16) if dtype == "float16" else (c.astype(np.uint32) << 16).view(np.float32)
        read.need(bool(np.isfinite(values).all()), f"{name}: a {dtype} code is not a finite number")
        return values.astype(np.float64)
    return read_table


register(Quantizer(
    "kmeans", "weight sharing: the survivors clustered into 2^bits shared values (one is 0 when pruned)",
    None,
    ("bits", "init", "max_iter", "seed"), _kmeans_write, _kmeans_check, _kmeans_read, read_book=_kmeans_book))
register(Quantizer(
    "uniform", "evenly spaced levels with float32 scales, symmetric or with a zero point, per tensor or channel",
    None,
    ("bits", "symmetric", "per_channel"), _uniform_write, _uniform_check, _uniform_read,
    check=lambda s, pruned: ("bits must be >= 2 for symmetric uniform quantization (1 bit has no symmetric "
                             "levels); use binary, or symmetric=false") if s.symmetric and s.bits < 2 else None))
register(Quantizer(
    "binary", "{-a, +a}: 1 bit a weight (no zero: not on a pruned layer)",
    None, (), _alpha_write, _alpha_check, _signs_read(False), read_book=_signs_book(False),
    check=lambda s, pruned: ("method binary cannot represent pruned weights (no zero level); use ternary, or "
                             "kmeans/uniform") if pruned else None,
    alphabet=lambda bits: 2, code_bits=1))
register(Quantizer(
    "ternary", "{-a, 0, +a}: 2 bits a weight",
    None, (), _alpha_write, _alpha_check, _signs_read(True), read_book=_signs_book(True),
    alphabet=lambda bits: 3, code_bits=2))

register(Quantizer(
    "float16", "half precision: each survivor's IEEE float16 (16 bits: 5 exponent, 10 mantissa; |w| <= 65504)",
    None, (), _no_table, _no_table_check, _half_read("float16"), alphabet=lambda bits: 1 << 16, code_bits=16))
register(Quantizer(
    "bfloat16", "brain float: each survivor's float32 rounded to its upper 16 bits (8 exponent, 7 mantissa)",
    None, (), _no_table, _no_table_check, _half_read("bfloat16"), alphabet=lambda bits: 1 << 16, code_bits=16))


__all__ = ["QUANTIZERS", "Quantizer", "register"]

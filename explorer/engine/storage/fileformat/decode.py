"""Decoding the tensors of a ``.cexp`` file that :func:`~explorer.engine.storage.fileformat.reader.read`
checked: positions, codes through their quantizer's table, raw tensors (torch and the coders' kernels)."""

from __future__ import annotations

import math

import numpy as np
import torch

from explorer.engine.errors import FormatError
from explorer.engine.methods.quantizers import QUANTIZERS
from explorer.engine.storage import bitstream
from explorer.engine.storage.coders import CODERS
from explorer.engine.storage.fileformat.dtypes import DTYPES
from explorer.engine.storage.fileformat.reader import ModelFile, entry_shape, need


def _decode_stream(mf: ModelFile, info: dict, count: int, what: str) -> np.ndarray:
    """``count`` symbols of a gap or index stream (its description checked by the schema)."""
    data = mf.stream(info["stream"])
    try:
        if info["coding"] == "raw":
            return bitstream.unpack_fixed(data, info["width"], count)
        return CODERS[info["coding"]].decode(data, info["alphabet"], count)
    except (bitstream.BitstreamError, ValueError) as exc:  # CoderError, EntropyError are ValueErrors
        raise FormatError(f"{what}: {exc}") from None


def _floats(mf, index, count, what) -> np.ndarray:
    data = mf.stream(index)
    need(len(data) == 4 * count, f"{what}: {len(data)} bytes for {count} float32 values")
    return np.frombuffer(data, "<f4").astype(np.float64)


class WeightParts:
    """A stored weight as the file holds it: ``positions`` of its stored entries (flat, increasing; None:
    every position), their ``values`` (float64), and for a codebook quantizer (k-means, binary, ternary)
    their ``codes`` and the ``book`` they index (else None). Entries include the filler zeros of a gap
    stream (their value 0)."""

    __slots__ = ("shape", "positions", "values", "codes", "book")

    def __init__(self, shape, positions, values, codes=None, book=None):
        self.shape, self.positions, self.values, self.codes, self.book = shape, positions, values, codes, book

    def dense(self) -> np.ndarray:
        out = np.zeros(math.prod(self.shape), np.float64)
        if self.positions is None:
            out[:] = self.values
        else:
            out[self.positions] = self.values
        return out


def weight_parts(mf: ModelFile, e: dict) -> WeightParts:
    """The stored entries of a pruned or quantized weight (``e``: its manifest entry, not raw storage)."""
    name = e["name"]
    enc = e["encoding"]
    n = math.prod(entry_shape(e))
    storage = enc["storage"]
    entries = enc["entries"]
    if storage == "dense":
        positions = None
    elif storage == "bitmask":
        raw = mf.stream(enc["mask"])
        need(len(raw) == (n + 7) // 8, f"{name}: bitmask of {len(raw)} bytes for {n} weights")
        keep = np.unpackbits(np.frombuffer(raw, np.uint8), count=n).astype(bool)
        positions = np.flatnonzero(keep)
        need(positions.size == entries, f"{name}: bitmask has {positions.size} survivors, manifest says {entries}")
    else:
        b = enc["gap_bits"]
        gaps = _decode_stream(mf, enc["gaps"], entries, f"{name} gaps")
        need(gaps.size == 0 or (gaps.min() >= 1 and gaps.max() <= 2 ** b - 1),
              f"{name}: a gap is outside 1..{2 ** b - 1}")
        positions = np.cumsum(gaps) - 1
        need(positions.size == 0 or positions[-1] < n, f"{name}: gaps run past the tensor's {n} weights")
    if enc["values"] == "float":
        return WeightParts(entry_shape(e), positions, _floats(mf, enc["floats"], entries, name))
    q = enc["quant"]
    codes = _decode_stream(mf, enc["index"], entries, f"{name} codes")
    quantizer, read = QUANTIZERS[q["method"]], _TableRead(mf)
    values = quantizer.read_table(q, read, codes, positions, n, name)
    book = quantizer.read_book(q, read, name) if quantizer.read_book is not None else None
    return WeightParts(entry_shape(e), positions, values, codes if book is not None else None, book)


def _decode_weight(mf: ModelFile, e: dict) -> np.ndarray:
    return weight_parts(mf, e).dense()


class _TableRead:
    """What a quantizer's ``read_table`` may read of the file (streams the schema checked)."""

    def __init__(self, mf: "ModelFile"):
        self.raw = mf.stream
        self.need = need
        self.floats = lambda index, count, what: _floats(mf, index, count, what)


def _raw_tensor(mf: ModelFile, e: dict) -> torch.Tensor:
    enc = e["encoding"]
    shape = entry_shape(e)
    sd = enc["stored_dtype"]
    data = mf.stream(enc["stream"])
    itemsize = torch.empty(0, dtype=DTYPES[sd]).element_size()
    need(len(data) == math.prod(shape) * itemsize,
          f"{e['name']}: {len(data)} bytes for {math.prod(shape)} values of {sd}")
    if sd == "bfloat16":
        t = torch.from_numpy(np.frombuffer(data, "<i2").copy()).view(torch.bfloat16)
    else:
        np_dtype = np.dtype(str(torch.empty(0, dtype=DTYPES[sd]).numpy().dtype)).newbyteorder("<")
        t = torch.from_numpy(np.frombuffer(data, np_dtype).astype(np_dtype.newbyteorder("="), copy=True))
    return t.reshape(shape).to(DTYPES[e["dtype"]])


def decode_tensors(mf: ModelFile) -> dict:
    """Every tensor of the file, decoded (name -> torch.Tensor, tied names share one tensor)."""
    out: dict = {}
    for e in mf.manifest["tensors"]:
        if "alias" in e:
            continue
        if e["encoding"]["storage"] == "raw":
            out[e["name"]] = _raw_tensor(mf, e)
        else:
            vals = _decode_weight(mf, e)
            out[e["name"]] = torch.from_numpy(vals.reshape(entry_shape(e))).to(DTYPES[e["dtype"]])
    for e in mf.manifest["tensors"]:
        if "alias" in e:  # the schema checked that it names a stored tensor
            out[e["name"]] = out[e["alias"]]
    return out


__all__ = ["decode_tensors", "weight_parts", "WeightParts"]

"""Reading a ``.cexp`` file: the header, the table and the manifest checked before anything is
allocated, and the tensors decoded.
"""

from __future__ import annotations

import math
import os
import stat
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from explorer.engine.errors import FormatError, LoadError, NotFound
from explorer.engine.methods.quantize import QUANTIZERS
from explorer.engine.storage import bitstream, jsonio
from explorer.engine.storage.coders import CODERS
from explorer.engine.storage.fileformat.layout import (EXPANSION_ALLOWANCE, HEADER, MAGIC, MAJOR, MANIFEST_EXPANSION,
                                                       MAX_EXPANSION, MAX_FILE, MAX_MANIFEST, TABLE_ENTRY)
from explorer.engine.storage.fileformat.manifest import DTYPES as _DTYPES
from explorer.engine.storage.fileformat.manifest import check as check_manifest


@dataclass
class ModelFile:
    """A file whose header, stream table, checksums and manifest schema (:mod:`.manifest`) were checked."""
    manifest: dict
    size: int
    data: memoryview = field(repr=False, default=None)
    data_start: int = 0
    offsets: list = field(default_factory=list)  # (start, length) of each stream, absolute
    tensor_streams: dict = field(default_factory=dict)  # stored tensor -> the streams its encoding uses

    def stream(self, index: int) -> bytes:
        start, length = self.offsets[index]  # the schema checked every index the manifest names
        return bytes(self.data[start:start + length])


def need(cond, msg):
    if not cond:
        raise FormatError(msg)


def read(path) -> ModelFile:
    """Read and validate a file's header, manifest and stream table (not the tensors): a regular file of at
    most :data:`MAX_FILE` bytes."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block, /dev/zero would never end
            raise LoadError(f"{path}: not a regular file")
        if st.st_size > MAX_FILE:
            raise LoadError(f"{path}: {st.st_size:,} bytes is larger than this reader accepts ({MAX_FILE:,})")
        with open(path, "rb") as fh:
            raw = fh.read(st.st_size + 1)  # (read(n) reserves n bytes at once: never the cap itself)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc}") from None
    need(len(raw) == st.st_size, f"{path}: changed size while being read ({st.st_size:,} -> {len(raw):,} bytes)")
    try:
        return parse(raw)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def parse(raw: bytes) -> ModelFile:
    """Validate a whole file held in memory; every length is checked against the file before use, and the
    manifest against its schema (:func:`explorer.engine.storage.fileformat.manifest.check`), so that everything after this
    (``info``, decoding, loading) sees only a checked manifest."""
    size = len(raw)
    need(size >= HEADER.size, f"not a compressed model file (only {size} bytes)")
    magic, major, minor, nstreams, table_crc, mlen, mcrc = HEADER.unpack_from(raw, 0)
    need(magic == MAGIC, "not a compressed model file (wrong magic bytes)")
    need(major == MAJOR, f"format version {major}.{minor} is not supported (this reader: {MAJOR}.x)")
    table_end = HEADER.size + TABLE_ENTRY.size * nstreams
    need(table_end <= size, f"the header declares {nstreams:,} streams, more than a file of {size:,} bytes "
                             "can list: the file is truncated or lies")
    table_bytes = raw[HEADER.size:table_end]
    need(zlib.crc32(table_bytes) == table_crc, "the stream table is corrupt (checksum mismatch)")
    need(mlen <= MAX_MANIFEST and table_end + mlen <= size,
          f"the header declares a manifest of {mlen:,} bytes, but the file has {size - table_end:,} after the "
          "stream table")
    body = raw[table_end:table_end + mlen]
    need(zlib.crc32(body) == mcrc, "the manifest is corrupt (checksum mismatch)")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body, min(MAX_MANIFEST, MANIFEST_EXPANSION * mlen + (1 << 20)))
    except zlib.error as exc:
        raise FormatError(f"the manifest cannot be read ({exc})") from None
    need(not inflater.unconsumed_tail and inflater.eof, "the manifest is larger than allowed or cut short")
    try:
        manifest = jsonio.loads(text)
    except jsonio.JSONLimit as exc:
        raise FormatError(f"the manifest cannot be read: {exc}") from None
    used = check_manifest(manifest, nstreams, size, MAX_EXPANSION * size + EXPANSION_ALLOWANCE)
    data_start = table_end + mlen
    view = memoryview(raw)
    offsets = []
    pos = data_start
    for i in range(nstreams):
        length, crc = TABLE_ENTRY.unpack_from(raw, HEADER.size + TABLE_ENTRY.size * i)
        need(pos + length <= size, f"stream {i} ({length:,} bytes) runs past the end of the file: the file is "
                                    "truncated or lies")
        need(zlib.crc32(view[pos:pos + length]) == crc, f"stream {i} is corrupt (checksum mismatch)")
        offsets.append((pos, length))
        pos += length
    need(pos == size, f"the file has {size - pos:,} bytes after its last stream")
    return ModelFile(manifest, size, view, data_start, offsets, used)


def entry_shape(entry) -> tuple:
    return tuple(entry["shape"])


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


def _decode_weight(mf: ModelFile, e: dict) -> np.ndarray:
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
        vals = _floats(mf, enc["floats"], entries, name)
    else:
        vals = _dequantize(mf, enc, positions, n, entries, name)
    out = np.zeros(n, np.float64)
    if positions is None:
        out[:] = vals
    else:
        out[positions] = vals
    return out


class _TableRead:
    """What a quantizer's ``read_table`` may read of the file (streams the schema checked)."""

    def __init__(self, mf: "ModelFile"):
        self.raw = mf.stream
        self.need = need
        self.floats = lambda index, count, what: _floats(mf, index, count, what)


def _dequantize(mf, enc, positions, n, entries, name) -> np.ndarray:
    q = enc["quant"]
    codes = _decode_stream(mf, enc["index"], entries, f"{name} codes")
    return QUANTIZERS[q["method"]].read_table(q, _TableRead(mf), codes, positions, n, name)


def _raw_tensor(mf: ModelFile, e: dict) -> torch.Tensor:
    enc = e["encoding"]
    shape = entry_shape(e)
    sd = enc["stored_dtype"]
    data = mf.stream(enc["stream"])
    itemsize = torch.empty(0, dtype=_DTYPES[sd]).element_size()
    need(len(data) == math.prod(shape) * itemsize,
          f"{e['name']}: {len(data)} bytes for {math.prod(shape)} values of {sd}")
    if sd == "bfloat16":
        t = torch.from_numpy(np.frombuffer(data, "<i2").copy()).view(torch.bfloat16)
    else:
        np_dtype = np.dtype(str(torch.empty(0, dtype=_DTYPES[sd]).numpy().dtype)).newbyteorder("<")
        t = torch.from_numpy(np.frombuffer(data, np_dtype).astype(np_dtype.newbyteorder("="), copy=True))
    return t.reshape(shape).to(_DTYPES[e["dtype"]])


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
            out[e["name"]] = torch.from_numpy(vals.reshape(entry_shape(e))).to(_DTYPES[e["dtype"]])
    for e in mf.manifest["tensors"]:
        if "alias" in e:  # the schema checked that it names a stored tensor
            out[e["name"]] = out[e["alias"]]
    return out


# =========================================================================================== rebuilding


def is_model_file(path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def summary(mf: ModelFile) -> dict:
    """What `compression-explorer info` prints: architecture, plan and per-tensor encodings and bytes
    (from a manifest the parser checked: nothing here can fail)."""
    rows = []
    for e in mf.manifest["tensors"]:
        enc = e.get("encoding")
        if enc is None:
            desc = "alias of " + e["alias"]
        elif enc["storage"] == "raw":
            desc = f"raw {enc['stored_dtype']}"
        else:
            desc = f"{enc['storage']}, {enc['values']}"
            if enc["values"] == "codes":
                q = enc["quant"]
                desc += f" ({q['method']} {q['bits']}b, {enc['index']['coding']})"
            if enc["storage"] == "gaps":
                desc += f", {enc['gap_bits']}-bit gaps ({enc['gaps']['coding']})"
        used = mf.tensor_streams.get(e["name"], ())
        rows.append({"name": e["name"], "shape": e["shape"], "encoding": desc,
                     "bytes": sum(mf.offsets[i][1] for i in used)})
    return {"file_bytes": mf.size, "header_and_manifest_bytes": mf.data_start,
            "architecture": {k: v for k, v in mf.manifest["architecture"].items() if k != "stream"},
            "producer": mf.manifest["producer"], "plan": mf.manifest["plan"],
            "accounting": mf.manifest["accounting"], "tensors": rows}

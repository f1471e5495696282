"""Reading a ``.cexp`` file: the header, the table and the manifest checked before anything is
allocated (:func:`read`, :func:`parse`), and what ``info`` prints of it (:func:`summary`). Without torch or
numba: ``info`` answers at once. The tensors are decoded by :mod:`.decode`.
"""

from __future__ import annotations

import math

import os
import stat
import zlib
from dataclasses import dataclass, field

from explorer.engine.errors import FormatError, LoadError, NotFound
from explorer.engine.storage import jsonio
from explorer.engine.storage.fileformat.layout import (EXPANSION_ALLOWANCE, HEADER, MAGIC, MAJOR, MANIFEST_EXPANSION,
                                                       MAX_EXPANSION, MAX_FILE, MAX_MANIFEST, TABLE_ENTRY)
from explorer.engine.storage.fileformat.manifest import DTYPE_BYTES
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
    # what the loaded model's tensors hold when every one is decoded (an alias shares its tensor)
    resident = sum(math.prod(e["shape"]) * DTYPE_BYTES[e["dtype"]] for e in mf.manifest["tensors"] if "alias" not in e)
    return {"file_bytes": mf.size, "header_and_manifest_bytes": mf.data_start, "dense_resident_bytes": resident,
            "architecture": {k: v for k, v in mf.manifest["architecture"].items() if k != "stream"},
            "producer": mf.manifest["producer"], "plan": mf.manifest["plan"],
            "accounting": mf.manifest["accounting"], "tensors": rows}

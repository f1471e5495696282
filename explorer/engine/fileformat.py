"""The compressed model file (``.cexp``): really smaller, loads back runnable, safe to read.

Layout (all integers little-endian)::

    offset 0   magic       8 bytes  89 43 45 58 0D 0A 1A 0A   ("\\x89CEX\\r\\n\\x1a\\n")
           8   major       u16      format version (this reader: 1)
          10   minor       u16
          12   streams     u32      number of streams, N
          16   table crc   u32      CRC-32 of the stream table
          20   manifest    u32      bytes of the manifest (zlib-compressed UTF-8 JSON), M
          24   crc         u32      CRC-32 of those M bytes
          28   table       N x (u64 length, u32 CRC-32)   the streams, in order
               manifest    M bytes
               data        the N streams back to back; the file ends with the last one

The manifest names the architecture, the edits that turn it into the compressed one (resized modules,
low-rank factor chains), and every tensor with its encoding and its streams. Each stream is listed with
its length and CRC-32 in the binary table (so the manifest's size does not depend on checksums); the streams
tile the data exactly.

A weight tensor is stored exactly as the size accounting (:mod:`explorer.engine.size`) chose for the
"coded" stage: positions as a bitmask or as b-bit gaps with filler entries (or not at all when dense),
values as float32 or as quantization codes, and each gap or code stream either packed raw or Huffman
coded (one byte of code length per alphabet symbol, then the canonical-code payload). Quantization
tables (k-means codebooks, binary/ternary alpha, uniform scales and zero points) are streams too. Every
other tensor (biases, norms, buffers) is stored raw, float32 by default or float16 on request.

There is no pickle anywhere. The reader checks the header, the manifest checksum, every stream's
bounds and checksum and every declared size against the file before it allocates, and turns any
inconsistency into one :class:`FormatError`.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import stat
import struct
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from explorer import __version__

from . import bitstream, jsonio
from .atomic import atomic_open
from .coders import CODERS, CoderError, raw_bits
from .coding import gap_stream
from .cache import Recent
from .errors import ExplorerError, FormatError, LoadError
from .factories import call_factory
from .manifest import DTYPES as _DTYPES
from .manifest import FLOAT_DTYPES, FORMAT_NAME
from .manifest import RESIZE_ATTRS as _RESIZE_ATTRS
from .manifest import check as check_manifest
from .metrics import run_model
from .progress import report
from .quantize import QUANTIZERS
from .samples import SAMPLE_FACTORIES

MAGIC = b"\x89CEX\r\n\x1a\n"
MAJOR, MINOR = 1, 0
HEADER = struct.Struct("<8sHHIIII")
TABLE_ENTRY = struct.Struct("<QI")
MAX_MANIFEST = 64 << 20
#: a manifest inflates at most this many times, plus 1 MB (the samples' inflate 3x, 4,200 near-identical
#: tensor entries 26x): a zlib bomb of ``{},{},...`` would otherwise build millions of Python objects
#: (gigabytes) from a file of a few kilobytes
MANIFEST_EXPANSION = 64
#: a file may not declare more decoded bytes than this many times its own size (plus a fixed allowance):
#: no real model compresses that far, and a lying header cannot make the reader allocate without bound.
MAX_EXPANSION = 4096
EXPANSION_ALLOWANCE = 64 << 20
#: the largest file the reader takes in: it is read whole, and decoded it may take many times more
MAX_FILE = 4 << 30


def _dtype_name(dtype: torch.dtype) -> str:
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise ExplorerError(f"tensors of dtype {dtype} cannot be stored")


# =========================================================================================== writing


class _Streams:
    """The data region being laid out. In a dry run (``dry=True``) nothing is encoded: each stream's
    length is what the size accounting predicts, which is how :func:`predicted_bytes` works."""

    def __init__(self, dry: bool = False):
        self.dry = dry
        self.chunks: list = []
        self.table: list = []
        self.offset = 0

    def add(self, make, predicted: int) -> int:
        """Append a stream: ``make()`` returns its bytes (not called in a dry run)."""
        if self.dry:
            length, crc = int(predicted), 0
        else:
            data = bytes(make())
            length, crc = len(data), zlib.crc32(data)
            self.chunks.append(data)
        self.table.append((length, crc))
        self.offset += length
        return len(self.table) - 1


def _coded_stream(streams: _Streams, symbols, alphabet: int, width: int, sb) -> dict:
    """A gap or index stream, raw or by the coder the accounting (``sb``: StreamBits) chose."""
    if sb.coded:
        coder = CODERS[sb.coder]

        def make():
            try:
                return coder.encode(symbols(), alphabet)
            except CoderError as exc:
                raise ExplorerError(str(exc)) from None

        return {"coding": sb.coder, "alphabet": alphabet, "stream": streams.add(make, sb.stored_bytes())}
    return {"coding": "raw", "width": width,
            "stream": streams.add(lambda: bitstream.pack_fixed(symbols(), width), sb.stored_bytes())}


def _f32(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def _side(quant, streams: _Streams) -> dict:
    """The quantizer's decoding table, as its :class:`~explorer.engine.quantize.Quantizer` stores it."""
    method = QUANTIZERS.get(quant.method)
    if method is None:
        raise ExplorerError(f"unknown quantization method {quant.method!r}")
    return {"method": quant.method, "bits": quant.bits, **method.write_table(quant, streams.add)}


def _encode_weight(t, weight: torch.Tensor, streams: _Streams) -> dict:
    """Encode one compressed weight tensor exactly as the accounting's 'coded' stage chose."""
    st = t.sizes.stages["coded"]
    n = t.numel
    if t.sizes_only and not streams.dry:
        raise ExplorerError(f"{t.name}: only its sizes were measured; compress the model to write it")
    entries = int(st["entries"])
    enc: dict = {"storage": st["format"], "values": st["values"], "entries": entries}
    cache: dict = {}

    def mask():
        return np.ones(n, bool) if t.mask is None else np.asarray(t.mask, bool).reshape(-1)

    def layout():
        """(positions of the stored entries, which are fillers, gaps) — computed once, when encoding."""
        if "pos" not in cache:
            keep = mask()
            if st["format"] == "dense":
                cache.update(pos=np.arange(n), fill=~keep, gaps=None)
            elif st["format"] == "bitmask":
                p = np.flatnonzero(keep)
                cache.update(pos=p, fill=np.zeros(p.size, bool), gaps=None)
            else:
                gaps, fill = gap_stream(np.flatnonzero(keep), int(st["gap_bits"]))
                cache.update(pos=np.cumsum(gaps) - 1, fill=fill, gaps=gaps)
            if cache["pos"].size != entries:
                raise ExplorerError(f"{t.name}: {cache['pos'].size} entries encoded, {entries} accounted")
        return cache

    if st["format"] == "bitmask":
        enc["mask"] = streams.add(lambda: np.packbits(mask()).tobytes(), (n + 7) // 8)
    elif st["format"] == "gaps":
        b = int(st["gap_bits"])
        enc["gap_bits"] = b
        enc["gaps"] = _coded_stream(streams, lambda: layout()["gaps"], 2 ** b, b,
                                    st["gap_stream"] or raw_bits(entries, b))
    if st["values"] == "float":
        enc["floats"] = streams.add(
            lambda: _f32(weight.detach().reshape(-1).to(torch.float32).cpu().numpy()[layout()["pos"]]),
            4 * entries)
    else:
        quant = t.quant

        def codes():
            lay = layout()
            c = np.asarray(quant.codes, np.int64)[lay["pos"]]
            c[lay["fill"]] = quant.zero_code if quant.zero_code is not None else 0
            return c

        enc["index"] = _coded_stream(streams, codes, quant.alphabet_size, quant.bits,
                                     st["index_stream"] or raw_bits(entries, quant.bits))
        enc["quant"] = _side(quant, streams)
    return enc


def _architecture(loaded, compressed, streams: _Streams) -> dict:
    kind = getattr(loaded, "kind", "")
    if kind in ("sample", "factory", "state_dict", "compressed") and loaded.factory:
        kwargs = dict(loaded.factory_kwargs or {})
        try:
            json.dumps(kwargs)
        except TypeError:
            raise ExplorerError(f"factory arguments {sorted(kwargs)} are not JSON values; the file cannot "
                                "name how to rebuild the architecture") from None
        arch = {"kind": "factory", "factory": loaded.factory, "kwargs": kwargs}
        if kind == "sample" or (kind == "compressed" and loaded.meta.get("sample")):
            arch["sample"] = loaded.meta.get("name") or loaded.meta.get("sample") or loaded.source
        return arch
    # TorchScript, or a trusted pickle: carry the graph itself, with every tensor zeroed (they compress to
    # almost nothing) — the real values come from our streams.
    model = compressed.model
    scripted = model if isinstance(model, torch.jit.ScriptModule) else None
    signature = None
    if scripted is None:
        # Scripting the same class again names it anew (``___torch_mangle_N``, N counting up in the process),
        # so the archive of the same architecture could differ by a byte between the size predicted and the
        # file written. One archive per architecture (module types, state names, shapes, dtypes) is kept.
        signature = _architecture_signature(model)
        blob = _SCRIPTED_BLOBS.get(signature)
        if blob is not None:
            return {"kind": "torchscript", "stream": streams.add(lambda: blob, len(blob))}
        try:
            scripted = torch.jit.script(model)
        except Exception as exc:
            raise ExplorerError("this model has no factory and cannot be scripted "
                                f"({type(exc).__name__}); load it from a state_dict with --factory so the "
                                "file can name its architecture") from None
    blob = _GRAPH_BLOBS.get(scripted) if scripted is model else None
    if blob is None:
        blank = copy.deepcopy(scripted)
        with torch.no_grad():
            for _, tensor in blank.state_dict().items():
                tensor.zero_()
        buf = io.BytesIO()
        torch.jit.save(blank, buf)
        blob = zlib.compress(_strip_debug(buf.getvalue()), 9)
        if scripted is model:  # a scripted graph cannot change: the next save of this module reuses it
            _GRAPH_BLOBS[scripted] = blob
        elif signature is not None:
            _SCRIPTED_BLOBS.put(signature, blob)
    return {"kind": "torchscript", "stream": streams.add(lambda: blob, len(blob))}


def _architecture_signature(model: nn.Module) -> tuple:
    """What the zeroed TorchScript archive of an eager model depends on: its modules' names and classes,
    and its state's names, shapes and dtypes (not the values: they are zeroed)."""
    return (tuple((name, type(m)) for name, m in model.named_modules()),
            tuple((name, tuple(t.shape), t.dtype) for name, t in model.state_dict(keep_vars=True).items()))


# ScriptModule -> its zeroed, compressed archive (the window predicts the file size after every change)
_GRAPH_BLOBS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SCRIPTED_BLOBS = Recent(16)  # an eager model's architecture signature -> the archive scripted from it


def _strip_debug(archive: bytes) -> bytes:
    """The TorchScript archive without its ``*.debug_pkl`` source maps (error messages only), stored
    uncompressed so that the zlib pass over the whole sees the zeroed tensors and the code directly."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            if not item.filename.endswith(".debug_pkl"):
                dst.writestr(item.filename, src.read(item.filename))
    return out.getvalue()


def _edits(compressed) -> dict:
    """What turns the factory's architecture into the compressed one."""
    model = compressed.model
    modules = dict(model.named_modules())
    resize, replace = {}, {}
    for name, layer in compressed.layers.items():
        if layer.structural:
            for mod_name in {layer.structural.get("producer", name), name, *layer.structural.get("coupled", [])}:
                mod = modules.get(mod_name)
                if mod is None or isinstance(mod, nn.Sequential):
                    continue
                attrs = {a: getattr(mod, a) for a in _RESIZE_ATTRS if isinstance(getattr(mod, a, None), int)}
                if isinstance(mod, nn.LayerNorm):
                    attrs["normalized_shape"] = list(mod.normalized_shape)
                resize[mod_name] = attrs
        if layer.lowrank:
            replace[name] = [_module_spec(m) for m in modules[name]]
    return {"resize": resize, "replace": replace}


def _module_spec(m: nn.Module) -> dict:
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
                "padding_mode": m.padding_mode}
    if isinstance(m, nn.Embedding):
        return {"type": "Embedding", "num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                "padding_idx": m.padding_idx}
    raise ExplorerError(f"a factor of type {type(m).__name__} cannot be described in the file")


def _stored_dtype(dtype: torch.dtype, half: bool) -> torch.dtype:
    """The dtype the file stores a state entry in when it is not a compressed weight: float16 for
    floating entries under ``half``, else float64 and float16 as they are, other floats as float32, and
    integers and booleans as they are."""
    if not dtype.is_floating_point:
        return dtype
    if half:
        return torch.float16
    return dtype if dtype in (torch.float64, torch.float16) else torch.float32


def _stored(tensor: torch.Tensor, half: bool) -> torch.Tensor:
    """A state entry that is not a compressed weight, as the file stores it."""
    return tensor.detach().cpu().to(_stored_dtype(tensor.dtype, half))


class _StateEntry(NamedTuple):
    """One state_dict entry as the file lays it out."""
    name: str
    tensor: torch.Tensor
    shape: list
    dtype: str
    storage: Optional[tuple]  # what identifies its storage (tied tensors share it); None when empty
    stored_dtype: str  # how it is stored when raw (not a compressed weight)
    stored_bytes: int


def _state_entries(model: nn.Module, half: bool) -> list:
    """The model's state_dict entries as :class:`_StateEntry` records."""
    out = []
    for name, tensor in model.state_dict(keep_vars=False).items():
        storage = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride())) \
            if tensor.numel() else None
        stored = _stored_dtype(tensor.dtype, half)
        out.append(_StateEntry(name, tensor, list(tensor.shape), _dtype_name(tensor.dtype), storage,
                               _dtype_name(stored), tensor.numel() * stored.itemsize))
    return out


def _state_layout(model: nn.Module, half: bool) -> list:
    """:func:`_state_entries` for a dry run (the window's size preview, on the same model after every
    release), reused while the model's parameters and buffers are the same tensors with the same shapes:
    building it walks the whole state_dict, which was half of a re-measurement's time."""
    tensors = list(model.parameters()) + list(model.buffers())
    fingerprint = (half, tuple((id(t), t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors))
    try:
        hit = _LAYOUTS.get(model)
    except TypeError:  # not weak-referenceable
        hit = None
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    layout = _state_entries(model, half)
    try:
        _LAYOUTS[model] = (fingerprint, layout)
    except TypeError:
        pass
    return layout


_LAYOUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _build_manifest(loaded, compressed, half: bool, dry: bool = False):
    streams = _Streams(dry)
    arch = _architecture(loaded, compressed, streams)
    weights = {t.name: t for layer in compressed.layers.values() for t in layer.tensors}
    # what is written is read from the model itself, never from a memo
    layout = _state_layout(compressed.model, half) if dry else _state_entries(compressed.model, half)
    seen: dict = {}
    tensors = []
    for e in layout:
        entry: dict = {"name": e.name, "shape": list(e.shape), "dtype": e.dtype}
        if e.storage is not None and e.storage in seen:  # tied: the same storage under two names
            entry["alias"] = seen[e.storage]
        elif e.name in weights:
            entry["encoding"] = _encode_weight(weights[e.name], e.tensor, streams)
            seen[e.storage] = e.name
        else:
            stream = streams.add(lambda t=e.tensor: _tensor_bytes(_stored(t, half)), e.stored_bytes)
            entry["encoding"] = {"storage": "raw", "stored_dtype": e.stored_dtype, "stream": stream}
            if e.storage is not None:
                seen[e.storage] = e.name
        tensors.append(entry)
    bits = compressed.bits
    manifest = {"format": FORMAT_NAME, "version": [MAJOR, MINOR], "producer": f"compression-explorer {__version__}",
                "architecture": arch, "edits": _edits(compressed), "plan": compressed.plan.to_dict(),
                "tensors": tensors,
                "accounting": {"dense_bits": bits["dense"], "coded_bits": bits["coded"]}}
    return manifest, streams


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _manifest_bytes(manifest: dict) -> bytes:
    text = json.dumps(manifest, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")
    return zlib.compress(text, 9)


def _pack_head(manifest_body: bytes, table: list) -> bytes:
    table_bytes = b"".join(TABLE_ENTRY.pack(length, crc) for length, crc in table)
    return HEADER.pack(MAGIC, MAJOR, MINOR, len(table), zlib.crc32(table_bytes), len(manifest_body),
                       zlib.crc32(manifest_body)) + table_bytes


def encode(compressed, loaded, half: bool = False) -> bytes:
    """The complete file as bytes (what :func:`save` writes)."""
    manifest, streams = _build_manifest(loaded, compressed, half)
    body = _manifest_bytes(manifest)
    return _pack_head(body, streams.table) + body + b"".join(streams.chunks)


def predicted_bytes(compressed, loaded=None, half: bool = False) -> int:
    """The file size the size accounting predicts, header and manifest included.

    No weight stream is encoded: each stream's length is the accounting's bits rounded up to whole bytes
    (checksums are fixed-width hex, so the manifest's length does not depend on them). :func:`save`
    writes exactly this many bytes when the accounting is exact, which the tests check.
    """
    manifest, streams = _build_manifest(loaded, compressed, half, dry=True)
    return (HEADER.size + TABLE_ENTRY.size * len(streams.table) + len(_manifest_bytes(manifest))
            + sum(length for length, _ in streams.table))


def save(compressed, path, loaded=None, half: bool = False, progress=None) -> int:
    """Write ``compressed`` to ``path`` atomically; return the bytes written.

    ``loaded`` (the :class:`~explorer.engine.loading.LoadedModel` it came from) tells how the architecture
    is rebuilt: a factory reference, or the scripted graph itself. ``half`` stores the uncompressed
    tensors (biases, norms) as float16.
    """
    report(progress, 0.0, "encoding")
    data = encode(compressed, loaded, half)
    report(progress, 0.8, "writing")  # the last point where a cancel leaves ``path`` as it was
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    if progress is not None:
        progress(1.0, "written")  # too late to cancel: the file is there
    return len(data)


# =========================================================================================== reading


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


def _need(cond, msg):
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
        raise LoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc}") from None
    _need(len(raw) == st.st_size, f"{path}: changed size while being read ({st.st_size:,} -> {len(raw):,} bytes)")
    try:
        return parse(raw)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def parse(raw: bytes) -> ModelFile:
    """Validate a whole file held in memory; every length is checked against the file before use, and the
    manifest against its schema (:func:`explorer.engine.manifest.check`), so that everything after this
    (``info``, decoding, loading) sees only a checked manifest."""
    size = len(raw)
    _need(size >= HEADER.size, f"not a compressed model file (only {size} bytes)")
    magic, major, minor, nstreams, table_crc, mlen, mcrc = HEADER.unpack_from(raw, 0)
    _need(magic == MAGIC, "not a compressed model file (wrong magic bytes)")
    _need(major == MAJOR, f"format version {major}.{minor} is not supported (this reader: {MAJOR}.x)")
    table_end = HEADER.size + TABLE_ENTRY.size * nstreams
    _need(table_end <= size, f"the header declares {nstreams:,} streams, more than a file of {size:,} bytes "
                             "can list: the file is truncated or lies")
    table_bytes = raw[HEADER.size:table_end]
    _need(zlib.crc32(table_bytes) == table_crc, "the stream table is corrupt (checksum mismatch)")
    _need(mlen <= MAX_MANIFEST and table_end + mlen <= size,
          f"the header declares a manifest of {mlen:,} bytes, but the file has {size - table_end:,} after the "
          "stream table")
    body = raw[table_end:table_end + mlen]
    _need(zlib.crc32(body) == mcrc, "the manifest is corrupt (checksum mismatch)")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body, min(MAX_MANIFEST, MANIFEST_EXPANSION * mlen + (1 << 20)))
    except zlib.error as exc:
        raise FormatError(f"the manifest cannot be read ({exc})") from None
    _need(not inflater.unconsumed_tail and inflater.eof, "the manifest is larger than allowed or cut short")
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
        _need(pos + length <= size, f"stream {i} ({length:,} bytes) runs past the end of the file: the file is "
                                    "truncated or lies")
        _need(zlib.crc32(view[pos:pos + length]) == crc, f"stream {i} is corrupt (checksum mismatch)")
        offsets.append((pos, length))
        pos += length
    _need(pos == size, f"the file has {size - pos:,} bytes after its last stream")
    return ModelFile(manifest, size, view, data_start, offsets, used)


def _shape(entry) -> tuple:
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
    _need(len(data) == 4 * count, f"{what}: {len(data)} bytes for {count} float32 values")
    return np.frombuffer(data, "<f4").astype(np.float64)


def _decode_weight(mf: ModelFile, e: dict) -> np.ndarray:
    name = e["name"]
    enc = e["encoding"]
    n = math.prod(_shape(e))
    storage = enc["storage"]
    entries = enc["entries"]
    if storage == "dense":
        positions = None
    elif storage == "bitmask":
        raw = mf.stream(enc["mask"])
        _need(len(raw) == (n + 7) // 8, f"{name}: bitmask of {len(raw)} bytes for {n} weights")
        keep = np.unpackbits(np.frombuffer(raw, np.uint8), count=n).astype(bool)
        positions = np.flatnonzero(keep)
        _need(positions.size == entries, f"{name}: bitmask has {positions.size} survivors, manifest says {entries}")
    else:
        b = enc["gap_bits"]
        gaps = _decode_stream(mf, enc["gaps"], entries, f"{name} gaps")
        _need(gaps.size == 0 or (gaps.min() >= 1 and gaps.max() <= 2 ** b - 1),
              f"{name}: a gap is outside 1..{2 ** b - 1}")
        positions = np.cumsum(gaps) - 1
        _need(positions.size == 0 or positions[-1] < n, f"{name}: gaps run past the tensor's {n} weights")
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
        self.need = _need
        self.floats = lambda index, count, what: _floats(mf, index, count, what)


def _dequantize(mf, enc, positions, n, entries, name) -> np.ndarray:
    q = enc["quant"]
    codes = _decode_stream(mf, enc["index"], entries, f"{name} codes")
    return QUANTIZERS[q["method"]].read_table(q, _TableRead(mf), codes, positions, n, name)


def _raw_tensor(mf: ModelFile, e: dict) -> torch.Tensor:
    enc = e["encoding"]
    shape = _shape(e)
    sd = enc["stored_dtype"]
    data = mf.stream(enc["stream"])
    itemsize = torch.empty(0, dtype=_DTYPES[sd]).element_size()
    _need(len(data) == math.prod(shape) * itemsize,
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
            out[e["name"]] = torch.from_numpy(vals.reshape(_shape(e))).to(_DTYPES[e["dtype"]])
    for e in mf.manifest["tensors"]:
        if "alias" in e:  # the schema checked that it names a stored tensor
            out[e["name"]] = out[e["alias"]]
    return out


# =========================================================================================== rebuilding


def _build_module(spec: dict) -> nn.Module:
    """A factor of a low-rank chain, on the meta device, from a spec :func:`manifest.module_spec` checked."""
    kind = spec["type"]
    if kind == "Linear":
        return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], device="meta")
    if kind in ("Conv1d", "Conv2d"):
        cls = nn.Conv1d if kind == "Conv1d" else nn.Conv2d
        padding = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
        return cls(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]),
                   stride=tuple(spec["stride"]), padding=padding, dilation=tuple(spec["dilation"]),
                   groups=spec["groups"], bias=spec["bias"], padding_mode=spec["padding_mode"], device="meta")
    return nn.Embedding(spec["num_embeddings"], spec["embedding_dim"], padding_idx=spec["padding_idx"],
                        device="meta")


#: the attributes ``edits.resize`` may set, per module type, and the shapes of its state they imply
_RESIZABLE = (
    (nn.Linear, ("in_features", "out_features"),
     lambda m: {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), ("in_channels", "out_channels", "groups"),
     lambda m: {"weight": (m.out_channels, m.in_channels // m.groups, *m.kernel_size), "bias": (m.out_channels,)}),
    (nn.modules.batchnorm._BatchNorm, ("num_features",),
     lambda m: {k: (m.num_features,) for k in ("weight", "bias", "running_mean", "running_var")}),
    (nn.LayerNorm, ("normalized_shape",),
     lambda m: {"weight": tuple(m.normalized_shape), "bias": tuple(m.normalized_shape)}),
    (nn.Embedding, ("num_embeddings", "embedding_dim"),
     lambda m: {"weight": (m.num_embeddings, m.embedding_dim)}),
)


def _resize(mod: nn.Module, path: str, attrs: dict) -> None:
    """Set the attributes structured pruning changed on ``mod`` and give its parameters and buffers the
    shapes they now imply (on the meta device: the file's tensors fill them)."""
    for types, allowed, shapes in _RESIZABLE:
        if isinstance(mod, types):
            break
    else:
        raise FormatError(f"edits.resize {path!r}: a {type(mod).__name__} cannot be resized")
    for a, v in attrs.items():
        _need(a in allowed, f"edits.resize {path!r}: a {type(mod).__name__} has no attribute {a!r} to resize")
        setattr(mod, a, tuple(v) if a == "normalized_shape" else v)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        _need(mod.in_channels % mod.groups == 0 and mod.out_channels % mod.groups == 0,
              f"edits.resize {path!r}: {mod.groups} groups do not divide the channels")
    for leaf, shape in shapes(mod).items():
        for store in (mod._parameters, mod._buffers):
            old = store.get(leaf)
            if old is not None:
                new = torch.empty(shape, dtype=old.dtype, device="meta")
                store[leaf] = nn.Parameter(new, requires_grad=old.requires_grad) if store is mod._parameters else new


def _rebuild_factory(arch: dict, manifest: dict, factory: Optional[str]):
    """The factory's model with the file's edits applied: factor chains in place of the layers named, and
    the resized modules with their new widths. An edit may name only a submodule of the model the factory
    builds (a key of its ``named_modules()``): never an attribute, a parameter or a class."""
    ref = arch["factory"]
    kwargs = arch.get("kwargs") or {}
    if ref in SAMPLE_FACTORIES:
        _need(not kwargs, "a sample factory takes no arguments")
    else:
        if factory is None:
            raise LoadError(f"this file's architecture is built by '{ref}' (user code). Make that module "
                            f"importable and confirm it with --factory {ref} (factory='{ref}') to run it")
        if factory != ref:
            raise LoadError(f"this file's architecture is built by '{ref}', not '{factory}'")
    model, example, data = call_factory(ref, kwargs)
    edits = manifest.get("edits") or {}
    modules = dict(model.named_modules())
    for path, specs in (edits.get("replace") or {}).items():
        _need(path in modules and path, f"edits.replace {path!r}: the architecture has no such submodule")
        parent_name, _, attr = path.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        _need(attr in parent._modules, f"edits.replace {path!r}: the architecture has no such submodule")
        parent._modules[attr] = nn.Sequential(*[_build_module(s) for s in specs])
    modules = dict(model.named_modules())
    for path, attrs in (edits.get("resize") or {}).items():
        _need(path in modules and path, f"edits.resize {path!r}: the architecture has no such submodule")
        _resize(modules[path], path, attrs)
    return model, example, data


def _check_fit(own: dict, manifest: dict, what: str) -> None:
    """Every tensor of the file has the name and shape the rebuilt model (``own``: its state_dict) has:
    checked before a stream is decoded."""
    listed = {e["name"]: e for e in manifest["tensors"]}
    missing = [k for k in own if k not in listed]
    unexpected = [k for k in listed if k not in own]
    if missing or unexpected:
        raise FormatError(f"the file's tensors do not fit {what} (missing: {', '.join(missing[:5]) or '-'}; "
                          f"unexpected: {', '.join(unexpected[:5]) or '-'})")
    for k, t in own.items():
        e = listed[k]
        _need(tuple(e["shape"]) == tuple(t.shape),
              f"{k}: the file declares shape {list(e['shape'])}, {what} has {list(t.shape)}")
        _need(not isinstance(t, nn.Parameter) or e["dtype"] in FLOAT_DTYPES,
              f"{k}: a parameter must be floating point, the file declares {e['dtype']}")


def _assign_state(model: nn.Module, tensors: dict) -> None:
    """Put the decoded tensors into ``model`` (names and shapes checked by :func:`_check_fit`)."""
    modules = dict(model.named_modules())
    for key, value in tensors.items():
        mod_name, _, leaf = key.rpartition(".")
        mod = modules[mod_name] if mod_name else model
        if leaf in mod._parameters and mod._parameters[leaf] is not None:
            current = mod._parameters[leaf]
            if current.dtype != value.dtype or current.is_meta:
                mod._parameters[leaf] = nn.Parameter(torch.empty_like(value), requires_grad=current.requires_grad)
        elif leaf in mod._buffers and mod._buffers[leaf] is not None:
            current = mod._buffers[leaf]
            if current.dtype != value.dtype or current.is_meta:
                mod._buffers[leaf] = torch.empty_like(value)
    # re-tie: names that alias one tensor in the file keep sharing after assignment
    model.load_state_dict(tensors, strict=True)


def load(path, factory: Optional[str] = None, progress=None) -> nn.Module:
    """Load a compressed model file into a runnable model (in eval mode).

    A file whose architecture is built by user code (a factory outside this package) needs ``factory``
    naming the same reference: the reader never imports or runs code the user did not name.
    """
    return load_full(path, factory, progress)[0]


def load_full(path, factory: Optional[str] = None, progress=None):
    """(model, example_input, eval_data, manifest): :func:`load` plus what the factory supplies."""
    report(progress, 0.0, "reading")
    mf = read(path)
    try:
        model, example, data = _materialize(mf, factory, progress)
    except FormatError as exc:
        raise FormatError(f"{os.fspath(path)}: {exc}") from None
    return model, example, data, mf.manifest


def _torchscript_graph(mf: ModelFile) -> nn.Module:
    blob = mf.stream(mf.manifest["architecture"]["stream"])
    # the archive holds the graph's code and zeroed tensors: at most the declared tensors plus 16 MiB
    limit = sum(math.prod(_shape(e)) * 8 for e in mf.manifest["tensors"]) + (16 << 20)
    inflater = zlib.decompressobj()
    try:
        archive = inflater.decompress(blob, limit)
    except zlib.error as exc:
        raise FormatError(f"the embedded TorchScript graph is corrupt ({exc})") from None
    _need(inflater.eof and not inflater.unconsumed_tail,
          "the embedded TorchScript graph is larger than its tensors allow, or cut short")
    try:
        return torch.jit.load(io.BytesIO(archive), map_location="cpu")
    except Exception as exc:
        raise FormatError(f"the embedded TorchScript graph cannot be loaded ({type(exc).__name__})") from None


def _materialize(mf: ModelFile, factory, progress=None):
    """Rebuild the architecture, check that the file's tensors fit it, then decode them into it; a model
    with an example input must run on it."""
    arch = mf.manifest["architecture"]
    report(progress, 0.1, "building the model")
    example = data = None
    if arch["kind"] == "factory":
        model, example, data = _rebuild_factory(arch, mf.manifest, factory)
        _check_fit(model.state_dict(keep_vars=True), mf.manifest, "the rebuilt architecture")
        report(progress, 0.2, "decoding tensors")
        _assign_state(model, decode_tensors(mf))
    else:
        model = _torchscript_graph(mf)
        own = model.state_dict()
        _check_fit(own, mf.manifest, "its TorchScript graph")
        report(progress, 0.2, "decoding tensors")
        tensors = decode_tensors(mf)
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(tensors[k])
    model.eval()
    if example is not None:
        report(progress, 0.9, "running the model once")
        try:
            run_model(model, example)
        except ExplorerError as exc:
            raise FormatError(f"the rebuilt model does not run: {exc}") from None
    report(progress, 1.0, "loaded")
    return model, example, data


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

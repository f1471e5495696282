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

import io
import json
import math
import os
import stat
import struct
import weakref
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from . import bitstream
from .atomic import atomic_open
from .coding import MAX_CODE_LENGTH, gap_stream, huffman_code_lengths
from .compress import Recent
from .errors import ExplorerError, LoadError

MAGIC = b"\x89CEX\r\n\x1a\n"
MAJOR, MINOR = 1, 0
HEADER = struct.Struct("<8sHHIIII")
TABLE_ENTRY = struct.Struct("<QI")
FORMAT_NAME = "compression-explorer-model"
MAX_MANIFEST = 64 << 20
#: a manifest inflates at most this many times, plus 1 MB (the samples' inflate 3x, 4,200 near-identical
#: tensor entries 26x): a zlib bomb of ``{},{},...`` would otherwise build millions of Python objects
#: (gigabytes) from a file of a few kilobytes
MANIFEST_EXPANSION = 64
#: a file may not declare more decoded bytes than this many times its own size (plus a fixed allowance):
#: no real model compresses that far, and a lying header cannot make the reader allocate without bound.
MAX_EXPANSION = 4096
EXPANSION_ALLOWANCE = 64 << 20
_RESIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
                 "num_embeddings", "embedding_dim")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
           "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8,
           "bool": torch.bool}


_FACTORY_REF = __import__("re").compile(r"[A-Za-z]\w*(\.[A-Za-z]\w*)*:[A-Za-z]\w*(\.[A-Za-z]\w*)*")


class FormatError(LoadError):
    """The file is not a valid compressed model file; the message says what is wrong."""


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
    """A gap or index stream, raw, Huffman- or rANS-coded as the accounting (``sb``: StreamBits) chose."""
    if sb.coder == "rans":
        from .entropy import rans_encode

        return {"coding": "rans", "alphabet": alphabet,
                "stream": streams.add(lambda: rans_encode(symbols(), alphabet), sb.rans // 8)}
    if sb.coded:
        def make():
            s = symbols()
            lengths = huffman_code_lengths(np.bincount(s, minlength=alphabet))
            if lengths.max(initial=0) > MAX_CODE_LENGTH:
                raise ExplorerError(f"a Huffman code longer than {MAX_CODE_LENGTH} bits cannot be stored")
            return lengths.astype(np.uint8).tobytes() + bitstream.huffman_encode(s, lengths)

        return {"coding": "huffman", "alphabet": alphabet,
                "stream": streams.add(make, sb.table // 8 + (sb.huffman + 7) // 8)}
    return {"coding": "raw", "width": width,
            "stream": streams.add(lambda: bitstream.pack_fixed(symbols(), width), (sb.raw + 7) // 8)}


def _f32(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def _side(quant, streams: _Streams) -> dict:
    q = {"method": quant.method, "bits": quant.bits}
    if quant.method == "kmeans":
        reserved = bool(quant.info.get("reserved_zero"))
        centroids = quant.codebook[1:] if reserved else quant.codebook
        q.update(reserved_zero=reserved, k=int(centroids.size),
                 codebook=streams.add(lambda: _f32(centroids), 4 * centroids.size))
    elif quant.method in ("binary", "ternary"):
        q.update(alpha=streams.add(lambda: _f32([quant.codebook[-1]]), 4))
    elif quant.method == "uniform":
        sym = bool(quant.info["symmetric"])
        rows = int(quant.scales.size)
        q.update(symmetric=sym, rows=rows, scales=streams.add(lambda: _f32(quant.scales), 4 * rows))
        if not sym:
            q["zero_points"] = streams.add(lambda: bitstream.pack_fixed(quant.zero_points, quant.bits),
                                           bitstream.packed_bytes(rows, quant.bits))
    else:
        raise ExplorerError(f"unknown quantization method {quant.method!r}")
    return q


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
                                    st["gap_stream"] or _raw_bits(entries, b))
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
                                     st["index_stream"] or _raw_bits(entries, quant.bits))
        enc["quant"] = _side(quant, streams)
    return enc


def _raw_bits(count: int, width: int):
    from .coding import StreamBits

    return StreamBits(raw=count * width, huffman=0, table=0, coded=False, bits=count * width)


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
        import copy as _copy

        blank = _copy.deepcopy(scripted)
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
    import zipfile

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
    from explorer import __version__

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
    from .progress import report

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
    manifest: dict
    size: int
    data: memoryview = field(repr=False, default=None)
    data_start: int = 0
    offsets: list = field(default_factory=list)  # (start, length) of each stream, absolute

    def stream(self, index) -> bytes:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.offsets):
            raise FormatError(f"a tensor names stream {index!r}, which the file does not have")
        start, length = self.offsets[index]
        return bytes(self.data[start:start + length])


def _need(cond, msg):
    if not cond:
        raise FormatError(msg)


def _int(v, what, lo=0, hi=1 << 62):
    _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
          f"{what} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def read(path) -> ModelFile:
    """Read and validate a file's header, manifest and stream table (not the tensors)."""
    path = os.fspath(path)
    try:
        st_mode = os.stat(path).st_mode
        if stat.S_ISDIR(st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st_mode):  # a FIFO would block, /dev/zero would never end
            raise LoadError(f"{path}: not a regular file")
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc}") from None
    try:
        return parse(raw)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def parse(raw: bytes) -> ModelFile:
    """Validate a whole file held in memory; every length is checked against the file before use."""
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
        _need(not inflater.unconsumed_tail and inflater.eof, "the manifest is larger than allowed or cut short")
        manifest = json.loads(text.decode("utf-8"))
    except (zlib.error, ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, long ints
        raise FormatError(f"the manifest cannot be read ({exc})") from None
    _need(isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME,
          "the manifest does not describe a compressed model")
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
    mf = ModelFile(manifest, size, view, data_start, offsets)
    _check_tensors(mf)
    return mf


def _shape(entry) -> tuple:
    shape = entry.get("shape")
    _need(isinstance(shape, list) and len(shape) <= 8, f"tensor {entry.get('name')!r}: bad shape {shape!r}")
    for d in shape:
        _int(d, f"tensor {entry.get('name')!r} dimension", 0, 1 << 40)
    return tuple(shape)


def _check_tensors(mf: ModelFile) -> None:
    tensors = mf.manifest.get("tensors")
    _need(isinstance(tensors, list), "the manifest has no tensor list")
    total = 0
    names = set()
    for e in tensors:
        _need(isinstance(e, dict) and isinstance(e.get("name"), str), "a tensor entry has no name")
        _need(e["name"] not in names, f"tensor {e['name']!r} is listed twice")
        names.add(e["name"])
        shape = _shape(e)
        _need(isinstance(e.get("dtype"), str) and e["dtype"] in _DTYPES,
              f"tensor {e['name']!r}: unknown dtype {e.get('dtype')!r}")
        _need("alias" not in e or isinstance(e["alias"], str),
              f"tensor {e['name']!r}: bad alias {e.get('alias')!r}")
        total += math.prod(shape) * 8
    limit = MAX_EXPANSION * mf.size + EXPANSION_ALLOWANCE
    _need(total <= limit, f"the tensors declare {total:,} bytes once decoded, more than a file of "
                          f"{mf.size:,} bytes can hold (limit {limit:,})")


def _obj(v, what) -> dict:
    _need(isinstance(v, dict), f"{what} must be an object, got {type(v).__name__}")
    return v


def _decode_stream(mf: ModelFile, info: dict, count: int, what: str) -> np.ndarray:
    _need(isinstance(info, dict), f"{what}: bad stream description")
    data = mf.stream(info.get("stream"))
    try:
        if info.get("coding") == "huffman":
            alphabet = _int(info.get("alphabet"), f"{what} alphabet", 1, 65536)
            _need(len(data) >= alphabet, f"{what}: the stream is shorter than its code table")
            lengths = np.frombuffer(data[:alphabet], np.uint8).astype(np.int64)
            _need(lengths.max(initial=0) > 0, f"{what}: the code table is empty")
            _need(lengths.max() <= MAX_CODE_LENGTH, f"{what}: a code is longer than {MAX_CODE_LENGTH} bits")
            # Kraft's inequality, exactly (a float tolerance lets 1 + 2**-60 through)
            kraft = sum(int(c) << (MAX_CODE_LENGTH - ln) for ln, c in enumerate(np.bincount(lengths)) if ln)
            _need(kraft <= 1 << MAX_CODE_LENGTH, f"{what}: the code table is not a prefix code")
            # each symbol costs at least one bit: a count beyond the payload's bits is a lie
            _need(count <= 8 * (len(data) - alphabet) or count == 0,
                  f"{what}: {count} symbols cannot fit in {len(data) - alphabet} bytes")
            return bitstream.huffman_decode(data[alphabet:], lengths, count)
        if info.get("coding") == "raw":
            width = _int(info.get("width"), f"{what} width", 0, 32)
            return bitstream.unpack_fixed(data, width, count)
        if info.get("coding") == "rans":
            from .entropy import rans_decode

            alphabet = _int(info.get("alphabet"), f"{what} alphabet", 1, 65536)
            return rans_decode(data, alphabet, count)
    except (bitstream.BitstreamError, ValueError) as exc:  # EntropyError is a ValueError
        raise FormatError(f"{what}: {exc}") from None
    raise FormatError(f"{what}: unknown coding {info.get('coding')!r}")


def _floats(mf, index, count, what) -> np.ndarray:
    data = mf.stream(index)
    _need(len(data) == 4 * count, f"{what}: {len(data)} bytes for {count} float32 values")
    return np.frombuffer(data, "<f4").astype(np.float64)


def _decode_weight(mf: ModelFile, e: dict) -> np.ndarray:
    name = e["name"]
    enc = e["encoding"]
    n = math.prod(_shape(e))
    storage = enc.get("storage")
    # every entry, fillers included, advances the position by at least one: never more entries than weights
    entries = _int(enc.get("entries"), f"{name} entries", 0, n)
    if storage == "dense":
        _need(entries == n, f"{name}: dense storage with {entries} entries for {n} weights")
        positions = None
    elif storage == "bitmask":
        raw = mf.stream(enc.get("mask"))
        _need(len(raw) == (n + 7) // 8, f"{name}: bitmask of {len(raw)} bytes for {n} weights")
        keep = np.unpackbits(np.frombuffer(raw, np.uint8), count=n).astype(bool)
        positions = np.flatnonzero(keep)
        _need(positions.size == entries, f"{name}: bitmask has {positions.size} survivors, manifest says {entries}")
    elif storage == "gaps":
        b = _int(enc.get("gap_bits"), f"{name} gap bits", 1, 16)
        gaps_info = dict(_obj(enc.get("gaps"), f"{name} gaps"))
        if gaps_info.get("coding") == "raw":
            gaps_info["width"] = b
        gaps = _decode_stream(mf, gaps_info, entries, f"{name} gaps")
        _need(gaps.size == 0 or (gaps.min() >= 1 and gaps.max() <= 2 ** b - 1),
              f"{name}: a gap is outside 1..{2 ** b - 1}")
        positions = np.cumsum(gaps) - 1
        _need(positions.size == 0 or positions[-1] < n, f"{name}: gaps run past the tensor's {n} weights")
    else:
        raise FormatError(f"{name}: unknown storage {storage!r}")
    if enc.get("values") == "float":
        vals = _floats(mf, enc.get("floats"), entries, name)
    elif enc.get("values") == "codes":
        vals = _dequantize(mf, enc, positions, n, entries, name)
    else:
        raise FormatError(f"{name}: unknown values {enc.get('values')!r}")
    out = np.zeros(n, np.float64)
    if positions is None:
        out[:] = vals
    else:
        out[positions] = vals
    return out


def _dequantize(mf, enc, positions, n, entries, name) -> np.ndarray:
    q = enc.get("quant")
    _need(isinstance(q, dict), f"{name}: codes without a quantization table")
    bits = _int(q.get("bits"), f"{name} bits", 1, 8)
    index = _obj(enc.get("index"), f"{name} index")
    _need(index.get("coding") != "raw" or index.get("width") == bits,
          f"{name}: raw codes of {index.get('width')!r} bits for a {bits}-bit quantizer")
    codes = _decode_stream(mf, index, entries, f"{name} codes")
    method = q.get("method")
    if method == "kmeans":
        k = _int(q.get("k"), f"{name} codebook size", 0, 256)
        book = _floats(mf, q.get("codebook"), k, f"{name} codebook")
        if q.get("reserved_zero"):
            book = np.concatenate([[0.0], book])
    elif method in ("binary", "ternary"):
        (alpha,) = _floats(mf, q.get("alpha"), 1, f"{name} alpha")
        book = np.array([-alpha, alpha]) if method == "binary" else np.array([-alpha, 0.0, alpha])
    elif method == "uniform":
        rows = _int(q.get("rows"), f"{name} scale count", 1, max(n, 1))
        _need(n % rows == 0, f"{name}: {rows} scales do not divide {n} weights")
        scales = _floats(mf, q.get("scales"), rows, f"{name} scales")
        pos = np.arange(n) if positions is None else positions
        row = pos // (n // rows) if n else pos
        if q.get("symmetric"):
            qmax = 2 ** (bits - 1) - 1
            _need(codes.size == 0 or codes.max() <= 2 * qmax, f"{name}: a code is outside the levels")
            return (codes - qmax) * scales[row]
        raw = mf.stream(q.get("zero_points"))
        _need(len(raw) == bitstream.packed_bytes(rows, bits), f"{name}: zero points stream has wrong size")
        zp = bitstream.unpack_fixed(raw, bits, rows)
        return (codes - zp[row]) * scales[row]
    else:
        raise FormatError(f"{name}: unknown quantization method {method!r}")
    _need(codes.size == 0 or codes.max() < book.size, f"{name}: a code has no codebook entry")
    return book[codes]


def _raw_tensor(mf: ModelFile, e: dict) -> torch.Tensor:
    enc = e["encoding"]
    shape = _shape(e)
    sd = enc.get("stored_dtype")
    _need(isinstance(sd, str) and sd in _DTYPES, f"{e['name']}: unknown stored dtype {sd!r}")
    data = mf.stream(enc.get("stream"))
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
        name = e["name"]
        if "alias" in e:
            continue
        enc = e.get("encoding")
        _need(isinstance(enc, dict), f"{name}: no encoding")
        if enc.get("storage") == "raw":
            out[name] = _raw_tensor(mf, e)
        else:
            vals = _decode_weight(mf, e)
            out[name] = torch.from_numpy(vals.reshape(_shape(e))).to(_DTYPES[e["dtype"]])
    for e in mf.manifest["tensors"]:
        if "alias" in e:
            _need(e["alias"] in out, f"{e['name']}: alias of unknown tensor {e['alias']!r}")
            out[e["name"]] = out[e["alias"]]
    return out


# =========================================================================================== rebuilding


def _build_module(spec: dict) -> nn.Module:
    _need(isinstance(spec, dict), "a module spec is not an object")
    kind = spec.get("type")
    try:
        if kind == "Linear":
            return nn.Linear(_int(spec["in_features"], "in_features", 1), _int(spec["out_features"], "out", 1),
                             bias=bool(spec["bias"]), device="meta")
        if kind in ("Conv1d", "Conv2d"):
            cls = nn.Conv1d if kind == "Conv1d" else nn.Conv2d
            padding = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
            return cls(_int(spec["in_channels"], "in_channels", 1), _int(spec["out_channels"], "out", 1),
                       tuple(spec["kernel_size"]), stride=tuple(spec["stride"]), padding=padding,
                       dilation=tuple(spec["dilation"]), groups=_int(spec["groups"], "groups", 1),
                       bias=bool(spec["bias"]), padding_mode=spec["padding_mode"], device="meta")
        if kind == "Embedding":
            return nn.Embedding(_int(spec["num_embeddings"], "num_embeddings", 1),
                                _int(spec["embedding_dim"], "embedding_dim", 1), padding_idx=spec["padding_idx"],
                                device="meta")
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"bad {kind} module spec: {first_line}") from None
    raise FormatError(f"module type {kind!r} is not one the file may create")


def _set_path(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_name, _, attr = path.rpartition(".")
    parent = model
    for part in parent_name.split(".") if parent_name else []:
        _need(hasattr(parent, part), f"the architecture has no module {parent_name!r}")
        parent = getattr(parent, part)
    _need(hasattr(parent, attr), f"the architecture has no module {path!r}")
    setattr(parent, attr, new)


def _rebuild_factory(arch: dict, manifest: dict, factory: Optional[str]) -> nn.Module:
    from .loading import call_factory

    ref = arch.get("factory")
    _need(isinstance(ref, str) and len(ref) <= 200 and _FACTORY_REF.fullmatch(ref) is not None,
          f"the architecture names an invalid factory reference {str(ref)[:80]!r}")
    kwargs = arch.get("kwargs") or {}
    _need(isinstance(kwargs, dict), "factory arguments must be an object")
    from .samples import SAMPLE_FACTORIES

    if ref in SAMPLE_FACTORIES:
        _need(not kwargs, "a sample factory takes no arguments")
    else:
        if factory is None:
            raise LoadError(f"this file's architecture is built by '{ref}' (user code). Make that module "
                            f"importable and confirm it with --factory {ref} (factory='{ref}') to run it")
        if factory != ref:
            raise LoadError(f"this file's architecture is built by '{ref}', not '{factory}'")
    model, example, data = call_factory(ref, kwargs)
    edits = _obj(manifest.get("edits") or {}, "edits")
    for path, specs in _obj(edits.get("replace") or {}, "edits.replace").items():
        _need(isinstance(specs, list) and specs, f"bad factor chain for {path!r}")
        _set_path(model, path, nn.Sequential(*[_build_module(s) for s in specs]))
    modules = dict(model.named_modules())
    for path, attrs in _obj(edits.get("resize") or {}, "edits.resize").items():
        _need(path in modules and isinstance(attrs, dict), f"cannot resize module {path!r}")
        for a, v in attrs.items():
            _need(a in _RESIZE_ATTRS + ("normalized_shape",), f"{path}: attribute {a!r} may not be set")
            if a == "normalized_shape":
                _need(isinstance(v, list), f"{path}.normalized_shape must be a list")
                v = tuple(_int(x, f"{path}.normalized_shape", 1) for x in v)
            else:
                v = _int(v, f"{path}.{a}", 1)
            setattr(modules[path], a, v)
    return model, example, data


def _assign_state(model: nn.Module, tensors: dict) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise FormatError(f"the file's tensors do not fit the rebuilt architecture (missing: "
                          f"{', '.join(missing[:5]) or '-'}; unexpected: {', '.join(unexpected[:5]) or '-'})")
    modules = dict(model.named_modules())
    for key, value in tensors.items():
        mod_name, _, leaf = key.rpartition(".")
        mod = modules[mod_name] if mod_name else model
        if leaf in mod._parameters and mod._parameters[leaf] is not None:
            current = mod._parameters[leaf]
            _need(value.is_floating_point() or value.is_complex(),
                  f"{key}: a parameter must be floating point, the file declares {value.dtype}")
            if tuple(current.shape) != tuple(value.shape) or current.dtype != value.dtype or current.is_meta:
                mod._parameters[leaf] = nn.Parameter(torch.empty_like(value), requires_grad=current.requires_grad)
        elif leaf in mod._buffers and mod._buffers[leaf] is not None:
            current = mod._buffers[leaf]
            if tuple(current.shape) != tuple(value.shape) or current.dtype != value.dtype or current.is_meta:
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
    from .progress import report

    report(progress, 0.0, "reading")
    mf = read(path)
    try:
        model, example, data = _materialize(mf, factory, progress)
    except FormatError as exc:
        raise FormatError(f"{os.fspath(path)}: {exc}") from None
    return model, example, data, mf.manifest


def _materialize(mf: ModelFile, factory, progress=None) -> nn.Module:
    from .progress import report

    arch = mf.manifest.get("architecture")
    _need(isinstance(arch, dict), "the manifest names no architecture")
    report(progress, 0.2, "decoding tensors")
    tensors = decode_tensors(mf)
    report(progress, 0.8, "building the model")
    example = data = None
    if arch.get("kind") == "factory":
        model, example, data = _rebuild_factory(arch, mf.manifest, factory)
        _assign_state(model, tensors)
    elif arch.get("kind") == "torchscript":
        blob = mf.stream(arch.get("stream"))
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
            model = torch.jit.load(io.BytesIO(archive), map_location="cpu")
        except Exception as exc:
            raise FormatError(f"the embedded TorchScript graph cannot be loaded ({type(exc).__name__})") from None
        own = model.state_dict()
        _need(set(own) == set(tensors), "the file's tensors do not fit its TorchScript graph")
        with torch.no_grad():
            for k, v in own.items():
                _need(tuple(v.shape) == tuple(tensors[k].shape), f"{k}: shape does not fit the graph")
                v.copy_(tensors[k])
    else:
        raise FormatError(f"unknown architecture kind {arch.get('kind')!r}")
    model.eval()
    report(progress, 1.0, "loaded")
    return model, example, data


def is_model_file(path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def summary(mf: ModelFile) -> dict:
    """What `compression-explorer info` prints: architecture, plan and per-tensor encodings and bytes."""
    def nbytes(obj) -> int:
        total = 0
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in ("stream", "mask", "floats", "codebook", "alpha", "scales", "zero_points") and \
                        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(mf.offsets):
                    total += mf.offsets[v][1]
                else:
                    total += nbytes(v)
        return total

    rows = []
    for e in mf.manifest["tensors"]:
        enc = e.get("encoding") or {}
        desc = "alias of " + e["alias"] if "alias" in e else enc.get("storage", "?")
        if enc.get("storage") not in (None, "raw"):
            desc = f"{enc['storage']}, {enc.get('values')}"
            if enc.get("values") == "codes":
                q = enc.get("quant", {})
                desc += f" ({q.get('method')} {q.get('bits')}b, {enc.get('index', {}).get('coding')})"
            if enc.get("storage") == "gaps":
                desc += f", {enc.get('gap_bits')}-bit gaps ({enc.get('gaps', {}).get('coding')})"
        elif enc.get("storage") == "raw":
            desc = f"raw {enc.get('stored_dtype')}"
        rows.append({"name": e["name"], "shape": e.get("shape"), "encoding": desc, "bytes": nbytes(enc)})
    return {"file_bytes": mf.size, "header_and_manifest_bytes": mf.data_start,
            "architecture": {k: v for k, v in mf.manifest["architecture"].items() if k != "stream"},
            "producer": mf.manifest.get("producer"), "plan": mf.manifest.get("plan"),
            "accounting": mf.manifest.get("accounting"), "tensors": rows}

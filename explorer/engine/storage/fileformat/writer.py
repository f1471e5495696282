"""Writing a ``.cexp`` file: each tensor laid out as the size accounting chose, the manifest, the header.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tempfile
import warnings
import weakref
import zipfile
import zlib
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from explorer import __version__
from explorer.engine.cache import Recent
from explorer.engine.errors import ExplorerError
from explorer.engine.methods.quantize import QUANTIZERS
from explorer.engine.modules import BlockCirculant, TTCore
from explorer.engine.progress import report
from explorer.engine.storage import bitstream
from explorer.engine.storage.atomic import atomic_open
from explorer.engine.storage.coders import CODERS, CoderError, raw_bits
from explorer.engine.storage.coding import gap_stream
from explorer.engine.storage.fileformat.dtypes import dtype_name
from explorer.engine.storage.fileformat.layout import HEADER, MAGIC, MAJOR, MINOR, TABLE_ENTRY
from explorer.engine.storage.fileformat.manifest import FORMAT_NAME
from explorer.engine.storage.fileformat.manifest import RESIZE_ATTRS as _RESIZE_ATTRS


SPOOL_COPY_BYTES = 8 << 20  # the spool copied into the file in pieces of this size


class _Streams:
    """The data region being laid out. In a dry run (``dry=True``) nothing is encoded: each stream's
    length is what the size accounting predicts, which is how :func:`predicted_bytes` works. Each
    stream's bytes are kept in ``chunks``, or, with a ``sink`` (a binary file), written to it as soon as
    they are made, so that only one stream is in memory at a time (:func:`save`)."""

    def __init__(self, dry: bool = False, sink=None):
        self.dry, self.sink = dry, sink
        self.chunks: list = []
        self.table: list = []
        self.offset = 0

    def add(self, make, predicted: int) -> int:
        """Append a stream: ``make()`` returns its bytes (not called in a dry run)."""
        if self.dry:
            length, crc = int(predicted), 0
        else:
            data = make()
            length, crc = len(data), zlib.crc32(data)
            if self.sink is not None:
                self.sink.write(data)
            else:
                self.chunks.append(bytes(data))
            del data
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
    """The quantizer's decoding table, as its :class:`~explorer.engine.methods.quantize.Quantizer` stores it."""
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
        """(positions of the stored entries — None: every position, in order —, which are fillers, gaps);
        computed once, when encoding."""
        if "pos" not in cache:
            keep = mask()
            if st["format"] == "dense":  # no list of all positions (102.8 M of them: 822 MB as int64)
                cache.update(pos=None, fill=~keep, gaps=None)
            elif st["format"] == "bitmask":
                p = np.flatnonzero(keep)
                cache.update(pos=p, fill=np.zeros(p.size, bool), gaps=None)
            else:
                gaps, fill = gap_stream(np.flatnonzero(keep), int(st["gap_bits"]))
                cache.update(pos=np.cumsum(gaps) - 1, fill=fill, gaps=gaps)
            stored = n if cache["pos"] is None else cache["pos"].size
            if stored != entries:
                raise ExplorerError(f"{t.name}: {stored} entries encoded, {entries} accounted")
        return cache

    def stored(values: np.ndarray) -> np.ndarray:
        """The stored entries' ``values`` (flat, one per weight), in storage order (a copy)."""
        pos = layout()["pos"]
        return values.copy() if pos is None else values[pos]

    if st["format"] == "bitmask":
        enc["mask"] = streams.add(lambda: np.packbits(mask()).tobytes(), (n + 7) // 8)
    elif st["format"] == "gaps":
        b = int(st["gap_bits"])
        enc["gap_bits"] = b
        enc["gaps"] = _coded_stream(streams, lambda: layout()["gaps"], 2 ** b, b,
                                    st["gap_stream"] or raw_bits(entries, b))
    if st["values"] == "float":
        enc["floats"] = streams.add(
            lambda: _f32(stored(weight.detach().reshape(-1).to(torch.float32).cpu().numpy())),
            4 * entries)
    else:
        quant = t.quant

        def codes():
            c = stored(np.asarray(quant.codes).reshape(-1))  # in their own integer type (k-means: a byte each)
            c[layout()["fill"]] = quant.zero_code if quant.zero_code is not None else 0
            return c

        enc["index"] = _coded_stream(streams, codes, quant.alphabet_size, quant.bits,
                                     st["index_stream"] or raw_bits(entries, quant.bits))
        enc["quant"] = _side(quant, streams)
    return enc


def _architecture(loaded, compressed, streams: _Streams) -> dict:
    kind = getattr(loaded, "kind", "")
    if kind in ("sample", "factory", "state_dict", "compressed", "hf") and loaded.factory:
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the scripter's notes on what it skips
                scripted = torch.jit.script(model)
        except Exception as exc:
            scripted = _traced(model, loaded)  # an ONNX graph is static: its trace is the same graph
            if scripted is None:
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


def _traced(model: nn.Module, loaded):
    """A model converted from ONNX, traced on its example input (its graph has no control flow to lose), when it
    does not script; None for any other model (a trace would freeze its Python control flow silently)."""
    example = getattr(loaded, "example_input", None)
    if getattr(loaded, "kind", "") != "onnx" or example is None:
        return None
    args = example if isinstance(example, tuple) else (example,)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shapes taken as constants: ONNX fixed them
            return torch.jit.trace(model.eval(), args, check_trace=False)
    except Exception:
        return None


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
    if isinstance(m, TTCore):
        return {"type": "TTCore", "prefix": m.prefix, "n": m.n, "rank": m.rank, "rank_prev": m.rank_prev, "m": m.m,
                "suffix": m.suffix, "bias": m.bias is not None}
    if isinstance(m, BlockCirculant):
        return {"type": "BlockCirculant", "in_features": m.in_features, "out_features": m.out_features,
                "block": m.block, "bias": m.bias is not None}
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
        out.append(_StateEntry(name, tensor, list(tensor.shape), dtype_name(tensor.dtype), storage,
                               dtype_name(stored), tensor.numel() * stored.itemsize))
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


def _build_manifest(loaded, compressed, half: bool, dry: bool = False, sink=None):
    streams = _Streams(dry, sink)
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

    ``loaded`` (the :class:`~explorer.engine.model.loading.LoadedModel` it came from) tells how the architecture
    is rebuilt: a factory reference, or the scripted graph itself. ``half`` stores the uncompressed
    tensors (biases, norms) as float16.
    """
    report(progress, 0.0, "encoding")
    with atomic_open(path, "wb") as fh:
        # the streams go to an unnamed spool file beside the target as they are encoded (the header,
        # which lists their lengths and checksums, comes first in the file): never the whole file in
        # memory, let alone twice (VGG-16's file is 155 MB)
        with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(os.fspath(path)))) as spool:
            manifest, streams = _build_manifest(loaded, compressed, half, sink=spool)
            body = _manifest_bytes(manifest)
            head = _pack_head(body, streams.table)
            report(progress, 0.8, "writing")  # the last point where a cancel leaves ``path`` as it was
            fh.write(head)
            fh.write(body)
            spool.seek(0)
            shutil.copyfileobj(spool, fh, SPOOL_COPY_BYTES)
    if progress is not None:
        progress(1.0, "written")  # too late to cancel: the file is there
    return len(head) + len(body) + streams.offset

"""Rebuilding a runnable model from a checked ``.cexp`` file: the architecture, its edits, the tensors.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from typing import Optional

import torch
from torch import nn

from explorer.engine.errors import ExplorerError, FormatError, LoadError
from explorer.engine.measure.metrics import run_model
from explorer.engine.modules import BlockCirculant, TTCore
from explorer.engine.model import hf
from explorer.engine.model.factories import call_factory
from explorer.engine.progress import report, scaled
from explorer.engine.runtime import compressed_runtime
from explorer.engine.samples import SAMPLE_FACTORIES
from explorer.engine.storage.fileformat.manifest import FLOAT_DTYPES
from explorer.engine.storage.fileformat.decode import decode_tensors, weight_parts
from explorer.engine.storage.fileformat.reader import ModelFile, entry_shape, need, read


def _build_module(spec: dict) -> nn.Module:
    """A factor of a low-rank chain, on the meta device, from a spec :func:`manifest.module_spec` checked."""
    kind = spec["type"]
    if kind == "TTCore":
        return TTCore(*(spec[k] for k in ("prefix", "n", "rank", "rank_prev", "m", "suffix")), bias=spec["bias"],
                      device="meta")
    if kind == "BlockCirculant":
        return BlockCirculant(spec["in_features"], spec["out_features"], spec["block"], bias=spec["bias"],
                              device="meta")
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
        need(a in allowed, f"edits.resize {path!r}: a {type(mod).__name__} has no attribute {a!r} to resize")
        setattr(mod, a, tuple(v) if a == "normalized_shape" else v)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        need(mod.in_channels % mod.groups == 0 and mod.out_channels % mod.groups == 0,
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
    builds (a key of its ``named_modules()``): never an attribute, a parameter or a class.

    A Hugging Face architecture (:data:`~explorer.engine.model.hf.HF_FACTORY`, its config stored in the file) is
    built first on the meta device and checked against the file's tensors, so a config that lies about its
    sizes allocates nothing; transformers builds it without remote code."""
    ref = arch["factory"]
    kwargs = arch.get("kwargs") or {}
    if ref in SAMPLE_FACTORIES:
        need(not kwargs, "a sample factory takes no arguments")
    elif ref == hf.HF_FACTORY:
        need(set(kwargs) == {"config", "auto_class"}, "a Hugging Face architecture takes config and auto_class")
        shapes = _apply_edits(hf.rebuild(**kwargs, device="meta")[0], manifest)
        _check_fit(shapes.state_dict(keep_vars=True), manifest, "the stored Hugging Face config")
    else:
        if factory is None:
            raise LoadError(f"this file's architecture is built by '{ref}' (user code). Make that module "
                            f"importable and confirm it with --factory {ref} (factory='{ref}') to run it")
        if factory != ref:
            raise LoadError(f"this file's architecture is built by '{ref}', not '{factory}'")
    model, example, data = call_factory(ref, kwargs)
    return _apply_edits(model, manifest), example, data


def _apply_edits(model: nn.Module, manifest: dict) -> nn.Module:
    edits = manifest.get("edits") or {}
    modules = dict(model.named_modules())
    for path, specs in (edits.get("replace") or {}).items():
        need(path in modules and path, f"edits.replace {path!r}: the architecture has no such submodule")
        parent_name, _, attr = path.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        need(attr in parent._modules, f"edits.replace {path!r}: the architecture has no such submodule")
        parent._modules[attr] = nn.Sequential(*[_build_module(s) for s in specs])
    modules = dict(model.named_modules())
    for path, attrs in (edits.get("resize") or {}).items():
        need(path in modules and path, f"edits.resize {path!r}: the architecture has no such submodule")
        _resize(modules[path], path, attrs)
    return model


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
        need(tuple(e["shape"]) == tuple(t.shape),
              f"{k}: the file declares shape {list(e['shape'])}, {what} has {list(t.shape)}")
        need(not isinstance(t, nn.Parameter) or e["dtype"] in FLOAT_DTYPES,
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


RUNTIMES = ("dense", "compressed")


def load(path, factory: Optional[str] = None, progress=None, runtime: str = "dense", batch: int = 1,
         prefer: str = "speed") -> nn.Module:
    """Load a compressed model file into a runnable model (in eval mode).

    A file whose architecture is built by user code (a factory outside this package) needs ``factory``
    naming the same reference: the reader never imports or runs code the user did not name.

    ``runtime="compressed"``: the Linear and 1x1 Conv2d layers whose stored form pays off compute on it
    (:mod:`explorer.engine.runtime`; chosen by timing each form at ``batch`` rows, or by size with
    ``prefer="memory"``); the decisions are the model's ``compressed_runtime`` attribute.
    """
    return load_full(path, factory, progress, runtime, batch, prefer)[0]


def load_full(path, factory: Optional[str] = None, progress=None, runtime: str = "dense", batch: int = 1,
              prefer: str = "speed"):
    """(model, example_input, eval_data, manifest): :func:`load` plus what the factory supplies."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    report(progress, 0.0, "reading")
    mf = read(path)
    try:
        model, example, data = _materialize(mf, factory, scaled(progress, 0.0, 0.7 if runtime != "dense" else 1.0))
        if runtime == "compressed":
            _compressed_runtime(mf, model, batch, prefer, scaled(progress, 0.7, 1.0), example)
    except FormatError as exc:
        raise FormatError(f"{os.fspath(path)}: {exc}") from None
    return model, example, data, mf.manifest


def to_compressed_runtime(path, model: nn.Module, batch: int = 1, prefer: str = "speed", progress=None,
                          example_input=None) -> list:
    """Give ``model``, loaded dense from the file at ``path``, the compressed runtime (see :func:`load`), in
    place; the decisions."""
    _compressed_runtime(read(path), model, batch, prefer, progress, example_input)
    return model.compressed_runtime


def _compressed_runtime(mf: ModelFile, model: nn.Module, batch: int, prefer: str, progress,
                        example_input=None) -> None:
    """Replace the layers whose stored form pays off (see :func:`load`); a TorchScript graph stays dense."""
    if isinstance(model, torch.jit.ScriptModule):
        model.compressed_runtime = []
        return
    wanted = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    parts = {e["name"]: weight_parts(mf, e) for e in mf.manifest["tensors"]
             if e["name"] in wanted and "alias" not in e and e["encoding"]["storage"] != "raw"}
    model.compressed_runtime = compressed_runtime(model, parts, batch=batch, prefer=prefer, progress=progress,
                                                  example_input=example_input)


def _torchscript_graph(mf: ModelFile) -> nn.Module:
    blob = mf.stream(mf.manifest["architecture"]["stream"])
    # the archive holds the graph's code and zeroed tensors: at most the declared tensors plus 16 MiB
    limit = sum(math.prod(entry_shape(e)) * 8 for e in mf.manifest["tensors"]) + (16 << 20)
    inflater = zlib.decompressobj()
    try:
        archive = inflater.decompress(blob, limit)
    except zlib.error as exc:
        raise FormatError(f"the embedded TorchScript graph is corrupt ({exc})") from None
    need(inflater.eof and not inflater.unconsumed_tail,
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

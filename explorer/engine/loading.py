"""Loading a model from what a user has: a bundled sample, a TorchScript archive, a state_dict
(``.pt``/``.pth`` through ``torch.load(weights_only=True)``, or ``.safetensors``) with a factory that
builds the architecture, a factory alone, or — only when the user says they trust the file — a fully
pickled ``nn.Module``.

A factory is ``"package.module:callable"``; calling it returns an ``nn.Module``, or a tuple
``(model, example_input[, eval_data])``, or a dict with those keys. Its example input lets the engine
count MACs; its eval data lets it measure accuracy.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .errors import LoadError, TrustRequired


@dataclass
class LoadedModel:
    model: nn.Module
    example_input: Optional[Any] = None
    eval_data: Optional[Any] = None  # data.EvalData
    source: str = ""  # what the user named (path, sample name or factory)
    kind: str = ""  # "sample" | "torchscript" | "state_dict" | "factory" | "pickle"
    factory: Optional[str] = None  # "module:callable" that rebuilds the architecture, when known
    factory_kwargs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # e.g. a sample's metadata


# ----------------------------------------------------------------------------------------- factories


def resolve_factory(ref: str):
    """Import ``package.module:callable`` (the callable may be dotted: ``mod:Class.build``)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise LoadError(f"factory {ref!r}: expected 'package.module:callable'")
    mod_name, attr = ref.split(":")
    if not mod_name or not attr:
        raise LoadError(f"factory {ref!r}: expected 'package.module:callable'")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError and anything the module raises on import
        raise LoadError(f"factory {ref!r}: cannot import module '{mod_name}': {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not part.isidentifier() or part.startswith("_"):
            raise LoadError(f"factory {ref!r}: '{part}' is not a public name")
        if not hasattr(obj, part):
            raise LoadError(f"factory {ref!r}: module '{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
        if inspect.ismodule(obj):  # 'pkg.mod:other_module.fn' would reach code the reference does not name
            raise LoadError(f"factory {ref!r}: '{part}' is a module; name the module before the ':'")
    if not callable(obj):
        raise LoadError(f"factory {ref!r}: '{attr}' is not callable")
    return obj


def call_factory(ref: str, kwargs: Optional[dict] = None):
    """Call a factory and normalise what it returns to (model, example_input, eval_data)."""
    fn = resolve_factory(ref)
    try:
        out = fn(**(kwargs or {}))
    except Exception as exc:
        raise LoadError(f"factory {ref!r} failed: {type(exc).__name__}: {exc}") from None
    example, data = None, None
    if isinstance(out, dict):
        model, example, data = out.get("model"), out.get("example_input"), out.get("eval_data")
    elif isinstance(out, (tuple, list)):
        if not 1 <= len(out) <= 3:
            raise LoadError(f"factory {ref!r} returned a tuple of {len(out)}; expected (model[, example_input"
                            "[, eval_data]])")
        model = out[0]
        example = out[1] if len(out) > 1 else None
        data = out[2] if len(out) > 2 else None
    else:
        model = out
    if not isinstance(model, nn.Module):
        raise LoadError(f"factory {ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model, example, data


# ----------------------------------------------------------------------------------------- files


def _sniff(path: str) -> str:
    """'torchscript' | 'torch-zip' | 'torch-legacy' | 'safetensors' | 'unknown'."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return "torch-zip"  # torch.load reports the corruption in its own words
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol marker: torch.save's legacy format
        return "torch-legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= os.path.getsize(path) - 8 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def _extract_state_dict(obj, path: str) -> dict:
    def is_sd(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in d.items())

    if is_sd(obj):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "weights"):
            if is_sd(obj.get(key)):
                return obj[key]
    raise LoadError(f"{path}: not a model: it holds {type(obj).__name__}"
                    + (f" with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else "")
                    + ", not a state_dict of tensors")


def _torch_load(path: str, trust: bool):
    try:
        with warnings.catch_warnings():
            # torch's restricted unpickler warns (two lines on stderr) about pickle protocols it was not
            # written for before it refuses or reads the file; what it decides is reported below, once
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise LoadError(f"{path}: corrupt or not a PyTorch file ({_first_line(exc)})") from None
        if not trust:
            raise TrustRequired(
                f"{path}: this file is a full Python pickle (e.g. a whole nn.Module), not plain weights. "
                "Loading it would run code stored in the file, so it was not loaded. If you trust its "
                "source, pass --trust (trust=True); safer: save model.state_dict() and load it with "
                "--factory module:callable") from None
    except Exception as exc:
        raise LoadError(f"{path}: corrupt or not a PyTorch file ({_first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LoadError(f"{path}: trusted pickle could not be loaded: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg[:200]}"


def _load_safetensors(path: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:
        raise LoadError(f"{path}: corrupt safetensors file ({_first_line(exc)})") from None


def apply_state_dict(model: nn.Module, state: dict, path: str) -> None:
    """Load ``state`` into ``model`` strictly; on mismatch name the first missing/unexpected/misshapen keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                 for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshapen:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("wrong shapes", misshapen)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise LoadError(f"{path}: the state_dict does not fit the factory's model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------- entry point


def is_factory_ref(s) -> bool:
    """Whether ``s`` names a factory (``package.module:callable``) rather than a file: one colon, no path
    separator, not an existing path, and on Windows not a drive letter (``C:model.pt``)."""
    if not isinstance(s, str) or s.count(":") != 1 or "/" in s or "\\" in s or os.path.exists(s):
        return False
    return not (os.name == "nt" and len(s.split(":")[0]) == 1)


def load_model(source: Optional[str] = None, factory: Optional[str] = None, trust: bool = False,
               data: Optional[str] = None, factory_kwargs: Optional[dict] = None,
               limit: Optional[int] = None) -> LoadedModel:
    """Load a model for exploration.

    Parameters
    ----------
    source : str, optional
        A bundled sample name (``digits-mlp``), a file (TorchScript, ``.pt``/``.pth`` state_dict or pickle,
        ``.safetensors``), or a factory reference ``module:callable``.
    factory : str, optional
        ``module:callable`` building the architecture for a state_dict file (or the model on its own).
    trust : bool
        Allow unpickling a full Python pickle. Never needed for weights, samples or TorchScript.
    data : str, optional
        Eval data file (IDX or npz) that overrides the factory's.
    limit : int, optional
        Keep the first ``limit`` eval samples only; from a file, only those are read.

    Raises
    ------
    LoadError, TrustRequired
        With a message naming the file and the problem.
    """
    from . import samples

    loaded: LoadedModel
    if source is None and factory is None:
        raise LoadError("nothing to load: give a model file, a sample name or a factory")
    if source is None or (is_factory_ref(source) and factory is None):
        ref = factory or source
        model, example, ev = call_factory(ref, factory_kwargs)
        loaded = LoadedModel(model, example, ev, source=ref, kind="factory", factory=ref,
                             factory_kwargs=dict(factory_kwargs or {}))
    elif not os.path.exists(source) and source in samples.sample_names():
        bundle = samples.load_sample(source)
        loaded = LoadedModel(bundle["model"], bundle["example_input"], bundle["eval_data"], source=source,
                             kind="sample", factory=bundle["info"]["factory"], meta=bundle["info"])
    else:
        loaded = _load_file(source, factory, trust, factory_kwargs)
    if data is not None:
        from .data import load_eval_data

        loaded.eval_data = load_eval_data(data, limit=limit)
    elif limit is not None and loaded.eval_data is not None and len(loaded.eval_data) > limit:
        loaded.eval_data = loaded.eval_data.subset(limit)
    if loaded.example_input is None and loaded.eval_data is not None and len(loaded.eval_data) > 0:
        loaded.example_input = loaded.eval_data.inputs[:1]
    loaded.model.eval()
    return loaded


def _load_file(path: str, factory: Optional[str], trust: bool, factory_kwargs) -> LoadedModel:
    from . import samples

    if not os.path.exists(path):
        known = ", ".join(samples.sample_names())
        raise LoadError(f"{path}: no such file (nor a bundled sample: {known})")
    if os.path.isdir(path):
        raise LoadError(f"{path}: is a directory, not a model file")
    from . import fileformat

    if fileformat.is_model_file(path):
        model, example, ev, manifest = fileformat.load_full(path, factory=factory)
        arch = manifest.get("architecture", {})
        return LoadedModel(model, example, ev, source=path, kind="compressed",
                           factory=arch.get("factory"), factory_kwargs=dict(arch.get("kwargs") or {}),
                           meta={"sample": arch.get("sample"), "manifest": manifest})
    kind = _sniff(path)
    if kind == "torchscript":
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise LoadError(f"{path}: corrupt TorchScript archive ({_first_line(exc)})") from None
        return LoadedModel(model, source=path, kind="torchscript")
    if kind == "safetensors" or path.endswith(".safetensors"):
        state = _load_safetensors(path)
    elif kind in ("torch-zip", "torch-legacy"):
        obj = _torch_load(path, trust)
        if isinstance(obj, nn.Module):
            return LoadedModel(obj, source=path, kind="pickle")
        state = _extract_state_dict(obj, path)
    else:
        raise LoadError(f"{path}: not a model file (expected TorchScript, a PyTorch .pt/.pth, or .safetensors)")
    if factory is None:
        raise LoadError(f"{path}: holds only weights (a state_dict of {len(state)} tensors); give the "
                        "architecture with --factory module:callable")
    model, example, ev = call_factory(factory, factory_kwargs)
    apply_state_dict(model, state, path)
    return LoadedModel(model, example, ev, source=path, kind="state_dict", factory=factory,
                       factory_kwargs=dict(factory_kwargs or {}))


def parse_input_shape(text: str) -> torch.Tensor:
    """``"1,3,32,32"`` -> a seeded random float tensor of that shape (an example input for MAC counting)."""
    parts = re.split(r"\s*[,x]\s*", text.strip())
    if not all(p.isdigit() for p in parts):
        raise LoadError(f"input shape {text!r}: expected whole numbers like 1,3,32,32")
    dims = tuple(int(p) for p in parts)
    if not dims or any(d < 1 for d in dims) or torch.Size(dims).numel() > 50_000_000:
        raise LoadError(f"input shape {text!r}: dimensions must be >= 1 and the tensor at most 5e7 elements")
    return torch.randn(dims, generator=torch.Generator().manual_seed(0))


__all__ = ["LoadedModel", "load_model", "call_factory", "resolve_factory", "apply_state_dict",
           "parse_input_shape"]

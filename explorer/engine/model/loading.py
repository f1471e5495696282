"""Loading a model from what a user has: a bundled sample, a TorchScript archive, a state_dict
(``.pt``/``.pth`` through ``torch.load(weights_only=True)``, or ``.safetensors``) with a factory that
builds the architecture, a factory alone, a Hugging Face folder (:mod:`.hf`), an ONNX file (:mod:`.onnx_import`),
or — only when the user says they trust the file — a fully pickled ``nn.Module``.

A factory is ``"package.module:callable"``; calling it returns an ``nn.Module``, or a tuple
``(model, example_input[, eval_data])``, or a dict with those keys. Its example input lets the engine
count MACs; its eval data lets it measure accuracy.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from torch import nn

from explorer.engine import samples
from explorer.engine.errors import LoadError, NotFound, TrustRequired, first_line
from explorer.engine.measure.datafit import check_eval_data
from explorer.engine.methods import saliency
from explorer.engine.model import data as _data
from explorer.engine.model import hf, onnx_import
from explorer.engine.model.factories import call_factory, is_factory_ref
from explorer.engine.storage import fileformat


@dataclass
class LoadedModel:
    model: nn.Module
    example_input: Optional[Any] = None
    eval_data: Optional[Any] = None  # data.EvalData
    source: str = ""  # what the user named (path, sample name or factory)
    kind: str = ""  # "sample" | "torchscript" | "state_dict" | "factory" | "pickle" | "hf" | "onnx" | "compressed"
    factory: Optional[str] = None  # "module:callable" that rebuilds the architecture, when known
    factory_kwargs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # e.g. a sample's metadata

    def __post_init__(self) -> None:
        # its layer weights can be ranked by saliency (obd, taylor: computed on first use, from its data)
        saliency.provide(self)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        saliency.provide(self)  # unpickled (a Ray worker's payload): __post_init__ does not run


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
            raise LoadError(f"{path}: corrupt or not a PyTorch file ({first_line(exc)})") from None
        if not trust:
            raise TrustRequired(
                f"{path}: this file is a full Python pickle (e.g. a whole nn.Module), not plain weights. "
                "Loading it would run code stored in the file, so it was not loaded. If you trust its "
                "source, pass --trust (trust=True); safer: save model.state_dict() and load it with "
                "--factory module:callable") from None
    except Exception as exc:
        raise LoadError(f"{path}: corrupt or not a PyTorch file ({first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LoadError(f"{path}: trusted pickle could not be loaded: {first_line(exc)}") from None


def _load_safetensors(path: str) -> dict:
    try:
        return load_file(path, device="cpu")
    except Exception as exc:
        raise LoadError(f"{path}: corrupt safetensors file ({first_line(exc)})") from None


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


def load_model(source: Optional[str] = None, factory: Optional[str] = None, trust: bool = False,
               data: Optional[str] = None, factory_kwargs: Optional[dict] = None,
               limit: Optional[int] = None) -> LoadedModel:
    """Load a model for exploration.

    Parameters
    ----------
    source : str, optional
        A bundled sample name (``digits-mlp``), a file (TorchScript, ``.pt``/``.pth`` state_dict or pickle,
        ``.safetensors``, ``.onnx``, a compressed ``.cexp``), a Hugging Face folder (``config.json`` +
        ``model.safetensors``), or a factory reference ``module:callable``.
    factory : str, optional
        ``module:callable`` building the architecture for a state_dict file (or the model on its own).
    trust : bool
        Allow unpickling a full Python pickle (a whole ``nn.Module``, or a Hugging Face folder's
        ``pytorch_model.bin``) and a Hugging Face config's own model code (``trust_remote_code``). Never needed
        for weights, samples, TorchScript, ONNX or a Hugging Face folder with safetensors.
    data : str, optional
        Eval data file (IDX or npz) that overrides the factory's.
    limit : int, optional
        Keep the first ``limit`` eval samples only; from a file, only those are read.

    Raises
    ------
    LoadError, TrustRequired
        With a message naming the file and the problem.
    """
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
        loaded.eval_data = _data.load_eval_data(data, limit=limit)
    elif limit is not None and loaded.eval_data is not None and len(loaded.eval_data) > limit:
        loaded.eval_data = loaded.eval_data.subset(limit)
    check_eval_data(loaded, loaded.eval_data)  # before any work: data the model cannot run on, said in one line
    if loaded.example_input is None and loaded.eval_data is not None and len(loaded.eval_data) > 0:
        loaded.example_input = loaded.eval_data.inputs[:1]
        loaded.meta = dict(loaded.meta, example_from_data=True)  # later data is not held to it
    loaded.model.eval()
    return loaded


def _load_file(path: str, factory: Optional[str], trust: bool, factory_kwargs) -> LoadedModel:
    if not os.path.exists(path):
        known = ", ".join(samples.sample_names())
        raise NotFound(f"{path}: no such file (nor a bundled sample: {known})")
    if os.path.isdir(path):
        if not hf.is_hf_folder(path):
            raise LoadError(f"{path}: is a directory without config.json, so not a Hugging Face model folder "
                            "(give a model file, or a folder with config.json and model.safetensors)")
        model, example, kwargs = hf.load_folder(path, trust)
        return LoadedModel(model, example, source=path, kind="hf", factory=hf.HF_FACTORY, factory_kwargs=kwargs)
    if fileformat.is_model_file(path):
        model, example, ev, manifest = fileformat.load_full(path, factory=factory)
        arch = manifest.get("architecture", {})
        return LoadedModel(model, example, ev, source=path, kind="compressed",
                           factory=arch.get("factory"), factory_kwargs=dict(arch.get("kwargs") or {}),
                           meta={"sample": arch.get("sample"), "manifest": manifest})
    if onnx_import.is_onnx_file(path):
        model, example = onnx_import.load_onnx(path)
        return LoadedModel(model, example, source=path, kind="onnx")
    kind = _sniff(path)
    if kind == "torchscript":
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise LoadError(f"{path}: corrupt TorchScript archive ({first_line(exc)})") from None
        return LoadedModel(model, source=path, kind="torchscript")
    if kind == "safetensors" or path.endswith(".safetensors"):
        state = _load_safetensors(path)
    elif kind in ("torch-zip", "torch-legacy"):
        obj = _torch_load(path, trust)
        if isinstance(obj, nn.Module):
            return LoadedModel(obj, source=path, kind="pickle")
        state = _extract_state_dict(obj, path)
    else:
        suffix = os.path.splitext(path)[1].lower()
        begins = {".cexp": "a compressed file's magic bytes", ".onnx": "an ONNX model (a ModelProto)"}
        named = f" (it is named {suffix}, but does not begin with {begins[suffix]})" if suffix in begins else ""
        raise LoadError(f"{path}: not a model file{named}; expected a compressed file (.cexp, told by its first "
                        "bytes, whatever its name), TorchScript, a PyTorch .pt/.pth, .safetensors, .onnx, "
                        "or a Hugging Face folder")
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


__all__ = ["LoadedModel", "load_model", "apply_state_dict",
           "parse_input_shape"]

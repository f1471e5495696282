"""Standard exports of a (compressed) model: dense weights, TorchScript and ONNX.

The explorer's own file (:mod:`explorer.engine.storage.fileformat`) is the small one; these are the formats other tools
read. Every weight is written dense and decoded (pruned entries as zeros, quantized entries as their codebook
values in fp32), so any PyTorch or ONNX runtime can use the file without the explorer.

Four verbs:

- :func:`export_state_dict` -- a plain ``{name: tensor}`` state_dict as ``.safetensors`` or as a ``.pt``/``.pth``
  that ``torch.load(path, weights_only=True)`` reads (no pickled classes).
- :func:`export_torchscript` -- a TorchScript archive, scripted or else traced on the example input.
- :func:`export_onnx` -- one self-contained ``.onnx`` file (weights inside, no external data).
- :func:`export` -- picks one of them from ``fmt`` or the file extension and says what it did.

Each write is atomic: the model is serialised first, then written to a temporary file beside ``path`` that is
renamed over ``path`` only when complete. A failure raises :class:`~explorer.engine.errors.ExplorerError` with a
one-line message naming the format and the cause, and leaves ``path`` as it was (no partial file).

ONNX needs the ``onnx`` package; the torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``, the
default since PyTorch 2.9) also needs ``onnxscript``. It is tried first; the TorchScript-based exporter
(``dynamo=False``) is the fallback, and the only path for a model that is already a TorchScript module.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
from typing import Any, Optional

import torch
from safetensors.torch import save as st_save
from torch import nn

from explorer.engine.errors import ExplorerError, WriteError
from explorer.engine.storage.atomic import atomic_open

__all__ = ["FORMATS", "export", "export_state_dict", "export_torchscript", "export_onnx"]

#: What :func:`export` accepts as ``fmt``; ``"safetensors"`` and ``"pt"`` are state_dicts in that container.
FORMATS = ("state_dict", "safetensors", "pt", "torchscript", "onnx")

_STATE_DICT_EXTENSIONS = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt"}
_EXTENSION_FORMATS = {".safetensors": ("state_dict", "safetensors"), ".pt": ("state_dict", "pt", "torchscript"),
                      ".pth": ("state_dict", "pt", "torchscript"), ".onnx": ("onnx",)}
_ONNX_SINGLE_FILE_LIMIT = 2**31 - (64 << 20)  # protobuf's 2 GiB message limit, less room for the graph
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CLASS_REPR = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>")
_LABELS = {"state_dict": "state_dict", "safetensors": "safetensors", "pt": "PyTorch state_dict",
           "torchscript": "TorchScript", "onnx": "ONNX"}


# ----------------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------------


def export_state_dict(model, path, *, container: Optional[str] = None) -> int:
    """Write the model's weights, dense and decoded, as a plain state_dict.

    Parameters
    ----------
    model : nn.Module or Compressed
        The model (a :class:`~explorer.engine.compress.Compressed` stands for its ``.model``). Every entry of
        its ``state_dict()`` -- parameters and persistent buffers -- must be a tensor.
    path : str or PathLike
        Target file. ``.safetensors`` writes safetensors; ``.pt`` and ``.pth`` write ``torch.save`` of a dict of
        tensors, which ``torch.load(path, weights_only=True)`` reads.
    container : {"safetensors", "pt"}, optional
        Overrides the choice made from the extension (any extension is then accepted).

    Returns
    -------
    int
        Bytes written.

    Notes
    -----
    Tied weights (two names for one tensor, e.g. an embedding shared with the output layer): safetensors refuses
    tensors that share memory, so in a ``.safetensors`` file every name after the first gets its own copy; the
    file's metadata key ``"tied"`` maps each copy to the name it was cloned from (JSON), so a reader can tie them
    again. ``load_state_dict`` on the original architecture needs nothing special: both names are present.
    A ``.pt`` file keeps ties as shared storage (``torch.save`` supports it). In both containers a tensor that is
    a view into a larger storage is copied first, so the file holds only the tensor's own elements.

    Raises
    ------
    ExplorerError
        Unknown extension or container, a non-tensor state entry, or a failed write; ``path`` is left as it was.
    """
    path = os.fspath(path)
    module = _as_module(model, "state_dict", path)
    if container is None:
        ext = os.path.splitext(path)[1].lower()
        container = _STATE_DICT_EXTENSIONS.get(ext)
        if container is None:
            raise ExplorerError(f"state_dict export to {path}: unknown extension '{ext or '(none)'}'; "
                                "use .safetensors, .pt or .pth")
    elif container not in ("safetensors", "pt"):
        raise ExplorerError(f"state_dict export to {path}: unknown container {container!r}; "
                            "expected 'safetensors' or 'pt'")
    else:
        _check_extension(path, container)
    return _write_state_dict(module, path, container)[0]


def export_torchscript(model, example_input, path) -> int:
    """Write the model as a TorchScript archive that ``torch.jit.load`` runs without the model's Python code.

    ``torch.jit.script`` is tried first: it keeps control flow. A model it cannot compile (e.g. a generator
    expression in ``forward``) is traced with ``torch.jit.trace`` on ``example_input`` instead, which records the
    operations of that one run: branches that depend on the input's values or shape are frozen. A model that
    already is a TorchScript module is saved as it is. :func:`export` reports which of the three happened
    (``"script"``, ``"trace"`` or ``"scripted"``).

    Parameters
    ----------
    model : nn.Module or Compressed
        Exported in the mode it is in (call ``model.eval()`` first for inference).
    example_input : Tensor or tuple of Tensor, optional
        Positional input(s) of ``forward``; only needed if scripting fails.
    path : str or PathLike
        Target file (any extension; ``.pt`` is usual).

    Returns
    -------
    int
        Bytes written.

    Raises
    ------
    ExplorerError
        The model can be neither scripted nor traced (the message gives both causes), or the write failed.
    """
    path = os.fspath(path)
    return _write_torchscript(_as_module(model, "torchscript", path), example_input, path)[0]


def export_onnx(model, example_input, path, opset: Optional[int] = None) -> int:
    """Write the model as one self-contained ONNX file (weights stored inside the file).

    The torch.export-based exporter is tried first (it needs ``onnxscript``); if it is missing or fails, and
    always for a TorchScript module, the TorchScript-based exporter is used. :func:`export` reports which
    (``"dynamo"`` or ``"torchscript"``). The graph's input shapes are those of ``example_input``.

    Parameters
    ----------
    model : nn.Module or Compressed
        Exported in the mode it is in (call ``model.eval()`` first for inference).
    example_input : Tensor or tuple of Tensor
        Positional input(s) of ``forward``.
    path : str or PathLike
        Target file, normally ``.onnx``.
    opset : int, optional
        ONNX opset version; the exporter's default if None.

    Returns
    -------
    int
        Bytes written.

    Raises
    ------
    ExplorerError
        ``onnx`` is not installed, no example input, an operator ONNX cannot express (the message names it as
        the exporters report it), weights over the 2 GB single-file limit, or a failed write.
    """
    path = os.fspath(path)
    return _write_onnx(_as_module(model, "onnx", path), example_input, path, opset)[0]


def _check_onnx_layers(module) -> None:
    """A TorchScript graph with block-circulant layers runs their FFTs, which ONNX cannot express (an eager
    model exports each as its expanded matrix instead): refused, saying how to get the eager model."""
    if isinstance(module, torch.jit.ScriptModule) and any(
            getattr(m, "original_name", "") == "BlockCirculant" for m in module.modules()):
        raise ExplorerError("this TorchScript model has block-circulant layers, whose FFTs ONNX cannot express; "
                            "load it through its factory (--factory) so that each exports as its expanded matrix")


def export(model, example_input, path, fmt: Optional[str] = None) -> dict:
    """Export to the format named by ``fmt`` or, if None, by the extension of ``path``.

    Parameters
    ----------
    model : nn.Module or Compressed
    example_input : Tensor or tuple of Tensor, optional
        Needed for ONNX, and for TorchScript when the model must be traced.
    path : str or PathLike
    fmt : {"state_dict", "safetensors", "pt", "torchscript", "onnx"}, optional
        ``None``: ``.safetensors``, ``.pt``, ``.pth`` give a state_dict, ``.onnx`` gives ONNX. ``"state_dict"``
        picks its container from the extension (safetensors for ``.safetensors``, else ``torch.save``);
        ``"safetensors"`` and ``"pt"`` force one. ``"torchscript"`` writes an archive whatever the extension
        (``model.pt`` is a common name for one).

    Returns
    -------
    dict
        ``{"format": "state_dict" | "torchscript" | "onnx", "path": str, "bytes": int, "method": str}`` where
        method is ``"safetensors"`` or ``"torch.save"`` (state_dict), ``"script"``, ``"trace"`` or ``"scripted"``
        (TorchScript), ``"dynamo"`` or ``"torchscript"`` (the ONNX exporter that succeeded).

    Raises
    ------
    ExplorerError
        Unknown format or extension, or the export failed (see the functions above).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if fmt is None:
        if ext in _STATE_DICT_EXTENSIONS:
            fmt = "state_dict"
        elif ext == ".onnx":
            fmt = "onnx"
        else:
            raise ExplorerError(f"export to {path}: cannot tell the format from the extension '{ext or '(none)'}'; "
                                "use .safetensors, .pt, .pth (state_dict) or .onnx, or name the format "
                                f"({', '.join(FORMATS)})")
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise ExplorerError(f"export to {path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    fmt = fmt.lower()
    _check_extension(path, fmt)
    module = _as_module(model, fmt, path)
    if fmt == "torchscript":
        nbytes, method = _write_torchscript(module, example_input, path)
    elif fmt == "onnx":
        nbytes, method = _write_onnx(module, example_input, path, None)
    else:
        container = fmt if fmt != "state_dict" else ("safetensors" if ext == ".safetensors" else "pt")
        nbytes, method = _write_state_dict(module, path, container)
        fmt = "state_dict"
    return {"format": fmt, "path": path, "bytes": nbytes, "method": method}


# ----------------------------------------------------------------------------------------------------------------
# Writers: serialise in memory (or stream), then write atomically; return (bytes, method)
# ----------------------------------------------------------------------------------------------------------------


def _write_state_dict(module: nn.Module, path: str, container: str) -> tuple:
    label = _LABELS[container]
    tensors, tied = _plain_state_dict(module, path, label, clone_ties=(container == "safetensors"))
    if container == "safetensors":
        metadata = {"format": "pt"}
        if tied:
            metadata["tied"] = json.dumps(tied, sort_keys=True)
        try:
            data = st_save(tensors, metadata=metadata)
        except Exception as exc:
            raise _failure(label, path, exc) from None
        return _write_bytes(label, path, data), "safetensors"
    buffer = io.BytesIO()  # serialised first: torch's C++ writer would hide the cause of a failed write
    try:
        torch.save(tensors, buffer)
    except Exception as exc:
        raise _failure(label, path, exc) from None
    return _write_bytes(label, path, buffer.getvalue()), "torch.save"


def _write_torchscript(module: nn.Module, example_input: Any, path: str) -> tuple:
    label = _LABELS["torchscript"]
    if isinstance(module, torch.jit.ScriptModule):
        scripted, method = module, "scripted"
    else:
        try:
            scripted, method = torch.jit.script(module), "script"
        except Exception as script_exc:
            script_cause = _cause(script_exc)
            if example_input is None:
                raise ExplorerError(f"{label} export to {path} failed: torch.jit.script: {script_cause}; "
                                    "no example input to trace the model with instead") from None
            try:
                scripted, method = torch.jit.trace(module, _as_args(example_input)), "trace"
            except Exception as trace_exc:
                raise ExplorerError(f"{label} export to {path} failed: torch.jit.script: {script_cause}; "
                                    f"torch.jit.trace: {_cause(trace_exc)}") from None
    return _write_with(label, path, lambda fh: torch.jit.save(scripted, fh)), method


def _write_onnx(module: nn.Module, example_input: Any, path: str, opset: Optional[int]) -> tuple:
    label = _LABELS["onnx"]
    _check_onnx_layers(module)
    if importlib.util.find_spec("onnx") is None:
        raise ExplorerError(f"{label} export to {path}: the 'onnx' package is not installed "
                            "(pip install onnx onnxscript)")
    if example_input is None:
        raise ExplorerError(f"{label} export to {path}: needs an example input to trace the model "
                            "(give a factory that returns one, eval data, or --input-shape)")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ExplorerError(f"{label} export to {path}: opset must be an integer >= 7, not {opset!r}")
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values()
                       if isinstance(t, torch.Tensor))
    if weight_bytes > _ONNX_SINGLE_FILE_LIMIT:
        raise ExplorerError(f"{label} export to {path}: the weights ({weight_bytes / 2**30:.1f} GiB) exceed the "
                            "2 GB limit of a single .onnx file")
    args = _as_args(example_input)
    causes = []
    data = method = None
    if not isinstance(module, torch.jit.ScriptModule) and importlib.util.find_spec("onnxscript") is not None:
        try:
            program = torch.onnx.export(module, args, None, dynamo=True, external_data=False, verbose=False,
                                        opset_version=opset)
            data, method = program.model_proto.SerializeToString(), "dynamo"
        except Exception as exc:
            causes.append(f"torch.export-based exporter: {_cause(exc)}")
    if data is None:
        buffer = io.BytesIO()
        try:
            # the model's own mode, as the torch.export-based exporter does (EVAL when it is in eval mode)
            mode = torch.onnx.TrainingMode.PRESERVE if module.training else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, training=mode,
                              do_constant_folding=not module.training)
            data, method = buffer.getvalue(), "torchscript"
        except Exception as exc:
            causes.insert(0, f"TorchScript-based exporter: {_cause(exc)}")
    if data is None:
        raise ExplorerError(f"{label} export to {path} failed: " + "; ".join(causes))
    return _write_bytes(label, path, data), method


def _write_bytes(label: str, path: str, data: bytes) -> int:
    return _write_with(label, path, lambda fh: fh.write(data))


def _write_with(label: str, path: str, write) -> int:
    """Run ``write(fh)`` on an atomic temporary file for ``path``; return the size of the finished file."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ExplorerError(f"{label} export to {path} failed: the directory {directory} does not exist")
    if os.path.isdir(path):
        raise ExplorerError(f"{label} export to {path} failed: it is a directory")
    try:
        with atomic_open(path, "wb") as fh:
            write(fh)
        return os.path.getsize(path)
    except WriteError as exc:  # said as the export's failure, the system's words for the cause
        raise _failure(label, path, exc.cause) from None
    except ExplorerError:
        raise
    except Exception as exc:
        raise _failure(label, path, exc) from None


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _as_module(model, fmt: str, path: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "model", None)  # Compressed, LoadedModel
    if isinstance(inner, nn.Module):
        return inner
    raise ExplorerError(f"{_LABELS.get(fmt, fmt)} export to {path}: expected a torch.nn.Module or a compressed "
                        f"model, not {type(model).__name__}")


def _check_extension(path: str, fmt: str) -> None:
    """Refuse a format that contradicts a known extension (``torch.load`` reads any ``.safetensors`` file as
    safetensors, and every tool takes ``.onnx`` for ONNX); other extensions take any format."""
    ext = os.path.splitext(path)[1].lower()
    allowed = _EXTENSION_FORMATS.get(ext)
    if allowed is not None and fmt not in allowed:
        raise ExplorerError(f"export to {path}: the extension '{ext}' contradicts the format {fmt!r} "
                            f"(it takes {', '.join(repr(f) for f in allowed)}); change the extension or the format")


def _as_args(example_input) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _plain_state_dict(module: nn.Module, path: str, label: str, clone_ties: bool) -> tuple:
    """``({name: cpu tensor}, {copy: original})``: contiguous tensors, none a view of a larger storage, and --
    if ``clone_ties`` -- no two sharing memory (the later name gets a copy, recorded in the second dict)."""
    try:
        state = module.state_dict()
    except Exception as exc:
        raise _failure(label, path, exc) from None
    out, tied, owners = {}, {}, {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ExplorerError(f"{label} export to {path}: state entry '{name}' is a {type(value).__name__}, "
                                "not a tensor")
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().contiguous()
        if t.numel() == 0:
            out[name] = t
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view: keep only its own elements
        elif key in owners and clone_ties:
            tied[name] = owners[key]
            t = t.clone()
        else:
            owners.setdefault(key, name)
        out[name] = t
    return out, tied


def _cause(exc: BaseException) -> str:
    """One line saying why ``exc`` happened (exporters wrap the real cause in long multi-line reports)."""
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:  # torch.onnx's report: the root cause comes first
        rest = lines[lines.index("## Exception summary") + 1:]
        if rest:
            return _clip(_CLASS_REPR.sub(r"\1", rest[0]))
    if isinstance(exc, OSError) and exc.strerror:  # not the temporary file's name, which means nothing to a user
        return f"{type(exc).__name__}: {exc.strerror}"
    line = lines[0].rstrip(":").strip() if lines else ""  # torch.jit: "<cause>:" then the source excerpt
    name = type(exc).__name__
    return _clip(f"{name}: {line}" if line else name)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failure(label: str, path: str, exc: BaseException) -> ExplorerError:
    return ExplorerError(f"{label} export to {path} failed: {_cause(exc)}")

"""ONNX files: converted to a PyTorch ``torch.fx.GraphModule`` by ``onnx2torch``, then explored like any model.

The file is read by ``onnx`` and checked by its checker; nothing in it is executed (ONNX holds a graph and
tensors, no code), so an ONNX file never needs trust. Every operator is looked up in onnx2torch's converters
before converting; a graph whose opset is newer than the converters know (the torch.export-based exporter writes
opset 18 and up) is first converted down to :data:`FALLBACK_OPSET` by ``onnx.version_converter``. What still
cannot be converted is named in one message. The example input is built from the graph's declared inputs
(symbolic dimensions taken as 1).

A compressed file made from an ONNX model carries its graph as TorchScript (the converted module scripts), so
reading it back needs neither ``onnx`` nor ``onnx2torch``; ``export --format onnx`` writes ONNX again.

onnx2torch (``pip install 'compression-explorer[onnx]'``) imports torchvision for two converters (NonMaxSuppression,
RoiAlign). Where torchvision is missing or cannot load (pip's torchvision is a CUDA build, which fails beside the
CPU-only torch wheel), :func:`_onnx2torch` gives onnx2torch a stand-in for those two functions while it imports:
the two ops are then reported as needing torchvision, every other op converts.
"""

from __future__ import annotations

import os
import re
import sys
import types
from typing import Any

import torch

from explorer.engine.errors import LoadError, NotFound, first_line

#: the opset a graph is converted down to when onnx2torch has no converter for one of its ops at its own opset
FALLBACK_OPSET = 17
#: ONNX TensorProto element types -> torch dtypes, for the example input
ELEM_TYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
              9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
_NOT_IMPLEMENTED = re.compile(r"operation_type='([^']*)', version=(\d+)")


#: the tags a ModelProto's field after ir_version can have (producer_name, producer_version, domain,
#: model_version, doc_string, graph, opset_import, metadata_props, training_info, functions)
_NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A, 0x82})
_MAX_IR_VERSION = 64  # ONNX is at 11; anything far beyond is not an ONNX file


def looks_like_onnx(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) begins as a serialised ONNX ModelProto: field 1, ir_version, a
    small varint, followed by another ModelProto field. Told by content, whatever the file's name."""
    if len(head) < 3 or head[0] != 0x08:
        return False
    version, i = 0, 1
    while i < len(head) and i < 6:  # a varint of at most 5 bytes
        byte = head[i]
        version |= (byte & 0x7F) << (7 * (i - 1))
        i += 1
        if not byte & 0x80:
            break
    else:
        return False
    return 1 <= version <= _MAX_IR_VERSION and i < len(head) and head[i] in _NEXT_TAGS


def is_onnx_file(path: str) -> bool:
    """An ONNX model file, by its first bytes (a name ending in .onnx is not enough, nor needed)."""
    try:
        with open(path, "rb") as fh:
            return looks_like_onnx(fh.read(16))
    except OSError:
        return False


def _onnx():
    try:
        import onnx  # heavy: only ONNX files need it (a core dependency, for the ONNX export)
    except ImportError:
        raise LoadError("reading an ONNX file needs onnx: pip install onnx") from None
    return onnx


def _needs_torchvision(*args, **kwargs):
    raise NotImplementedError("this op needs torchvision, which is not installed or cannot load beside this torch")


def _onnx2torch():
    """onnx2torch, imported with a stand-in for torchvision's ``ops`` when the real one cannot be imported."""
    try:
        import onnx2torch  # optional: only ONNX files need it
        return onnx2torch
    except ImportError as exc:
        if "onnx2torch" in str(exc) and "torchvision" not in str(exc):
            raise LoadError("reading an ONNX file needs onnx2torch: pip install 'compression-explorer[onnx]'") from None
    except Exception:  # a torchvision built for another torch fails while importing (RuntimeError)
        pass
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "onnx2torch")]:
        del sys.modules[name]
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = _needs_torchvision
    stand_in = types.ModuleType("torchvision")
    stand_in.ops = ops
    sys.modules.update({"torchvision": stand_in, "torchvision.ops": ops})
    try:
        import onnx2torch  # optional: the import again, torchvision's two functions stood in for
    except ImportError:
        raise LoadError("reading an ONNX file needs onnx2torch: pip install 'compression-explorer[onnx]'") from None
    finally:
        for name in ("torchvision", "torchvision.ops"):  # nobody else sees the stand-in
            sys.modules.pop(name, None)
    return onnx2torch


def _read(path: str):
    onnx = _onnx()
    try:
        proto = onnx.load(path)
    except Exception as exc:
        raise LoadError(f"{path}: corrupt or not an ONNX file ({first_line(exc)})") from None
    if not len(proto.graph.node):
        raise LoadError(f"{path}: corrupt or not an ONNX file (its graph has no nodes)")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise LoadError(f"{path}: not a valid ONNX model ({first_line(exc)})") from None
    return proto


def _unconvertible(proto) -> list:
    """``"Op (opset N)"`` for each distinct operator onnx2torch has no converter for at the graph's opset."""
    from onnx2torch.node_converters.registry import get_converter  # optional: _onnx2torch imported it first

    opsets = {o.domain: o.version for o in proto.opset_import}
    missing = []
    for domain, op in dict.fromkeys((n.domain, n.op_type) for n in proto.graph.node):
        version = opsets.get(domain, opsets.get("ai.onnx", 0))
        try:
            get_converter(operation_type=op, version=version, domain=domain)
        except NotImplementedError:
            missing.append(f"{op} (opset {version}{', domain ' + domain if domain else ''})")
    return missing


def _convertible(proto, path: str):
    missing = _unconvertible(proto)
    if not missing:
        return proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > FALLBACK_OPSET:
        onnx = _onnx()
        try:
            lower = onnx.version_converter.convert_version(proto, FALLBACK_OPSET)
        except Exception:
            lower = None
        if lower is not None and not _unconvertible(lower):
            return lower
    raise LoadError(f"{path}: cannot be converted to PyTorch: onnx2torch has no converter for "
                    f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")


def _constants(proto) -> dict:
    """Name -> array of the graph's initializers and Constant nodes' tensors."""
    onnx = _onnx()
    out = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output:
            value = next((a.t for a in n.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                out[n.output[0]] = value
    return {k: onnx.numpy_helper.to_array(v) for k, v in out.items()}


def _reshape_allowzero_off(proto) -> None:
    """``Reshape(allowzero=1)`` (what torch's exporter writes) as ``allowzero=0`` where the shape is a constant
    with no 0 in it: the two mean the same there, and onnx2torch converts only the second."""
    constants = None
    for n in proto.graph.node:
        flag = next((a for a in n.attribute if a.name == "allowzero"), None) if n.op_type == "Reshape" else None
        if flag is None or flag.i != 1 or len(n.input) < 2:
            continue
        constants = _constants(proto) if constants is None else constants
        shape = constants.get(n.input[1])
        if shape is not None and shape.size and (shape != 0).all():
            flag.i = 0


def _failed_op(exc: BaseException) -> str:
    """The op whose converter raised ``exc`` (onnx2torch's converters take the node as ``node``), if found."""
    tb, found = exc.__traceback__, ""
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if hasattr(node, "operation_type"):
            found = f"the op {node.operation_type} (node {getattr(node, 'name', '?')!r}): "
        tb = tb.tb_next
    return found


def example_input(proto) -> Any:
    """A seeded tensor per graph input (its dtype and shape, symbolic dimensions as 1): one, or a tuple."""
    initializers = {i.name for i in proto.graph.initializer}
    gen = torch.Generator().manual_seed(0)
    out = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        dtype = ELEM_TYPES.get(t.elem_type, torch.float32)
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim)
        out.append(torch.randn(shape, generator=gen).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype))
    return out[0] if len(out) == 1 else tuple(out)


def load_onnx(path: str):
    """(model, example_input) for an ONNX file; a :class:`LoadError` names what cannot be converted."""
    if not os.path.isfile(path):
        raise NotFound(f"{path}: no such file")
    proto = _read(path)
    onnx2torch = _onnx2torch()
    proto = _convertible(proto, path)
    _reshape_allowzero_off(proto)
    try:
        model = onnx2torch.convert(proto)
    except NotImplementedError as exc:
        found = _NOT_IMPLEMENTED.search(str(exc))
        what = f"the op {found.group(1)} (opset {found.group(2)})" if found else _failed_op(exc) + str(exc)[:200]
        raise LoadError(f"{path}: cannot be converted to PyTorch: onnx2torch cannot convert {what}") from None
    except Exception as exc:
        raise LoadError(f"{path}: cannot be converted to PyTorch by onnx2torch ({first_line(exc)})") from None
    return model.eval(), example_input(proto)


__all__ = ["FALLBACK_OPSET", "is_onnx_file", "looks_like_onnx", "load_onnx", "example_input"]
